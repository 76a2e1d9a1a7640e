"""A linear image codec fitted to the training data: principal components of pixel patches (a linear autoencoder).

Where no pretrained VAE exists (nothing can be downloaded here) and pixel-space diffusion is too slow to learn on a
CPU, this gives the model a compact latent space in seconds: each f x f x 3 patch is projected on the top k
principal components of the training images' patches and whitened (divided by the component's standard
deviation), so latents are (k, H/f, W/f) with roughly unit variance per channel, like a scaled VAE latent. Decoding
is the transpose. Because the basis is smooth, leftover latent noise decodes to soft blotches instead of pixel
noise, which is what makes a few CPU minutes of training enough on the shapes world (bench/bench_learning.py).

It has the ImageCodec interface (codecs/base.py) and saves as codec.json + codec.safetensors. Fitting it on a
training mix: x2i.model.training.codec.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from x2i.core.errors import X2IError

FILE = "codec.safetensors"
SPEC = "codec.json"  # marks the folder as a patch-PCA codec (codecs/io.py)


class PatchPCACodec:
    kind = "pca"

    def __init__(self, mean: torch.Tensor, basis: torch.Tensor, std: torch.Tensor, factor: int):
        self.mean, self.basis, self.std = mean.float(), basis.float(), std.float()  # (D,), (k, D), (k,)
        self.downsample = factor
        self.latent_channels = basis.shape[0]
        self.scaling_factor, self.shift_factor = 1.0, 0.0  # whitening is part of encode/decode

    @classmethod
    def fit(cls, images: torch.Tensor, factor: int, components: int, whiten: bool = True) -> PatchPCACodec:
        """images (N, 3, H, W) in [-1, 1], H and W multiples of `factor`. `whiten`: every component scaled to unit
        variance; else one common scale (unit variance on average), so strong components stay strong."""
        patches = F.pixel_unshuffle(images.float(), factor)
        dim = patches.shape[1]
        if components > dim:
            raise X2IError(f"{components} components from {dim}-dimensional patches ({factor}x{factor}x3)")
        flat = patches.permute(0, 2, 3, 1).reshape(-1, dim).double()
        mean = flat.mean(0)
        _, s, vh = torch.linalg.svd(flat - mean, full_matrices=False)
        std = s[:components] / max(1, flat.shape[0] - 1) ** 0.5
        if not whiten:
            std = torch.full_like(std, float(std.pow(2).mean().sqrt()))
        return cls(mean, vh[:components], std.clamp(min=1e-6), factor)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        p = F.pixel_unshuffle(images.float(), self.downsample).permute(0, 2, 3, 1)
        z = (p - self.mean.to(p.device)) @ self.basis.to(p.device).T / self.std.to(p.device)
        return z.permute(0, 3, 1, 2).contiguous()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        z = latents.float().permute(0, 2, 3, 1)
        p = (z * self.std.to(z.device)) @ self.basis.to(z.device) + self.mean.to(z.device)
        return F.pixel_shuffle(p.permute(0, 3, 1, 2).contiguous(), self.downsample)

    def to(self, device=None, dtype=None) -> PatchPCACodec:
        return self  # tensors move to the input's device per call; tiny

    def fingerprint(self) -> str:
        import hashlib

        h = hashlib.sha256()
        for t in (self.mean, self.basis, self.std):
            h.update(t.contiguous().numpy().tobytes())
        return f"pca-f{self.downsample}-k{self.latent_channels}-{h.hexdigest()[:12]}"

    def save(self, directory: str | Path) -> Path:
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({"mean": self.mean, "basis": self.basis.contiguous(), "std": self.std}, str(directory / FILE))
        (directory / SPEC).write_text(json.dumps({"kind": "patch_pca", "factor": self.downsample,
                                                          "components": self.latent_channels, "file": FILE}))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> PatchPCACodec:
        from safetensors.torch import load_file

        directory = Path(directory)
        spec_path = directory / SPEC
        if not spec_path.is_file() or not (directory / FILE).is_file():
            raise X2IError(f"no fitted patch-PCA codec in {directory} (codec.json + {FILE})")
        spec = json.loads(spec_path.read_text())
        t = load_file(str(directory / spec.get("file", FILE)))
        return cls(t["mean"], t["basis"], t["std"], int(spec["factor"]))
