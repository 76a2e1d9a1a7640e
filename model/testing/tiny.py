"""Random-weight models and checkpoints made on the spot, for tests and benchmarks: every file a real checkpoint has
(config.json, model.safetensors, a locally built tokenizer, a tiny random AutoencoderKL in vae/), no downloads."""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from ..codecs.base import SDXL_SCALING_FACTOR
from ..codecs.pixel import PixelCodec
from ..inference.tokenizer import build_tiny_tokenizer
from ..modeling.checkpoint import save_model, to_diffusers_state_dict
from ..modeling.config import OmniGenConfig, preset, to_diffusers_kwargs
from ..modeling.transformer import OmniGen


def tiny_autoencoder(seed: int = 0):
    """A random AutoencoderKL with the SDXL VAE's interface (4 latent channels, 8x downsampling), ~100k params."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=4,
                         block_out_channels=(8, 8, 16, 16), down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, scaling_factor=SDXL_SCALING_FACTOR, sample_size=64)


@torch.no_grad()
def randomize_(model: OmniGen, seed: int = 0) -> OmniGen:
    """Random weights of a sensible scale everywhere, the output layer included (OmniGen's own init zeroes it,
    which would make every output identical and every comparison vacuous)."""
    generator = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        if name.endswith("layernorm.weight") or name.endswith("norm.weight"):
            param.copy_(1 + 0.1 * torch.randn(param.shape, generator=generator))
        elif param.ndim == 1:
            param.copy_(0.1 * torch.randn(param.shape, generator=generator))
        else:
            fan_in = param[0].numel() if param.ndim > 1 else 1
            std = 1.0 if "embed_tokens" in name else 1 / math.sqrt(fan_in)
            param.copy_(std * torch.randn(param.shape, generator=generator))
    return model


def random_model(config: OmniGenConfig | str = "tiny", seed: int = 0) -> OmniGen:
    config = preset(config) if isinstance(config, str) else config
    torch.manual_seed(seed)
    return randomize_(OmniGen(config), seed).eval()


def make_tiny_checkpoint(directory: str | Path, config: OmniGenConfig | str = "tiny", seed: int = 0,
                         layout: str = "x2i", model: OmniGen | None = None, pixel_codec_factor: int | None = None) -> Path:
    """Write a complete checkpoint directory in our layout, the official one ("official") or diffusers'
    ("diffusers"). vae/ holds a tiny random AutoencoderKL, or with `pixel_codec_factor` a weight-free PixelCodec
    (the model then takes 3 * factor^2 latent channels). Returns the directory."""
    directory = Path(directory)
    if model is None:
        config = preset(config) if isinstance(config, str) else config
        if pixel_codec_factor:
            config.in_channels = PixelCodec(pixel_codec_factor).latent_channels
        model = random_model(config, seed)
    if layout == "diffusers":
        from diffusers import OmniGenTransformer2DModel

        transformer = OmniGenTransformer2DModel(**to_diffusers_kwargs(model.config))
        transformer.load_state_dict(to_diffusers_state_dict(model.state_dict(), model.config))
        transformer.save_pretrained(directory / "transformer", safe_serialization=True)
        build_tiny_tokenizer(directory / "tokenizer")
        (directory / "model_index.json").write_text(json.dumps({
            "_class_name": "OmniGenPipeline", "transformer": ["diffusers", "OmniGenTransformer2DModel"],
            "vae": ["diffusers", "AutoencoderKL"], "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
            "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"]}, indent=2))
        scheduler = directory / "scheduler"
        scheduler.mkdir(parents=True, exist_ok=True)
        (scheduler / "scheduler_config.json").write_text(json.dumps(
            {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1, "invert_sigmas": True,
             "shift": 1.0}, indent=2))
    else:
        save_model(model, directory, layout=layout)
        build_tiny_tokenizer(directory)
    if pixel_codec_factor:
        PixelCodec(pixel_codec_factor).save(directory / "vae")
    else:
        tiny_autoencoder(seed).save_pretrained(str(directory / "vae"), safe_serialization=True)
    return directory
