"""Image bytes in, image bytes out: safe decoding, mode normalisation and the output size policy.

Images travel through a build as encoded bytes (`EncodedImage`) and are decoded at most once, lazily. When no
pixel change is needed (an RGB JPEG or PNG without EXIF rotation, already within the size policy) the original
bytes are passed through untouched.

Size policy for output images (the same as OmniGen's `crop_arr`): downscale so the longer side is at most
`max_side`, then centre-crop each side down to a multiple of `multiple` (16 = VAE factor 8 x patch size 2).
`FitTransform` records the scale and crop so boxes can follow the pixels.

Resampling is OpenCV (3-12x faster than PIL's LANCZOS; tests/core/test_resize_quality.py keeps it within 35 dB
PSNR of LANCZOS on photos, docs/benchmarks.md has the table): INTER_LINEAR for a mild downscale (scale >= 2/3:
2.7x faster than OpenCV's fractional INTER_AREA and as close to LANCZOS, measured on the five photos: within
0.5 dB at 0.67, closer from 0.7 up), INTER_AREA (pixel-area averaging) below that, where a 2-tap tent starts to
alias (2-3 dB further from LANCZOS at 0.5-0.6), and LANCZOS4 to enlarge. A JPEG that `load` is told will only
be fitted (`fit_side`) and is large enough (`_reduction_pays`) decodes straight to 1/2, 1/4 or 1/8 scale
(libjpeg's scaled inverse DCT, still reading every block) and is resampled from there with PIL's LANCZOS over the
exact box (`_fit_reduced`): as close to LANCZOS as the full path, and 1.9-3.7x faster where it is used
(bench/resize_bench.py).
A plain JPEG that `load` decodes in full for `fit` (`fit_side`, or `as_array` for a builder that crops arrays)
becomes a numpy array that `fit` / `fit_region` resample and `encode` writes, with no PIL image in between
(x2i.core.jpeg_turbo: the same pixels and bytes as PIL's).
OpenCV is pinned to one thread: x2i parallelises by processes, and a thread pool would only oversubscribe the
cores and make forked workers unsafe (x2i.engine.executor.start_method).
"""
from __future__ import annotations

import io
import warnings

import cv2
import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from x2i.core import jpeg_turbo
from x2i.core.errors import ImageError  # noqa: F401 - where callers import it from
from x2i.core.jpeg_settings import JpegSettings, jpeg_settings
# The size policy's numbers live in x2i.core.sizing; imported here too, where callers have always found them.
from x2i.core.sizing import FitTransform, fit_size, scaled_size, source_box  # noqa: F401

cv2.setNumThreads(1)

# Decompression-bomb guard: we check the header size ourselves (below) and never let PIL decode beyond it.
DEFAULT_MAX_PIXELS = 8192 * 8192
Image.MAX_IMAGE_PIXELS = None
ImageFile.LOAD_TRUNCATED_IMAGES = False

_PASSTHROUGH_FORMATS = {"JPEG", "PNG"}
_ARRAY_MODES = {"RGB", "RGBA", "L"}  # 8-bit modes whose numpy array OpenCV resamples and PIL rebuilds as is


class EncodedImage:
    """Encoded image bytes with their size; decodes to RGB on first use and keeps the result (as a PIL image or,
    from the turbo decode and `encode` of an array, as an HxWx3 uint8 array: one copy of the pixels is held)."""

    __slots__ = ("data", "width", "height", "format", "path", "_pil", "_array", "_reduced")

    def __init__(self, data: bytes, width: int, height: int, format: str, path: str | None = None,
                 pil: Image.Image | None = None, reduced: Image.Image | None = None, array: np.ndarray | None = None):
        self.data = data
        self.width = int(width)
        self.height = int(height)
        self.format = format
        self.path = path
        self._pil = pil
        self._array = array
        self._reduced = reduced  # the pixels decoded at 1/2, 1/4 or 1/8 scale (`load(fit_side=...)`), if any

    def pil(self) -> Image.Image:
        """The RGB pixels at full size (decoded once)."""
        if self._pil is None:
            if self._array is not None:
                self._pil, self._array = Image.fromarray(self._array), None
            else:
                self._pil = decode(self.data)
        return self._pil

    def array(self) -> np.ndarray:
        """The full-size pixels as a uint8 array (HxWx3 RGB, or HxW for a grey PNG condition): the held array,
        else a copy of the PIL pixels (not kept)."""
        return self._array if self._array is not None else np.asarray(self.pil())

    def pixels_for(self, width: int, height: int) -> Image.Image:
        """Pixels to resample down to width x height: the reduced decode when it is at least that big (no
        second decode), else the full-size pixels."""
        r = self._reduced
        if self._pil is None and r is not None and r.width >= width and r.height >= height:
            return r
        return self.pil()

    def release(self) -> None:
        """Drop the decoded pixels (they are rebuilt from bytes if needed again)."""
        self._pil = self._array = self._reduced = None

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height

    def __repr__(self) -> str:
        return f"EncodedImage({self.format} {self.width}x{self.height}, {len(self.data)} bytes)"


def _header(data: bytes, max_pixels: int) -> Image.Image:
    """Open (header only) with the size checks: nothing is decoded yet."""
    if not data:
        raise ImageError("image_empty", "zero-byte image")
    try:
        im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageError("image_unreadable", f"not an image file ({len(data)} bytes)") from None
    except MemoryError:  # the machine, not the image
        raise
    except Exception as exc:  # noqa: BLE001 - PIL raises many types on garbage headers
        raise ImageError("image_unreadable", f"cannot read image header: {exc}") from None
    w, h = im.size
    if w < 1 or h < 1:
        raise ImageError("image_unreadable", f"image header gives size {w}x{h}")
    _check_pixels(w, h, max_pixels)
    return im


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    """The decompression-bomb guard, from the header's size, before anything is decoded."""
    if width * height > max_pixels:
        raise ImageError("image_too_large", f"{width}x{height} = {width * height} pixels exceeds the limit of "
                         f"{max_pixels}")


def _open(data: bytes, max_pixels: int, fit_side: int | None = None,
          turbo: bool = False) -> tuple[Image.Image | np.ndarray, tuple[int, int]]:
    """Open and fully decode (so damage is found now), with the header's size (`fit_side`, see `load`: a
    reduced decode is smaller than that). `turbo`: a plain JPEG decoded in full comes back as an array
    (x2i.core.jpeg_turbo.decode_array)."""
    if turbo:
        fast = _open_turbo(data, max_pixels, fit_side)
        if fast is not None:
            return fast
    with warnings.catch_warnings():  # PIL warns on odd EXIF etc.; such images either decode or are rejected
        warnings.simplefilter("ignore")
        im = _header(data, max_pixels)
        w, h = im.size
        plain_jpeg = im.format == "JPEG" and im.mode == "RGB" and _orientation(im) == 1
        target = _reduced_target(w, h, fit_side) if plain_jpeg else None
        if target is not None:
            im.draft(None, target)  # libjpeg decodes at the smallest 1/2^k scale still >= target
        if turbo and plain_jpeg and target is None:
            pixels = jpeg_turbo.decode_array(data, w, h)
            if pixels is not None:
                return pixels, (w, h)
        try:
            im.load()
        except MemoryError:  # the machine, not the image
            raise
        except Exception as exc:  # noqa: BLE001 - PIL's decoders raise OSError, ValueError, SyntaxError, struct.error...
            raise ImageError("image_corrupt", f"cannot decode {im.format or 'image'} {w}x{h}: {exc}") from None
    return im, (w, h)


def _open_turbo(data: bytes, max_pixels: int, fit_side: int | None) -> tuple[np.ndarray, tuple[int, int]] | None:
    """A plain JPEG (no EXIF) decoded in full into an array without PIL; None for PIL's path (anything else, a
    reduced decode, or a file simplejpeg refuses: PIL decides)."""
    size = jpeg_turbo.plain_header(data)
    if size is None:
        return None
    w, h = size
    _check_pixels(w, h, max_pixels)
    if _reduced_target(w, h, fit_side) is not None:
        return None
    pixels = jpeg_turbo.decode_array(data, w, h)
    return None if pixels is None else (pixels, (w, h))


def _reduced_target(width: int, height: int, fit_side: int | None) -> tuple[int, int] | None:
    """The size `fit(image, fit_side)` resamples to, when decoding toward it at a reduced scale pays; else None."""
    if fit_side is None:
        return None
    target = scaled_size(width, height, min(1.0, fit_side / max(width, height)))
    return target if _reduction_pays(width, height, *target) else None


def _reduction_pays(width: int, height: int, target_w: int, target_h: int) -> bool:
    """Whether decoding at 1/s and resampling the rest with LANCZOS beats the full decode + OpenCV resample: at
    s >= 4 always; at s = 2 only when the reduced image is within 4/3 of the target (LANCZOS from a larger one costs
    what the smaller decode saved: 2048 -> 768 px 1.17x, 1536 -> 512 px no faster; 2048 -> 1024 px 1.9x;
    bench/resize_bench.py, bench/e2e_bench.py --side 1536)."""
    s = min(width // target_w, height // target_h)  # PIL's draft: the largest 1/2^k with both sides >= target
    if s >= 4:
        return True
    return s >= 2 and 3 * max(width, height) <= 8 * max(target_w, target_h)  # max / 2 <= 4/3 of the target


def _orientation(im: Image.Image) -> int:
    if "exif" not in im.info:  # no EXIF block: nothing to rotate (and no EXIF parse per image)
        return 1
    try:
        return int(im.getexif().get(0x0112, 1) or 1)
    except (ValueError, TypeError, OSError, SyntaxError, KeyError):  # a broken EXIF block: keep the pixels as they are
        return 1


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB: alpha composited on white, 16/32-bit rescaled, CMYK/palette converted."""
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        arr = np.asarray(im, dtype=np.uint16)
        return Image.fromarray((arr >> 8).astype(np.uint8), "L").convert("RGB")
    if im.mode in ("I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = np.zeros_like(arr) if hi <= lo else (arr - lo) / (hi - lo) * 255.0
        return Image.fromarray(scaled.round().astype(np.uint8), "L").convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def decode(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode to RGB, applying EXIF orientation. Raises ImageError with a countable reason."""
    im, _ = _open(data, max_pixels)
    if _orientation(im) != 1:
        im = ImageOps.exif_transpose(im)
    return to_rgb(im)


def load(data: bytes, path: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
         fit_side: int | None = None, as_array: bool = False) -> EncodedImage:
    """Validate and normalise an image file: original bytes kept when they already are plain RGB JPEG/PNG.
    `fit_side`: the caller will only use the pixels through `fit(image, fit_side)`, so a plain RGB JPEG large
    enough for it to pay (`_reduction_pays`) is decoded at 1/2, 1/4 or 1/8 scale (every block is still read, so damage is still
    found here); `pil()` still gives full-size pixels, decoding again if asked. A plain JPEG decoded in full for
    fit_side, or for a caller that works on arrays (`as_array`: `fit`, `fit_region`, `encode`), is decoded by
    simplejpeg into an array (x2i.core.jpeg_turbo); `pil()` of it is a copy."""
    im, size = _open(data, max_pixels, fit_side, turbo=as_array or fit_side is not None)
    if isinstance(im, np.ndarray):  # a plain JPEG decoded in full by simplejpeg, passed through
        return EncodedImage(data, *size, "JPEG", path, array=im)
    fmt = im.format or ""
    if im.size != size:  # decoded at a reduced scale: a plain RGB JPEG, passed through
        return EncodedImage(data, *size, fmt, path, reduced=im)
    if fmt in _PASSTHROUGH_FORMATS and im.mode == "RGB" and _orientation(im) == 1:
        return EncodedImage(data, im.width, im.height, fmt, path, pil=im)
    if _orientation(im) != 1:
        im = ImageOps.exif_transpose(im)
    rgb = to_rgb(im)
    # Lossless sources stay lossless; everything else becomes a high-quality JPEG.
    target = "PNG" if fmt in ("PNG", "GIF", "BMP", "TIFF") else "JPEG"
    return encode(rgb, target, path=path)


def encode(im: Image.Image | np.ndarray, format: str = "JPEG", quality: int | JpegSettings = 95,
           path: str | None = None) -> EncodedImage:
    """Encode pixels (PIL, or an HxWx3 / HxW uint8 array, kept as the result's pixels); JPEG for photos, PNG for
    masks/conditions that must stay exact. `quality`: a JPEG quality, or the recipe's JpegSettings (quality and
    chroma subsampling, x2i.core.jpeg_settings)."""
    array = im if isinstance(im, np.ndarray) else None
    if array is not None and format == "JPEG" and array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] == 3:
        h, w = array.shape[:2]
        return EncodedImage(jpeg_turbo.encode_array(array, quality), w, h, "JPEG", path, array=array)
    if array is not None:
        im = Image.fromarray(array)
    buf = io.BytesIO()
    if format == "JPEG":
        if im.mode not in ("RGB", "L"):
            im = to_rgb(im)
        # comment=None: PIL would copy a cropped source's JPEG comment (COM) into the crop, and only when the
        # crop was not resampled; the array path (jpeg_turbo.encode_array) writes none either.
        jpeg = jpeg_settings(quality)
        im.save(buf, "JPEG", quality=jpeg.quality, subsampling=0 if jpeg.full_chroma else 2, comment=None)
    elif format == "PNG":
        im.save(buf, "PNG", compress_level=1)
    else:
        raise ValueError(f"unsupported output format {format!r}")
    if array is not None:
        return EncodedImage(buf.getvalue(), im.width, im.height, format, path, array=array)
    return EncodedImage(buf.getvalue(), im.width, im.height, format, path, pil=im)


def resize_array(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resample an HxWxC uint8 array (module docstring): INTER_LINEAR down to 2/3 size, INTER_AREA below,
    LANCZOS4 when enlarging (the size policy never enlarges; other callers may)."""
    h, w = pixels.shape[:2]
    if (w, h) == (width, height):
        return pixels
    if width > w or height > h:
        interpolation = cv2.INTER_LANCZOS4
    elif 3 * (2 * width + 1) >= 4 * w and 3 * (2 * height + 1) >= 4 * h:  # (side + 0.5) / source >= 2/3: a side
        interpolation = cv2.INTER_LINEAR  # rounded to whole pixels (397.3 -> 397) keeps its nominal scale
    else:
        interpolation = cv2.INTER_AREA
    return cv2.resize(pixels, (width, height), interpolation=interpolation)


def fit_pil(im: Image.Image, max_side: int, multiple: int = 16,
            region: tuple[int, int, int, int] | None = None) -> tuple[Image.Image, FitTransform]:
    """Apply the size policy to decoded pixels, or to `region` (x0, y0, x1, y1) of them: the region is
    resampled to the scaled size `scaled_size` gives and then centre-cropped, exactly the FitTransform's
    new = old * scale - crop (the shorter side's size was rounded, so its far edge may sit up to half a pixel
    off the exact scale: the same sub-pixel tolerance `source_box` allows)."""
    x0, y0, x1, y1 = region or (0, 0, im.width, im.height)
    t = fit_size(x1 - x0, y1 - y0, max_side, multiple)
    if t.scale == 1.0:
        box = (x0 + t.crop_left, y0 + t.crop_top, x0 + t.crop_left + t.width, y0 + t.crop_top + t.height)
        return (im if box == (0, 0, im.width, im.height) else im.crop(box)), t
    if im.mode not in _ARRAY_MODES:  # e.g. palette or 16-bit: no 8-bit array to average, PIL resamples it
        box = source_box((x0, y0, x1, y1), t)
        return im.resize((t.width, t.height), Image.Resampling.LANCZOS, box=box, reducing_gap=3.0), t
    full = (x0, y0, x1, y1) == (0, 0, im.width, im.height)
    # Crop in PIL first: it copies only the region, where np.asarray would copy the whole image.
    pixels = np.asarray(im if full else im.crop((x0, y0, x1, y1)))
    return Image.fromarray(_fit_array(pixels, t)), t


def fit_region(image: EncodedImage, max_side: int, multiple: int, region: tuple[int, int, int, int]
               ) -> tuple[Image.Image | np.ndarray, FitTransform]:
    """`fit_pil` of a whole-pixel region of the image: from its array when it holds one (an array comes back,
    which `encode` writes without a PIL image), else from its PIL pixels."""
    if image._array is None:
        return fit_pil(image.pil(), max_side, multiple, region=region)
    x0, y0, x1, y1 = region
    t = fit_size(x1 - x0, y1 - y0, max_side, multiple)
    pixels = image._array[y0:y1, x0:x1]
    if t.scale == 1.0:  # a copy, as PIL's crop: the crop must not keep the whole source alive
        return np.ascontiguousarray(pixels[t.crop_top:t.crop_top + t.height, t.crop_left:t.crop_left + t.width]), t
    return _fit_array(pixels, t), t


def _fit_array(pixels: np.ndarray, t: FitTransform) -> np.ndarray:
    """Resample a whole array to the scaled size of `t` and centre-crop it (a contiguous array)."""
    h, w = pixels.shape[:2]
    sw, sh = scaled_size(w, h, t.scale)
    scaled = resize_array(pixels, sw, sh)
    return np.ascontiguousarray(scaled[t.crop_top:t.crop_top + t.height, t.crop_left:t.crop_left + t.width])


def _fit_reduced(src: Image.Image, width: int, height: int, sw: int, sh: int, t: FitTransform) -> Image.Image:
    """Resample a 1/s-scale decode of a width x height image to sw x sh, then crop as `t` says. The decode is
    ceil(width / s) wide, so the image itself spans a fractional box of it: resampling that exact box keeps the
    geometry (OpenCV can only map whole pixels: 0.2-0.3 px off, -3 to -9 dB). PIL's LANCZOS does, on the small
    image: 40-53 dB from LANCZOS of the full decode on the five photos at 2.2-8.8x (bench/resize_bench.py)."""
    s = round(width / src.width)
    scaled = src.resize((sw, sh), Image.Resampling.LANCZOS, box=(0, 0, width / s, height / s))
    return scaled.crop((t.crop_left, t.crop_top, t.crop_left + t.width, t.crop_top + t.height))


def fit_pixels(image: EncodedImage, max_side: int, multiple: int = 16) -> tuple[Image.Image | np.ndarray, FitTransform]:
    """The size policy's pixels for an EncodedImage: from its reduced decode when it has one (`load`'s
    fit_side), from its array when it holds one (an array comes back), else from the PIL pixels (`fit_pil`)."""
    if image._array is not None:  # also a crop alone: pil() would copy the whole array first
        return fit_region(image, max_side, multiple, (0, 0, image.width, image.height))
    t = fit_size(image.width, image.height, max_side, multiple)
    sw, sh = scaled_size(image.width, image.height, t.scale)
    src = image.pixels_for(sw, sh)
    if src.size == image.size:
        return fit_pil(src, max_side, multiple)
    return _fit_reduced(src, image.width, image.height, sw, sh, t), t


def fit(image: EncodedImage, max_side: int, multiple: int = 16,
        quality: int | JpegSettings = 95) -> tuple[EncodedImage, FitTransform]:
    """Apply the size policy; the original bytes pass through when they already satisfy it."""
    t = fit_size(image.width, image.height, max_side, multiple)
    if t.identity and (t.width, t.height) == (image.width, image.height):
        return image, t
    pixels, t = fit_pixels(image, max_side, multiple)
    fmt = "PNG" if image.format == "PNG" else "JPEG"
    return encode(pixels, fmt, quality=quality, path=image.path), t
