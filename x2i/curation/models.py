"""Curation models: open_clip CLIP models and LAION's improved aesthetic predictor, loaded from local files.

Where weights are looked for, in order (the first hit wins; the lookup is x2i.core.weights):
1. an explicit local path in the step's parameters (a folder in open_clip's `hf-hub:` layout, or the predictor file);
2. `$X2I_CURATION_DIR/<org>/<repo>/` (or `$X2I_CURATION_DIR/<repo>/`) for CLIP, `$X2I_CURATION_DIR/<file>` for the
   predictor;
3. the Hugging Face cache (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else ~/.cache/huggingface/hub);
4. a download, only when the step says `allow_download: true` and `HF_HUB_OFFLINE` is not set.
Nothing found -> `x2i.core.weights.MissingWeights`: one line naming the files, every place looked and how to get them.
`open_clip_model.safetensors` is taken over `open_clip_pytorch_model.bin` when both are there.

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

from x2i.core.errors import X2IError
from x2i.core.weights import ENV_VARS, MissingWeights, WeightSpec, resolve

DEFAULT_CLIP = "hf-hub:timm/vit_large_patch14_clip_224.openai"  # OpenAI ViT-L/14, what the predictor was trained on
DEFAULT_PREDICTOR = "sac+logos+ava1-l14-linearMSE.pth"
DEFAULT_PREDICTOR_REPO = "trojblue/clip-aesthetics"  # a community mirror of the file on the Hub
PREDICTOR_URL = ("https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/"
                 "sac%2Blogos%2Bava1-l14-linearMSE.pth")
CLIP_CONFIG = "open_clip_config.json"
CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
PREDICTOR_KEYS = tuple(f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias"))


ENV_DIR = ENV_VARS["curation"]


def _where_env(rel: str) -> str:
    value = os.environ.get(ENV_DIR)
    return str(Path(value).expanduser() / rel) if value else f"${ENV_DIR}/{rel} ({ENV_DIR} is not set)"


def resolve_clip(model: str, allow_download: bool = False, who: str = "curation") -> Path:
    """The local folder holding `model` (`hf-hub:org/repo` or a folder path) in open_clip's layout."""
    files = (CLIP_CONFIG, CLIP_WEIGHTS)
    if not model.startswith("hf-hub:"):
        # An explicit folder is the whole answer: falling back to some other copy would hide a wrong path.
        hint = "point clip_model at a folder in open_clip's hf-hub layout or use hf-hub:<org>/<repo>"
        return resolve(WeightSpec("", files, kind="curation"), model, who=f"{who} (CLIP model folder)", hint=hint,
                       use_env=False, use_cache=False).directory
    repo = model[len("hf-hub:"):].strip("/")
    hint = (f"Get them with `huggingface-cli download {repo} {CLIP_CONFIG} {CLIP_WEIGHTS[0]}`, or copy the files "
            f"to {_where_env(repo)}, or set the step's clip_model to a local folder, or allow_download: true")
    spec = WeightSpec(repo, files, kind="curation", layout="repo_or_name")
    return resolve(spec, who=f"{who} (CLIP model {model})", hint=hint, allow_download=allow_download).directory


def resolve_predictor(predictor: str, repo: str, allow_download: bool = False, who: str = "aesthetic") -> Path:
    """The local aesthetic predictor checkpoint (`sac+logos+ava1-l14-linearMSE.pth` by default)."""
    path = Path(predictor).expanduser()
    if path.is_file():
        return path
    name = path.name
    hint = (f"Get the file from {PREDICTOR_URL} (LAION's improved-aesthetic-predictor) and put it in "
            f"{_where_env(name)}, or set the step's predictor to its path")
    spec = WeightSpec(repo or "", (name,), kind="curation", layout="flat")
    found = resolve(spec, path.parent if path.parent != Path(".") else None, who=f"{who} (aesthetic predictor)",
                    hint=hint, use_cache=bool(repo), allow_download=allow_download and bool(repo))
    return found.path(name)


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


__all__ = ["CLIP_CONFIG", "CLIP_WEIGHTS", "DEFAULT_CLIP", "DEFAULT_PREDICTOR", "DEFAULT_PREDICTOR_REPO", "ClipModel",
           "MissingWeights", "aesthetic_mlp", "load_clip", "load_predictor", "load_predictor_state", "pick_device",
           "pick_precision", "resolve_clip", "resolve_predictor"]
