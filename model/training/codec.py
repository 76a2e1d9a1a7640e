"""The codec a training run encodes with, chosen by the `codec:` section of its configuration.

kind auto: the `init` checkpoint's vae/ folder, else the pixel codec; pixel: space-to-depth with the section's
factor and scaling; vae: a diffusers AutoencoderKL folder (`path`); pca: a patch-PCA codec loaded from `path`, or
fitted on the mix at the start of the run (`sample_images` picks the images). Folders load through the one codec
loader (x2i.model.codecs.load_codec), which reads the kind off the files.
"""
from __future__ import annotations

import torch

from x2i.core.errors import X2IError

from ..codecs import load_codec
from ..codecs.pixel import PixelCodec
from ..modeling.checkpoint import Layout


def build_codec(section, init_layout: Layout | None, fit_pca=None):
    """The run's codec, frozen. `fit_pca()` returns a freshly fitted PatchPCACodec (kind pca without a path)."""
    kind, path = section.kind, section.path
    if kind == "auto":
        if init_layout is not None:
            if not init_layout.vae_dir.is_dir():
                raise X2IError(f"{init_layout.root} has no vae/ folder: give codec.kind and codec.path")
            kind, path = "checkpoint", str(init_layout.vae_dir)
        else:
            kind = "pixel"
    if kind == "pixel":
        codec = PixelCodec(section.pixel_factor, section.pixel_scaling)
    elif kind == "pca":
        from ..codecs.patch_pca import PatchPCACodec

        codec = PatchPCACodec.load(path) if path else fit_pca()
    else:
        if not path:
            raise X2IError("codec.kind vae needs codec.path (a diffusers AutoencoderKL folder)")
        codec = load_codec(path)
    if hasattr(codec, "module"):
        for p in codec.module.parameters():
            p.requires_grad_(False)
    return codec


def sample_images(mix, size: tuple[int, int], limit: int, seed: int = 0) -> torch.Tensor:
    """Up to `limit` output images of the mix (every stream in proportion to its weight, deterministic), fitted
    to `size` (height, width) the way the loader fits them: the data a codec is fitted on."""
    import numpy as np
    import pyarrow.parquet as pq

    from x2i.core.imageio import ImageError, decode

    from ..inference.processor import to_tensor
    from .buckets import fit_to_bucket

    rng = np.random.default_rng([seed, 21])
    out = []
    for stream in mix.streams:
        want = max(1, round(limit * stream.weight))
        units = stream.units
        order = rng.permutation(len(units))
        got = 0
        for u in order:
            shard, group, _ = units[int(u)]
            table = pq.ParquetFile(stream.shards[shard].path).read_row_group(group, columns=["output_image"])
            for cell in table.column("output_image").to_pylist():
                if got >= want:
                    break
                try:
                    out.append(to_tensor(fit_to_bucket(decode(cell["bytes"]), size)))
                    got += 1
                except ImageError:  # a bad row is skipped here as in training
                    continue
            if got >= want:
                break
    if not out:
        raise X2IError("no decodable output image in the mix to fit the codec on")
    return torch.stack(out)
