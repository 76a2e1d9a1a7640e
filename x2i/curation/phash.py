"""64-bit perceptual hash (pHash), bit for bit what `imagehash.phash` computes, with no optional dependency.

imagehash's recipe: grey (PIL "L"), LANCZOS to 32x32, 2-D DCT-II (unnormalised, as scipy.fftpack.dct), keep
the top-left 8x8 low frequencies, a bit per coefficient above their median, written as 16 hex digits (row
major, first bit most significant). Reimplemented here so the core install dedups by pHash too; a test checks
it against imagehash on photos and the shapes world.
"""
from __future__ import annotations

import numpy as np
from PIL import Image
from scipy.fft import dct

HASH_SIZE = 8
IMAGE_SIZE = HASH_SIZE * 4  # imagehash's highfreq_factor 4


def phash(image: Image.Image) -> str:
    small = image.convert("L").resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.LANCZOS)
    pixels = np.asarray(small, dtype=np.float64)
    coefficients = dct(dct(pixels, axis=0), axis=1)[:HASH_SIZE, :HASH_SIZE]
    bits = (coefficients > np.median(coefficients)).flatten()
    return f"{int(''.join('1' if b else '0' for b in bits), 2):016x}"
