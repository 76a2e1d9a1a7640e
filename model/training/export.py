"""What a training run hands over: a checkpoint folder the pipeline loads.

A trained model folder is an ordinary checkpoint in our layout (config.json, model.safetensors, tokenizer files)
plus its codec in vae/, saved by the codec itself in the form the one codec loader reads back (a diffusers
AutoencoderKL, pixel_codec.json, or codec.json + codec.safetensors of a fitted patch-PCA codec). config.json also
records the image size the model was trained at (`default_image_size`), the pipeline's default output size. LoRA
runs also write `adapter/` in peft's format. `OmniGenPipeline.from_pretrained(folder)` loads it.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from ..codecs.base import ImageCodec
from ..modeling.checkpoint import DEFAULT_SIZE_KEY
from ..modeling.config import OmniGenConfig


def _write_weights(directory: Path, weights: dict[str, torch.Tensor], config: OmniGenConfig,
                   image_size: tuple[int, int] | None) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().float().cpu().contiguous() for k, v in weights.items()},
              str(directory / "model.safetensors"), metadata={"format": "pt"})
    data = config.to_dict()
    if image_size is not None:
        data[DEFAULT_SIZE_KEY] = list(image_size)
    (directory / "config.json").write_text(json.dumps(data, indent=2))


def export_model(directory: Path, weights: dict[str, torch.Tensor], train_config, model_config: OmniGenConfig,
                 tokenizer_dir: Path, codec: ImageCodec, image_size: tuple[int, int] | None = None) -> Path:
    """Write a loadable model folder from a full state dict (OmniGen keys, or a peft model's keys).
    `image_size` (height, width): what the model was trained at, the pipeline's default output size."""
    directory = Path(directory)
    tmp = directory.with_name(f".tmp-{directory.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    lora = train_config.lora
    if lora.rank > 0:
        from ..modeling.transformer import OmniGen
        from .lora import add_lora, merge_lora, save_adapter

        peft_model = add_lora(OmniGen(model_config), lora.rank, lora.alpha, lora.dropout, lora.targets,
                              lora.extra_trainable)
        peft_model.load_state_dict(weights, strict=True)
        save_adapter(peft_model, tmp / "adapter")
        if lora.merge_on_export:
            merged = merge_lora(peft_model)
            _write_weights(tmp, merged.state_dict(), model_config, image_size)
    else:
        _write_weights(tmp, weights, model_config, image_size)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tokenizer_dir / name).is_file():
            shutil.copy2(tokenizer_dir / name, tmp / name)
    codec.save(tmp / "vae")
    if directory.exists():
        shutil.rmtree(directory)
    os.replace(tmp, directory)
    return directory
