"""Image codecs: what turns pixels into the latents the model works on, and back.

The pipeline and a trainer accept any object with
    encode(images) -> latents, decode(latents) -> images   (images (B, 3, H, W) in [-1, 1])
    scaling_factor, shift_factor (floats), downsample (pixels per latent pixel), latent_channels
Model latents are `(encode(x) - shift_factor) * scaling_factor` (`to_model_latents`); OmniGen-v1 uses the SDXL VAE
(scaling 0.13025, no shift). `PixelCodec` is a lossless, weight-free stand-in for tiny CPU models.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F

from x2i.errors import X2IError

SDXL_SCALING_FACTOR = 0.13025


class ImageCodec(Protocol):
    scaling_factor: float
    shift_factor: float
    downsample: int
    latent_channels: int

    def encode(self, images: torch.Tensor) -> torch.Tensor: ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...


def to_model_latents(codec: ImageCodec, images: torch.Tensor) -> torch.Tensor:
    return (codec.encode(images) - codec.shift_factor) * codec.scaling_factor


def from_model_latents(codec: ImageCodec, latents: torch.Tensor) -> torch.Tensor:
    return codec.decode(latents / codec.scaling_factor + codec.shift_factor)


class DiffusersVAE:
    """diffusers' AutoencoderKL as an ImageCodec. Encoding takes the posterior mean, where OmniGen samples from
    it: deterministic, and the SDXL VAE's posterior is so narrow that the two differ by far less than a pixel step."""

    def __init__(self, autoencoder):
        self.module = autoencoder.eval()
        config = autoencoder.config
        self.scaling_factor = float(config.scaling_factor)
        self.shift_factor = float(config.shift_factor or 0.0)
        self.downsample = 2 ** (len(config.block_out_channels) - 1)
        self.latent_channels = int(config.latent_channels)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        p = next(self.module.parameters())
        return self.module.encode(images.to(p.device, p.dtype)).latent_dist.mean

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        p = next(self.module.parameters())
        return self.module.decode(latents.to(p.device, p.dtype)).sample

    def to(self, device=None, dtype=None) -> DiffusersVAE:
        # Only what is given: diffusers warns about a dtype move even when dtype is None.
        self.module.to(**{k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None})
        return self


class PixelCodec:
    """Pixels folded into channels (space-to-depth): lossless, no weights; latent_channels = 3 * factor^2."""

    def __init__(self, factor: int = 1, scaling_factor: float = 1.0):
        self.downsample = factor
        self.latent_channels = 3 * factor * factor
        self.scaling_factor = scaling_factor
        self.shift_factor = 0.0

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return F.pixel_unshuffle(images, self.downsample) if self.downsample > 1 else images

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(latents, self.downsample) if self.downsample > 1 else latents

    def to(self, device=None, dtype=None) -> PixelCodec:
        return self


def tiny_autoencoder(seed: int = 0):
    """A random AutoencoderKL with the SDXL VAE's interface (4 latent channels, 8x downsampling), ~100k params."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=4,
                         block_out_channels=(8, 8, 16, 16), down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, scaling_factor=SDXL_SCALING_FACTOR, sample_size=64)


PIXEL_CODEC_FILE = "pixel_codec.json"


def save_pixel_codec(codec: PixelCodec, directory: str | Path) -> None:
    """A checkpoint's vae/ folder can hold a PixelCodec instead of an AutoencoderKL (tiny models trained on CPU)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / PIXEL_CODEC_FILE).write_text(json.dumps({"factor": codec.downsample,
                                                          "scaling_factor": codec.scaling_factor}))


def load_vae(directory: str | Path):
    """The codec in a checkpoint's vae/ folder: an AutoencoderKL saved by diffusers (config.json +
    diffusion_pytorch_model.safetensors, safetensors only), a PixelCodec (pixel_codec.json), or a fitted
    patch-PCA codec (codec.json + codec.safetensors, written by `x2i train`)."""
    from diffusers import AutoencoderKL

    directory = Path(directory)
    if (directory / "codec.json").is_file():
        from .patch_pca import PatchPCACodec

        return PatchPCACodec.load(directory)
    if (directory / PIXEL_CODEC_FILE).is_file():
        return PixelCodec(**json.loads((directory / PIXEL_CODEC_FILE).read_text()))
    for name in ("config.json", "diffusion_pytorch_model.safetensors"):
        if not (directory / name).is_file():
            raise X2IError(f"VAE file {name} not found in {directory}"
                           + (" (only pickle weights there; convert them to safetensors)"
                              if name.endswith(".safetensors") and any(directory.glob("*.bin")) else ""))
    return DiffusersVAE(AutoencoderKL.from_pretrained(str(directory), use_safetensors=True))
