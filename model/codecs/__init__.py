"""Image codecs: what turns pixels into the latents the model works on, and back.

    base        the ImageCodec interface and model-latent scaling
    vae         diffusers' AutoencoderKL (the SDXL VAE of OmniGen-v1)
    pixel       the weight-free space-to-depth codec of tiny CPU models
    patch_pca   a linear codec fitted to the training data
    io          the one loader: the kind is read off the folder's files

`load_codec` and the scaling helpers import from here; the codec classes from their modules (they pull in torch
and, for the VAE, diffusers).
"""
from __future__ import annotations

from .io import codec_kind, load_codec

__all__ = ["codec_kind", "load_codec"]
