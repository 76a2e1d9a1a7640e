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
from .vae import PixelCodec, load_vae


def build_codec(section, init_layout: Layout | None, fit_pca=None):
    """(codec, info) where info = {"kind", "fingerprint", ...} describes it for caches and export. `fit_pca()`
    returns a freshly fitted PatchPCACodec (kind pca without a path)."""
    from .patch_pca import PatchPCACodec

    kind = section.kind
    path = section.path
    if kind == "auto":
        spec_path = init_layout.root / "codec.json" if init_layout is not None else None
        if init_layout is not None and (init_layout.vae_dir / "config.json").is_file():
            kind, path = "vae", str(init_layout.vae_dir)
        elif spec_path is not None and spec_path.is_file():
            spec = json.loads(spec_path.read_text())
            if spec["kind"] == "patch_pca":
                kind, path = "pca", str(init_layout.root)
            else:
                kind = "pixel"
                section = type(section)(kind="pixel", pixel_factor=spec["factor"], pixel_scaling=spec["scaling"])
        else:
            kind = "pixel"
    if kind == "pca":
        codec = PatchPCACodec.load(path) if path else fit_pca()
        return codec, {"kind": "pca", "codec": codec, "fingerprint": codec.fingerprint()}
    if kind == "pixel":
        codec = PixelCodec(section.pixel_factor, section.pixel_scaling)
        info = {"kind": "pixel", "factor": section.pixel_factor, "scaling": section.pixel_scaling,
                "fingerprint": f"pixel-f{section.pixel_factor}-s{section.pixel_scaling:g}"}
        return codec, info
    if not path:
        raise X2IError("codec.kind vae needs codec.path (a diffusers AutoencoderKL folder)")
    codec = load_vae(path)
    weights = Path(path) / "diffusion_pytorch_model.safetensors"
    st = weights.stat()
    digest = hashlib.sha256(f"{weights.resolve()}|{st.st_size}|{st.st_mtime_ns}|{codec.scaling_factor}".encode())
    for p in codec.module.parameters():
        p.requires_grad_(False)
    return codec, {"kind": "vae", "path": str(path), "fingerprint": "vae-" + digest.hexdigest()[:16]}


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
        codec_info["codec"].save(tmp)
    else:
        (tmp / "codec.json").write_text(json.dumps({"kind": "pixel", "factor": codec_info["factor"],
                                                    "scaling": codec_info["scaling"]}))
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
    codec_spec = directory / "codec.json"
    if codec_spec.is_file():
        from .patch_pca import PatchPCACodec

        spec = json.loads(codec_spec.read_text())
        codec = PatchPCACodec.load(directory) if spec["kind"] == "patch_pca" else PixelCodec(spec["factor"],
                                                                                              spec["scaling"])
    else:
        codec = load_vae(directory / "vae")
    processor = Processor(TextTokenizer.from_dir(directory), multiple=codec.downsample * model.config.patch_size,
                          pad_token_id=model.config.pad_token_id)
    return OmniGenPipeline(model, processor, codec, device=device, dtype=dtype or torch.float32)
