"""Codecs for training, and what a training run hands over: checkpoint folders the pipeline loads.

A trained model folder is an ordinary checkpoint in our layout (config.json, model.safetensors, tokenizer files)
plus its codec: `vae/` (a diffusers AutoencoderKL), or `codec.json`: {"kind": "pixel", "factor": f, "scaling": s}
for the weight-free pixel codec, {"kind": "patch_pca", ...} + codec.safetensors for a fitted patch-PCA codec. LoRA runs also write `adapter/` in peft's format.
`load_trained` turns such a folder back into an `OmniGenPipeline`.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from x2i.errors import X2IError

from .checkpoint import Layout, load_model
from .config import OmniGenConfig
from .vae import PixelCodec, load_vae, save_pixel_codec


def codec_info(codec, path: str | None = None) -> dict[str, Any]:
    """How a codec is identified (latent cache folders) and exported."""
    from .patch_pca import PatchPCACodec

    if isinstance(codec, PatchPCACodec):
        return {"kind": "pca", "codec": codec, "fingerprint": codec.fingerprint()}
    if isinstance(codec, PixelCodec):
        return {"kind": "pixel", "codec": codec,
                "fingerprint": f"pixel-f{codec.downsample}-s{codec.scaling_factor:g}"}
    weights = Path(path) / "diffusion_pytorch_model.safetensors"
    st = weights.stat()
    digest = hashlib.sha256(f"{weights.resolve()}|{st.st_size}|{st.st_mtime_ns}|{codec.scaling_factor}".encode())
    return {"kind": "vae", "path": str(path), "fingerprint": "vae-" + digest.hexdigest()[:16]}


def build_codec(section, init_layout: Layout | None, fit_pca=None):
    """(codec, info) for a run. `fit_pca()` returns a freshly fitted PatchPCACodec (kind pca without a path)."""
    from .patch_pca import PatchPCACodec

    kind, path = section.kind, section.path
    if kind == "auto":
        if init_layout is not None:
            if not init_layout.vae_dir.is_dir():
                raise X2IError(f"{init_layout.root} has no vae/ folder: give codec.kind and codec.path")
            kind, path = "checkpoint", str(init_layout.vae_dir)
        else:
            kind = "pixel"
    if kind == "checkpoint":
        codec = load_vae(path)
    elif kind == "pca":
        codec = PatchPCACodec.load(path) if path else fit_pca()
    elif kind == "pixel":
        codec = PixelCodec(section.pixel_factor, section.pixel_scaling)
    else:
        if not path:
            raise X2IError("codec.kind vae needs codec.path (a diffusers AutoencoderKL folder)")
        codec = load_vae(path)
    if hasattr(codec, "module"):
        for p in codec.module.parameters():
            p.requires_grad_(False)
    return codec, codec_info(codec, path)


def _write_weights(directory: Path, weights: dict[str, torch.Tensor], config: OmniGenConfig) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().float().cpu().contiguous() for k, v in weights.items()},
              str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(config.to_dict(), indent=2))


def export_model(directory: Path, weights: dict[str, torch.Tensor], train_config, model_config: OmniGenConfig,
                 tokenizer_dir: Path, codec_info: dict[str, Any]) -> Path:
    """Write a loadable model folder from a full state dict (OmniGen keys, or a peft model's keys)."""
    directory = Path(directory)
    tmp = directory.with_name(f".tmp-{directory.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    lora = train_config.lora
    if lora.rank > 0:
        from .lora import add_lora, merge_lora, save_adapter
        from .omnigen import OmniGen

        peft_model = add_lora(OmniGen(model_config), lora.rank, lora.alpha, lora.dropout, lora.targets,
                              lora.extra_trainable)
        peft_model.load_state_dict(weights, strict=True)
        save_adapter(peft_model, tmp / "adapter")
        if lora.merge_on_export:
            merged = merge_lora(peft_model)
            _write_weights(tmp, merged.state_dict(), model_config)
    else:
        _write_weights(tmp, weights, model_config)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tokenizer_dir / name).is_file():
            shutil.copy2(tokenizer_dir / name, tmp / name)
    if codec_info["kind"] == "vae":
        shutil.copytree(codec_info["path"], tmp / "vae")
    elif codec_info["kind"] == "pca":
        codec_info["codec"].save(tmp / "vae")
    else:
        save_pixel_codec(codec_info["codec"], tmp / "vae")
    if directory.exists():
        shutil.rmtree(directory)
    os.replace(tmp, directory)
    return directory


def load_trained(directory: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None):
    """An OmniGenPipeline for a model folder written by `export_model` (or any checkpoint with vae/)."""
    from .pipeline import OmniGenPipeline
    from .processor import Processor
    from .tokenizer import TextTokenizer

    directory = Path(directory)
    model = load_model(directory, dtype=dtype or torch.float32)
    codec = load_vae(directory / "vae")
    processor = Processor(TextTokenizer.from_dir(directory), multiple=codec.downsample * model.config.patch_size,
                          pad_token_id=model.config.pad_token_id)
    return OmniGenPipeline(model, processor, codec, device=device, dtype=dtype or torch.float32)
