"""`load(fit_side=...)` decodes plain YCbCr JPEGs with simplejpeg: the same pixels as PIL, the same accept/reject
decisions (PIL decides whatever simplejpeg refuses), and fitted outputs byte for byte those of the PIL path."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from x2i.core import imageio, jpeg_turbo
from x2i.core.imageio import EncodedImage, ImageError, fit, load
from x2i.core.jpeg_settings import JpegSettings


def photos() -> list[Image.Image]:
    import matplotlib.cbook as cbook
    from skimage import data

    out = [Image.fromarray(getattr(data, n)()) for n in ("astronaut", "coffee", "chelsea", "rocket")]
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        out.append(Image.open(io.BytesIO(f.read())).convert("RGB"))
    return out


def jpeg(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", **kw)
    return buf.getvalue()


def pil_pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


FULL = 4096  # a fit side no photo here reaches: decoded in full, never reduced
SAVES = ({"quality": 90}, {"quality": 95, "subsampling": 0}, {"quality": 80, "subsampling": 1},
         {"quality": 85, "progressive": True}, {"quality": 60, "optimize": True})


@pytest.mark.parametrize("kw", SAVES, ids=lambda kw: "-".join(f"{k}{v}" for k, v in kw.items()))
def test_turbo_decode_gives_pils_pixels(kw):
    for im in photos():
        data = jpeg(im, **kw)
        image = load(data, fit_side=FULL)
        assert image._array is not None and image._pil is None  # decoded by simplejpeg
        assert image.size == im.size and image.data is data
        assert np.array_equal(image.array(), pil_pixels(data))


def test_fitted_output_is_byte_identical_to_the_pil_path():
    for im in photos():
        data = jpeg(im, quality=90)
        turbo = load(data, fit_side=FULL)
        via_pil = EncodedImage(data, *im.size, "JPEG", pil=Image.open(io.BytesIO(data)).convert("RGB"))
        for side in (1000, 512, 256, 100):  # 1000: no resample, only the crop to multiples of 16 (or nothing)
            a, ta = fit(turbo, side, 16, 95)
            b, tb = fit(via_pil, side, 16, 95)
            assert ta == tb and a.data == b.data, side
            assert np.array_equal(a.array(), np.asarray(b.pil()))
            assert turbo._pil is None  # the array path never made a PIL image of the source


@pytest.mark.parametrize("quality", (95, 90, 85, 60, JpegSettings(95, "4:2:0"), JpegSettings(80, "4:4:4")))
def test_an_array_encodes_to_the_bytes_pil_writes(quality):
    """`encode` of an array (OpenCV, no copy into PIL) writes exactly what `encode` of the same PIL image does:
    RGB (OpenCV) and grey (PIL), odd sizes, both chroma subsamplings (the quality's, or the settings')."""
    rng = np.random.default_rng(getattr(quality, "quality", quality))
    arrays = [np.asarray(im) for im in photos()]
    arrays += [np.ascontiguousarray(a[:97, :131]) for a in arrays[:2]]  # odd sizes, partial MCUs
    arrays += [rng.integers(0, 256, (33, 17, 3), dtype=np.uint8), np.asarray(photos()[1].convert("L"))]
    for a in arrays:
        from_array = imageio.encode(a, "JPEG", quality)
        from_pil = imageio.encode(Image.fromarray(a), "JPEG", quality)
        assert from_array.data == from_pil.data, (a.shape, quality)
        assert from_array.size == from_pil.size == (a.shape[1], a.shape[0])
        assert from_array.array() is a


def test_what_simplejpeg_refuses_pil_decides():
    import simplejpeg

    im = photos()[0]
    data = jpeg(im, quality=90)
    damaged = bytearray(data)
    for i in np.random.default_rng(0).integers(1000, len(data) - 2, 20):
        damaged[i] ^= 0x55  # libjpeg warns (corrupt data), simplejpeg refuses, PIL decodes it anyway
    damaged = bytes(damaged)
    with pytest.raises(ValueError):
        simplejpeg.decode_jpeg(damaged)
    image = load(damaged, fit_side=FULL)
    assert image._array is None and image._pil is not None
    assert np.array_equal(np.asarray(image.pil()), pil_pixels(damaged))
    for broken in (data[: len(data) // 2], data[:-10]):  # truncated: both refuse
        with pytest.raises(ImageError) as e:
            load(broken, fit_side=FULL)
        assert e.value.reason == "image_corrupt"


def test_other_jpegs_and_formats_keep_the_pil_path():
    im = photos()[1]
    grey, cmyk = jpeg(im.convert("L")), jpeg(im.convert("CMYK"))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    rotated = jpeg(im, exif=exif.tobytes())
    buf = io.BytesIO()
    im.save(buf, "PNG")
    for data in (grey, cmyk, rotated, buf.getvalue()):
        image = load(data, fit_side=FULL)
        assert image._array is None
        assert image.array().shape[2] == 3
    assert load(rotated, fit_side=FULL).size == (im.height, im.width)


def test_pixels_held_once_and_released():
    data = jpeg(photos()[2], quality=90)
    image = load(data, fit_side=FULL)
    pixels = image.array()
    pil = image.pil()  # an array-held image becomes a PIL-held one (one copy of the pixels)
    assert image._array is None and np.array_equal(np.asarray(pil), pixels)
    image.release()
    assert image._pil is None and image._array is None
    assert np.array_equal(np.asarray(image.pil()), pixels)  # decoded again from the bytes


def test_without_fit_side_pil_decodes():
    """Builders that crop and draw with PIL get PIL's pixels (an array would be copied back)."""
    image = load(jpeg(photos()[0], quality=90))
    assert image._array is None and image._pil is not None


def test_a_reduced_decode_still_goes_through_pil(monkeypatch):
    big = photos()[0].resize((2048, 2048))
    data = jpeg(big, quality=90)
    calls = []
    real = jpeg_turbo.decode_array
    monkeypatch.setattr(jpeg_turbo, "decode_array", lambda *a: calls.append(a) or real(*a))
    image = load(data, fit_side=256)
    assert image._reduced is not None and image._array is None and calls == []


def outcome(data: bytes, **kw):
    """What `load` makes of the bytes: ("ok", size, pixels) or ("reject", reason)."""
    try:
        image = load(data, **kw)
    except ImageError as e:
        return "reject", e.reason
    return "ok", image.size, image.array().tobytes()


def test_hostile_bytes_get_the_same_verdict_and_pixels_on_both_paths():
    """Truncations at every header and scan offset, flipped bytes, a broken segment length, an EXIF block, junk
    after the end, a decompression bomb header: the array path (no PIL header, simplejpeg decode) accepts, rejects
    (with the same reason) and decodes exactly as the PIL path."""
    im = photos()[3].resize((96, 64))
    good = jpeg(im, quality=90)
    exif = Image.Exif()
    exif[0x0112] = 1
    variants = [good, jpeg(im, quality=90, exif=exif.tobytes()), good + b"junk" * 10, good[:2] + good[2:]]
    variants += [good[:n] for n in range(0, len(good), max(1, len(good) // 60))]
    rng = np.random.default_rng(1)
    for _ in range(40):
        bad = bytearray(good)
        for i in rng.integers(2, len(good), int(rng.integers(1, 4))):
            bad[i] = int(rng.integers(0, 256))
        variants.append(bytes(bad))
    sof = good.index(b"\xff\xc0")
    bomb = bytearray(good)
    bomb[sof + 5:sof + 9] = (60000).to_bytes(2, "big") * 2  # 60000 x 60000 in the frame header
    broken_length = bytearray(good)
    broken_length[4:6] = b"\x00\x01"  # the APP0 segment claims a length below its own two bytes
    variants += [bytes(bomb), bytes(broken_length)]
    verdicts = set()
    for data in variants:
        expected = outcome(data)
        assert outcome(data, as_array=True) == expected, len(data)
        verdicts.add(expected[0] if expected[0] == "ok" else expected[1])
    assert {"ok", "image_corrupt", "image_too_large"} <= verdicts, verdicts


@pytest.mark.parametrize("settings, written", [(95, "444"), (90, "444"), (89, "420"), (JpegSettings(95, "4:2:0"), "420"),
                                               (JpegSettings(60, "4:4:4"), "444"), (JpegSettings(60, "auto"), "420")])
def test_chroma_subsampling_is_what_the_settings_say(settings, written):
    """The subsampling in the written file's header, on both encoders (an array: OpenCV; PIL)."""
    import simplejpeg

    a = np.asarray(photos()[0])
    for pixels in (a, Image.fromarray(a)):
        assert simplejpeg.decode_jpeg_header(imageio.encode(pixels, "JPEG", settings).data)[3] == written


def test_jpeg_settings_refuse_what_libjpeg_cannot_write():
    for bad in (dict(quality=0), dict(quality=101), dict(subsampling="4:2:2"), dict(subsampling="420")):
        with pytest.raises(ValueError):
            JpegSettings(**bad)
