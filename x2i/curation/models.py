"""Curation models: open_clip CLIP models and LAION's improved aesthetic predictor, loaded from local files.

Where weights are looked for, in order (the first hit wins):
1. an explicit local path in the step's parameters (a folder in open_clip's `hf-hub:` layout, or the predictor file);
2. `$X2I_CURATION_DIR/<org>/<repo>/` (or `$X2I_CURATION_DIR/<repo>/`) for CLIP, `$X2I_CURATION_DIR/<file>` for the
   predictor;
3. the Hugging Face cache (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else ~/.cache/huggingface/hub);
4. a download, only when the step says `allow_download: true` and `HF_HUB_OFFLINE` is not set.
Nothing found -> `MissingWeights`: one line naming the files, every place looked and how to get them.

open_clip's `hf-hub:` layout is a folder with `open_clip_config.json` (model_cfg + preprocess_cfg) and
`open_clip_model.safetensors` or `open_clip_pytorch_model.bin`. The aesthetic predictor is the state dict of an
MLP over L2-normalised CLIP ViT-L/14 image embeddings: Linear(768,1024) Dropout Linear(1024,128) Dropout
Linear(128,64) Dropout Linear(64,16) Linear(16,1), so its keys are `layers.{0,2,4,6,7}.{weight,bias}` (no
activations: the published "linearMSE" model is linear end to end).

Models load lazily, once per process (`lru_cache`), so a build resolves paths up front (a missing file fails
before any work) and each worker pays the load once.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

from x2i.errors import X2IError
from x2i.hf_cache import hf_cache_dir, hf_offline

DEFAULT_CLIP = "hf-hub:timm/vit_large_patch14_clip_224.openai"  # OpenAI ViT-L/14, what the predictor was trained on
DEFAULT_PREDICTOR = "sac+logos+ava1-l14-linearMSE.pth"
DEFAULT_PREDICTOR_REPO = "trojblue/clip-aesthetics"  # a community mirror of the file on the Hub
PREDICTOR_URL = ("https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/"
                 "sac%2Blogos%2Bava1-l14-linearMSE.pth")
CLIP_CONFIG = "open_clip_config.json"
CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
PREDICTOR_KEYS = tuple(f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias"))


class MissingWeights(X2IError):
    """Model files that are nowhere to be found (the CLI prints the one-line message and exits 2)."""


def _env_dir() -> Path | None:
    value = os.environ.get("X2I_CURATION_DIR")
    return Path(value).expanduser() if value else None


def _cached(repo: str, filename: str) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    hit = try_to_load_from_cache(repo, filename, cache_dir=str(hf_cache_dir()))
    return Path(hit) if isinstance(hit, str) and Path(hit).is_file() else None


def _clip_weights(folder: Path) -> Path | None:
    return next((folder / w for w in CLIP_WEIGHTS if (folder / w).is_file()), None)


def _is_clip_dir(folder: Path) -> bool:
    return folder.is_dir() and (folder / CLIP_CONFIG).is_file() and _clip_weights(folder) is not None


def _where_env(rel: str) -> str:
    env = _env_dir()
    return f"{env / rel}" if env else f"$X2I_CURATION_DIR/{rel} (X2I_CURATION_DIR is not set)"


def resolve_clip(model: str, allow_download: bool = False, who: str = "curation") -> Path:
    """The local folder holding `model` (`hf-hub:org/repo` or a folder path) in open_clip's layout."""
    need = f"{CLIP_CONFIG} + {CLIP_WEIGHTS[0]} (or {CLIP_WEIGHTS[1]})"
    if not model.startswith("hf-hub:"):
        folder = Path(model).expanduser()
        if _is_clip_dir(folder):
            return folder
        raise MissingWeights(f"{who}: CLIP model folder {folder} does not hold {need}; point clip_model at a "
                             "folder in open_clip's hf-hub layout or use hf-hub:<org>/<repo>")
    repo = model[len("hf-hub:"):].strip("/")
    looked = []
    env = _env_dir()
    for rel in (repo, repo.split("/")[-1]):
        if env and _is_clip_dir(env / rel):
            return env / rel
    looked.append(_where_env(repo))
    config = _cached(repo, CLIP_CONFIG)
    if config is not None:
        for weights in CLIP_WEIGHTS:
            hit = _cached(repo, weights)
            if hit is not None and hit.parent == config.parent:
                return config.parent
    looked.append(f"Hugging Face cache {hf_cache_dir()} (repo {repo})")
    if allow_download and not hf_offline():
        try:
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(repo, cache_dir=str(hf_cache_dir()),
                                            allow_patterns=[CLIP_CONFIG, *CLIP_WEIGHTS]))
            if _is_clip_dir(folder):
                return folder
            looked.append(f"download of {repo} (the repo lacks {need})")
        except Exception as exc:  # network, auth, missing repo: all end in the same clear message
            looked.append(f"download of {repo} failed ({type(exc).__name__}: {str(exc)[:120]})")
    elif allow_download:
        looked.append("no download: HF_HUB_OFFLINE is set")
    raise MissingWeights(
        f"{who}: missing weights for CLIP model {model}: need {need}; looked in: " + "; ".join(looked)
        + f". Get them with `huggingface-cli download {repo} {CLIP_CONFIG} {CLIP_WEIGHTS[0]}`, or copy the files "
        f"to {_where_env(repo)}, or set the step's clip_model to a local folder, or allow_download: true")


def resolve_predictor(predictor: str, repo: str, allow_download: bool = False, who: str = "aesthetic") -> Path:
    """The local aesthetic predictor checkpoint (`sac+logos+ava1-l14-linearMSE.pth` by default)."""
    path = Path(predictor).expanduser()
    if path.is_file():
        return path
    name = path.name
    looked = []
    if path.parent != Path("."):
        looked.append(f"{path} (explicit path)")
    env = _env_dir()
    if env and (env / name).is_file():
        return env / name
    looked.append(_where_env(name))
    hit = _cached(repo, name) if repo else None
    if hit is not None:
        return hit
    if repo:
        looked.append(f"Hugging Face cache {hf_cache_dir()} (repo {repo})")
    if allow_download and repo and not hf_offline():
        try:
            from huggingface_hub import hf_hub_download

            return Path(hf_hub_download(repo, name, cache_dir=str(hf_cache_dir())))
        except Exception as exc:
            looked.append(f"download of {repo}/{name} failed ({type(exc).__name__}: {str(exc)[:120]})")
    elif allow_download:
        looked.append("no download: HF_HUB_OFFLINE is set")
    raise MissingWeights(
        f"{who}: missing aesthetic predictor weights {name}; looked in: " + "; ".join(looked)
        + f". Get the file from {PREDICTOR_URL} (LAION's improved-aesthetic-predictor) and put it in "
        f"{_where_env(name)}, or set the step's predictor to its path")


def pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def pick_precision(precision: str, device: str) -> str:
    if precision == "auto":
        return "fp16" if device.startswith("cuda") else "fp32"
    return precision


class ClipModel:
    """An open_clip model with its eval transform and tokenizer: L2-normalised image / text embeddings."""

    def __init__(self, folder: str, device: str, precision: str):
        import open_clip
        import torch

        spec = f"local-dir:{folder}"
        self.model, _, self.preprocess = open_clip.create_model_and_transforms(spec, device=device,
                                                                                precision=precision)
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(spec)
        self.device = device
        # The dtype the image tower computes in: open_clip's fp16/bf16 keep some parameters (class embedding,
        # logit scale) in fp32, so the first parameter can be fp32 while the convolutions are half.
        self.dtype = next(m.weight.dtype for m in self.model.visual.modules()
                          if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
        self.embed_dim = int(self.model.text_projection.shape[1]) if getattr(self.model, "text_projection", None) \
            is not None else None
        self._torch = torch

    def images(self, pils) -> "torch.Tensor":
        torch = self._torch
        batch = torch.stack([self.preprocess(im) for im in pils]).to(self.device, self.dtype)
        with torch.inference_mode():
            emb = self.model.encode_image(batch).float()
        return torch.nn.functional.normalize(emb, dim=-1)

    def texts(self, texts: list[str]) -> "torch.Tensor":
        torch = self._torch
        tokens = self.tokenizer(texts).to(self.device)
        with torch.inference_mode():
            emb = self.model.encode_text(tokens).float()
        return torch.nn.functional.normalize(emb, dim=-1)


def aesthetic_mlp(input_size: int):
    """The improved aesthetic predictor's MLP, with the exact module indices of the published checkpoint."""
    from torch import nn

    class AestheticMLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.Sequential(
                nn.Linear(input_size, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
                nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1))

        def forward(self, x):
            return self.layers(x)

    return AestheticMLP()


def load_predictor_state(path: Path) -> dict:
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise X2IError(f"{path}: not a readable aesthetic predictor checkpoint ({type(exc).__name__}: {exc})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]  # a Lightning checkpoint
    state = {k[7:] if k.startswith("module.") else k: v for k, v in state.items()}
    missing = [k for k in PREDICTOR_KEYS if k not in state]
    if missing or len(state) != len(PREDICTOR_KEYS):
        raise X2IError(f"{path}: not the improved aesthetic predictor layout; expected keys {list(PREDICTOR_KEYS)}, "
                       f"got {sorted(state)[:12]}")
    return state


@functools.lru_cache(maxsize=4)
def load_clip(folder: str, device: str, precision: str) -> ClipModel:
    return ClipModel(folder, device, precision)


@functools.lru_cache(maxsize=4)
def load_predictor(path: str, device: str):
    state = load_predictor_state(Path(path))
    mlp = aesthetic_mlp(int(state["layers.0.weight"].shape[1]))
    mlp.load_state_dict(state)
    return mlp.to(device).eval()
