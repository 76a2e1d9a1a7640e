"""Finding, loading and saving checkpoints (safetensors only, never pickle).

Three directory layouts load:
- ours:      config.json ({"format": "x2i-omnigen", ...}), model.safetensors, tokenizer files, vae/
- official:  config.json (a Phi-3 config), model.safetensors (`llm.*`, `x_embedder.*`, ...), tokenizer files, vae/
             (Shitao/OmniGen-v1). Our parameter names are the official ones, so only config.json differs.
- diffusers: model_index.json, transformer/ (config.json + diffusion_pytorch_model*.safetensors), vae/,
             tokenizer/, scheduler/ (Shitao/OmniGen-v1-diffusers); keys are renamed and q/k/v fused on load.
Weight files may be sharded (`*.safetensors.index.json`).

Where a model is looked for (x2i.core.weights): an explicit local directory, then $X2I_OMNIGEN_DIR, then the Hugging
Face cache (never the network); a miss raises x2i.core.weights.MissingWeights naming the files and every place looked.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from x2i.core.errors import X2IError
from x2i.core.weights import ENV_VARS, WeightSpec, resolve

from .config import (DEFAULT_SIZE_KEY, FORMAT_MARKER, OmniGenConfig, from_diffusers_config, from_phi3_config,
                     to_phi3_config)
from .transformer import OmniGen

ENV_VAR = ENV_VARS["omnigen"]
REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
DEFAULT_REPOS = ("Shitao/OmniGen-v1", "Shitao/OmniGen-v1-diffusers")


@dataclass
class Layout:
    kind: str  # "x2i", "official" or "diffusers"
    root: Path
    weights_stem: Path  # weight file path without ".safetensors"
    tokenizer_dir: Path
    vae_dir: Path


def detect_layout(root: str | Path) -> Layout:
    root = Path(root)
    if (root / "transformer").is_dir() or (root / "model_index.json").is_file():
        return Layout("diffusers", root, root / "transformer" / "diffusion_pytorch_model", root / "tokenizer",
                      root / "vae")
    config_path = root / "config.json"
    if not config_path.is_file():
        raise X2IError(f"no config.json in {root} (nor transformer/ or model_index.json of a diffusers layout): "
                       "not an OmniGen checkpoint directory")
    kind = "x2i" if json.loads(config_path.read_text()).get("format") == FORMAT_MARKER else "official"
    return Layout(kind, root, root / "model", root, root / "vae")


def model_spec(repo_id: str | None = None) -> WeightSpec:
    """What marks a checkpoint folder (detect_layout's markers): config.json (ours, official), model_index.json or
    transformer/config.json (diffusers); the weights are checked when they load, with a message of their own."""
    repos = (repo_id,) if repo_id else DEFAULT_REPOS
    return WeightSpec(repos[0], (("config.json", "model_index.json", "transformer/config.json"),), kind="omnigen",
                      layout="flat", also_repos=tuple(repos[1:]))


def resolve_model_dir(spec: str | Path | None = None) -> Path:
    """`spec` as a local directory, else as a repo id in the Hugging Face cache. With no `spec`: $X2I_OMNIGEN_DIR,
    else the OmniGen-v1 repos in the cache. Lookup only (x2i.core.weights): nothing is downloaded."""
    hint = ("Download it on a machine with network access (`huggingface-cli download Shitao/OmniGen-v1`), then "
            f"pass the folder (--model DIR) or set {ENV_VAR}=DIR")
    if spec is None:
        return resolve(model_spec(), who="OmniGen model", hint=hint).directory
    path = Path(spec).expanduser()
    repo = str(spec) if REPO_ID.fullmatch(str(spec)) and not path.is_dir() else None
    return resolve(model_spec(repo), path, who="OmniGen model", hint=hint, use_env=False,
                   use_cache=repo is not None).directory


def default_image_size(layout: Layout) -> tuple[int, int] | None:
    """(height, width) the model was trained at, when its config.json records it (folders `x2i train` wrote)."""
    if layout.kind != "x2i":
        return None
    path = layout.root / "config.json"
    size = json.loads(path.read_text()).get(DEFAULT_SIZE_KEY)
    if size is None:  # folders written before the size was recorded
        return None
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
        raise X2IError(f"{path}: {DEFAULT_SIZE_KEY} must be [height, width] in pixels, got {size!r}")
    return size[0], size[1]


def weight_files(stem: Path) -> list[Path]:
    single = stem.with_name(stem.name + ".safetensors")
    index = stem.with_name(stem.name + ".safetensors.index.json")
    if single.is_file():
        return [single]
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing = [s for s in shards if not (stem.parent / s).is_file()]
        if missing:
            raise X2IError(f"weight shard(s) {missing} listed in {index} not found in {stem.parent}")
        return [stem.parent / s for s in shards]
    pickles = [p.name for p in stem.parent.glob("*") if p.suffix in (".bin", ".pt", ".pth", ".ckpt")]
    hint = f" (found pickle weights {pickles}: these are never loaded; convert them to safetensors)" if pickles else ""
    raise X2IError(f"weight file {single.name} (or {index.name}) not found in {stem.parent}{hint}")


def read_weights(stem: Path, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """All tensors of a (possibly sharded) safetensors checkpoint; floating ones converted to `dtype` one at a
    time, so a 3.8B fp32 checkpoint never sits in memory twice."""
    from safetensors import safe_open

    state = {}
    for path in weight_files(stem):
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for key in f.keys():
                tensor = f.get_tensor(key)
                state[key] = tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor
    return state


# ---- diffusers <-> ours ----------------------------------------------------------------------------------------

# diffusers name prefix -> ours (= official), and renames inside a decoder layer.
_DIFFUSERS_PREFIXES = {
    "patch_embedding.pos_embed": "pos_embed",
    "patch_embedding.output_image_proj.": "x_embedder.proj.",
    "patch_embedding.input_image_proj.": "input_x_embedder.proj.",
    "time_token.linear_1.": "time_token.mlp.0.", "time_token.linear_2.": "time_token.mlp.2.",
    "t_embedder.linear_1.": "t_embedder.mlp.0.", "t_embedder.linear_2.": "t_embedder.mlp.2.",
    "norm_out.linear.": "final_layer.adaLN_modulation.1.", "proj_out.": "final_layer.linear.",
    "embed_tokens.": "llm.embed_tokens.", "norm.": "llm.norm.", "layers.": "llm.layers.",
}
_DIFFUSERS_LAYER_PARTS = {"self_attn.to_out.0.": "self_attn.o_proj."}


def _rename(key: str, prefixes: dict[str, str], parts: dict[str, str]) -> str:
    for old, new in prefixes.items():
        if key.startswith(old):
            key = new + key[len(old):]
            break
    for old, new in parts.items():
        key = key.replace(old, new)
    return key


def from_diffusers_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers' OmniGenTransformer2DModel keys -> ours (= the official ones); to_q/to_k/to_v fused into qkv_proj."""
    out, qkv = {}, {}
    for key, value in state.items():
        if ".self_attn.to_q." in key or ".self_attn.to_k." in key or ".self_attn.to_v." in key:
            prefix, part = key.split(".self_attn.to_")
            qkv.setdefault(prefix, {})[part[0]] = value
            continue
        out[_rename(key, _DIFFUSERS_PREFIXES, _DIFFUSERS_LAYER_PARTS)] = value
    for prefix, parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise X2IError(f"diffusers checkpoint has only {sorted(parts)} of q/k/v for {prefix}")
        out[f"llm.{prefix}.self_attn.qkv_proj.weight"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def to_diffusers_state_dict(state: dict[str, torch.Tensor], config: OmniGenConfig) -> dict[str, torch.Tensor]:
    """Ours -> diffusers' OmniGenTransformer2DModel keys (for comparisons with diffusers on identical weights)."""
    prefixes = {new: old for old, new in _DIFFUSERS_PREFIXES.items()}
    parts = {new: old for old, new in _DIFFUSERS_LAYER_PARTS.items()}
    out = {}
    q_size, kv_size = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
    for key, value in state.items():
        if key.endswith("self_attn.qkv_proj.weight"):
            prefix = key[len("llm."):-len("self_attn.qkv_proj.weight")]
            for name, part in zip("qkv", value.split([q_size, kv_size, kv_size], dim=0)):
                out[f"{prefix}self_attn.to_{name}.weight"] = part
            continue
        out[_rename(key, prefixes, parts)] = value
    return out


# ---- model loading and saving ----------------------------------------------------------------------------------

def _official_config(layout: Layout, state: dict[str, torch.Tensor]) -> OmniGenConfig:
    """The Phi-3 config plus what the official model takes as constructor defaults, read off the weights."""
    config = from_phi3_config(json.loads((layout.root / "config.json").read_text()))
    if "pos_embed" in state:
        config.pos_embed_max_size = math.isqrt(state["pos_embed"].shape[1])
    if "x_embedder.proj.weight" in state:
        _, config.in_channels, config.patch_size, _ = state["x_embedder.proj.weight"].shape
    if "time_token.mlp.0.weight" in state:
        config.time_embed_dim = state["time_token.mlp.0.weight"].shape[1]
    return config


def load_config_and_weights(root: str | Path, dtype: torch.dtype | None = None):
    layout = detect_layout(root)
    if layout.kind == "diffusers":
        config_path = layout.root / "transformer" / "config.json"
        if not config_path.is_file():
            raise X2IError(f"config file config.json not found in {config_path.parent}")
        config = from_diffusers_config(json.loads(config_path.read_text()))
        state = from_diffusers_state_dict(read_weights(layout.weights_stem, dtype))
    else:
        state = read_weights(layout.weights_stem, dtype)
        if layout.kind == "x2i":
            config = OmniGenConfig.from_dict(json.loads((layout.root / "config.json").read_text()))
        else:
            config = _official_config(layout, state)
    return layout, config, state


def model_from_state(config: OmniGenConfig, state: dict[str, torch.Tensor], where: str = "checkpoint") -> OmniGen:
    """Build the model around the given tensors (no second copy, no random init of 3.8B parameters)."""
    with torch.device("meta"):
        model = OmniGen(config)
    expected = set(model.state_dict())
    unexpected, missing = sorted(set(state) - expected), sorted(expected - set(state))
    if unexpected or missing:
        def listing(keys):
            return ", ".join(keys[:20]) + (f" ... ({len(keys)} in all)" if len(keys) > 20 else "")
        problems = ([f"unexpected keys: {listing(unexpected)}"] if unexpected else []) + (
            [f"missing keys: {listing(missing)}"] if missing else [])
        raise X2IError(f"{where} does not match the OmniGen architecture; " + "; ".join(problems))
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise X2IError(f"{where}: {exc}") from None
    return model.eval()


def load_model(root: str | Path, dtype: torch.dtype | None = None) -> OmniGen:
    layout, config, state = load_config_and_weights(root, dtype)
    return model_from_state(config, state, where=f"{layout.kind} checkpoint {layout.root}")


def save_model(model: OmniGen, directory: str | Path, layout: str = "x2i") -> None:
    """Write config.json + model.safetensors in our layout or the official one ("official")."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = model.config.to_dict() if layout == "x2i" else to_phi3_config(model.config)
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model")


def convert_checkpoint(source: str | Path, destination: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Any loadable layout (official, diffusers, ours) -> a complete directory in our layout: config.json,
    model.safetensors, the tokenizer files and vae/."""
    import shutil

    layout = detect_layout(resolve_model_dir(source))
    destination = Path(destination)
    save_model(load_model(layout.root, dtype=dtype), destination)
    for name in TOKENIZER_FILES:
        if (layout.tokenizer_dir / name).is_file():
            shutil.copy2(layout.tokenizer_dir / name, destination / name)
    if not layout.vae_dir.is_dir():
        raise X2IError(f"VAE folder {layout.vae_dir} not found")
    shutil.copytree(layout.vae_dir, destination / "vae", dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("*.bin", "*.pt", "*.pth", "*.ckpt"))
    return destination
