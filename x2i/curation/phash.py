"""64-bit perceptual hash (pHash), bit for bit what `imagehash.phash` computes, with no optional dependency.

imagehash's recipe: grey (PIL "L"), LANCZOS to 32x32, 2-D DCT-II (unnormalised, as scipy.fftpack.dct), keep
the top-left 8x8 low frequencies, a bit per coefficient above their median, written as 16 hex digits (row
major, first bit most significant). Reimplemented here so the core install dedups by pHash too; a test checks
it against imagehash on photos, noise, flat images, gradients and stripes.

The 8x8 low frequencies are two small matrix products with the DCT-II's first 8 rows, not scipy's FFT: importing
scipy.fft costs ~0.25 s in every process that hashes. The products differ from scipy's FFT by rounding noise
(~1e-10 on coefficients up to ~1e6), so they are rounded to 6 decimals: exact symmetries (a flat image's AC
coefficients, which scipy gives as exact zeros) stay exact ties, as in imagehash.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

HASH_SIZE = 8
IMAGE_SIZE = HASH_SIZE * 4  # imagehash's highfreq_factor 4
# Rows k < 8 of the unnormalised DCT-II: y_k = 2 * sum_n x_n cos(pi k (2n + 1) / 2N), as scipy's dct(norm=None).
_DCT_ROWS = 2.0 * np.cos(np.pi * np.arange(HASH_SIZE)[:, None] * (2 * np.arange(IMAGE_SIZE)[None, :] + 1)
                         / (2 * IMAGE_SIZE))


def phash(image: Image.Image) -> str:
    small = image.convert("L").resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.LANCZOS)
    pixels = np.asarray(small, dtype=np.float64)
    coefficients = np.round(_DCT_ROWS @ pixels @ _DCT_ROWS.T, 6)
    bits = (coefficients > np.median(coefficients)).flatten()
    return f"{int(''.join('1' if b else '0' for b in bits), 2):016x}"
