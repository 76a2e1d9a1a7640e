"""diffusers' AutoencoderKL as an image codec (OmniGen-v1 uses the SDXL VAE: 4 latent channels, 8x down)."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import torch

from x2i.core.errors import X2IError

WEIGHTS = "diffusion_pytorch_model.safetensors"


class DiffusersVAE:
    """Encoding takes the posterior mean, where OmniGen samples from it: deterministic, and the SDXL VAE's
    posterior is so narrow that the two differ by far less than a pixel step. `source`: the folder it was loaded
    from (what identifies it and what an export copies)."""

    kind = "vae"

    def __init__(self, autoencoder, source: str | Path | None = None):
        self.module = autoencoder.eval()
        self.source = Path(source) if source is not None else None
        config = autoencoder.config
        self.scaling_factor = float(config.scaling_factor)
        self.shift_factor = float(config.shift_factor or 0.0)
        self.downsample = 2 ** (len(config.block_out_channels) - 1)
        self.latent_channels = int(config.latent_channels)

    @classmethod
    def load(cls, directory: str | Path) -> DiffusersVAE:
        """From a diffusers folder (config.json + diffusion_pytorch_model.safetensors; safetensors only)."""
        from diffusers import AutoencoderKL

        directory = Path(directory)
        for name in ("config.json", WEIGHTS):
            if not (directory / name).is_file():
                raise X2IError(f"VAE file {name} not found in {directory}"
                               + (" (only pickle weights there; convert them to safetensors)"
                                  if name == WEIGHTS and any(directory.glob("*.bin")) else ""))
        return cls(AutoencoderKL.from_pretrained(str(directory), use_safetensors=True), source=directory)

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

    def fingerprint(self) -> str:
        """The weight file's path, size and time, and the scaling (hashing gigabytes at every start is too slow)."""
        if self.source is None:
            raise X2IError("a VAE built in memory has no fingerprint: load it from its folder (codecs.load_codec)")
        weights = self.source / WEIGHTS
        st = weights.stat()
        digest = hashlib.sha256(f"{weights.resolve()}|{st.st_size}|{st.st_mtime_ns}|{self.scaling_factor}".encode())
        return "vae-" + digest.hexdigest()[:16]

    def save(self, directory: str | Path) -> Path:
        """The folder it came from, copied as is; a VAE built in memory is saved by diffusers (safetensors)."""
        directory = Path(directory)
        if self.source is not None:
            shutil.copytree(self.source, directory)
        else:
            self.module.save_pretrained(str(directory), safe_serialization=True)
        return directory
