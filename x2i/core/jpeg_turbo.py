"""libjpeg-turbo straight to and from numpy, for the download path (x2i.core.imageio `load(fit_side=...)`, `fit`,
`encode` of an array): the pixels PIL decodes and the bytes PIL writes, without a PIL image in between.

- header: `plain_header` reads a plain JPEG's size without PIL (PIL's open is ~0.1 ms); any EXIF block, or
  anything unusual, goes to PIL, which reads orientation and decides.
A PIL image made from an array, or an array from a PIL image, is a full copy of the pixels: decoding with PIL and
handing the pixels to OpenCV, then back to PIL to encode, cost 0.4 ms of a 768 -> 512 px fit that does ~2 ms of
real work (`python bench/e2e_parts.py`: decode 1.21 -> 0.99 ms, fit + encode 1.23 -> 1.03 ms an image).
- decode: simplejpeg, libjpeg-turbo with the IDCT and chroma upsampling PIL uses, so the same pixels
  (tests/core/test_imageio_turbo.py checks them on baseline, progressive, 4:4:4, 4:2:2 and 4:2:0 files). simplejpeg
  refuses whatever libjpeg warns about (a missing end marker, stray bytes before a marker), some of which PIL
  accepts: those return None and PIL decides, so what is accepted and rejected stays PIL's decision.
- encode: OpenCV's JPEG writer (libjpeg-turbo's defaults and one JFIF header, as PIL's), given the chroma
  subsampling `encode` picks: PIL's bytes exactly, for RGB (a grey image's header differs, so grey stays with PIL).
  simplejpeg's encoder was not used: it writes with the fast integer DCT whatever it is asked (0.5 dB lower).
"""
from __future__ import annotations

import cv2
import numpy as np
import simplejpeg

from x2i.core.jpeg_settings import JpegSettings, jpeg_settings


def plain_header(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a YCbCr JPEG with no EXIF block (so no orientation to apply: x2i reads orientation
    from EXIF only), read without PIL; None for anything else (PIL's path handles it)."""
    if data[:3] != b"\xff\xd8\xff":
        return None
    i, n = 2, len(data)
    while True:  # the segments before the first scan
        if i + 4 > n or data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # a fill byte
            i += 1
            continue
        if marker == 0xDA:  # start of scan: the header is over
            break
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if length < 2 or 0xD0 <= marker <= 0xD9:
            return None
        if marker == 0xE1 and data[i + 4:i + 10] == b"Exif\x00\x00":
            return None
        i += 2 + length
    try:
        h, w, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    return (w, h) if colorspace == "YCbCr" and w > 0 and h > 0 else None


def decode_array(data: bytes, width: int, height: int) -> np.ndarray | None:
    """A YCbCr JPEG's RGB pixels (height x width x 3), or None to let PIL decide."""
    try:
        h, w, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        if colorspace != "YCbCr" or (w, h) != (width, height):
            return None
        pixels = simplejpeg.decode_jpeg(data, colorspace="RGB")
    except ValueError:
        return None
    return pixels if pixels.shape == (height, width, 3) else None


def encode_array(pixels: np.ndarray, quality: int | JpegSettings) -> bytes:
    """JPEG bytes of an RGB uint8 array, with the settings' quality and chroma subsampling (a bare quality:
    4:4:4 from 90 up, else 4:2:0; x2i.core.jpeg_settings)."""
    jpeg = jpeg_settings(quality)
    sampling = cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444 if jpeg.full_chroma else cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR),
                            [cv2.IMWRITE_JPEG_QUALITY, jpeg.quality, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, sampling])
    if not ok:
        raise ValueError(f"OpenCV could not encode a {pixels.shape} array as JPEG")
    return data.tobytes()
