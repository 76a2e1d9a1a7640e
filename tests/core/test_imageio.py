import io
import struct

import numpy as np
import pytest
from PIL import Image

from x2i.core.imageio import ImageError, decode, fit, fit_size, load


def _bytes(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _photo(w=64, h=48) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), "RGB")


def test_plain_rgb_jpeg_passes_through_untouched():
    data = _bytes(_photo(), "JPEG", quality=90)
    image = load(data)
    assert image.data is data and image.format == "JPEG" and image.size == (64, 48)


@pytest.mark.parametrize("data,reason", [
    (b"", "image_empty"),
    (b"<html><body>not found</body></html>", "image_unreadable"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "image_unreadable"),
])
def test_garbage_is_rejected_with_reason(data, reason):
    with pytest.raises(ImageError) as err:
        load(data)
    assert err.value.reason == reason


def test_truncated_jpeg_is_rejected():
    data = _bytes(_photo(256, 256), "JPEG", quality=95)
    with pytest.raises(ImageError) as err:
        load(data[: len(data) // 2])
    assert err.value.reason == "image_corrupt"


def test_decompression_bomb_refused_from_header_alone():
    # A BMP header claiming 100000 x 100000 pixels, with no pixel data: refused before any decoding.
    header = b"BM" + struct.pack("<IHHI", 54, 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, 100000, 100000, 1, 24, 0, 0, 2835, 2835, 0, 0)
    with pytest.raises(ImageError) as err:
        load(header + info)
    assert err.value.reason == "image_too_large"
    with pytest.raises(ImageError):
        load(_bytes(_photo(200, 200), "PNG"), max_pixels=100 * 100)


def test_cmyk_is_converted_to_rgb():
    cmyk = Image.new("CMYK", (32, 16), (0, 255, 255, 0))  # pure red in CMYK
    image = load(_bytes(cmyk, "JPEG"))
    px = np.asarray(image.pil())
    assert image.pil().mode == "RGB" and px[..., 0].mean() > 200 and px[..., 1].mean() < 60


def test_16bit_png_is_scaled_not_clipped():
    arr = np.full((8, 8), 40000, dtype=np.uint16)
    image = load(_bytes(Image.fromarray(arr), "PNG"))
    px = np.asarray(image.pil())
    assert image.pil().mode == "RGB" and abs(int(px[0, 0, 0]) - 40000 // 257) <= 1


def test_palette_with_transparency_composited_on_white():
    im = Image.new("P", (8, 8), 0)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    im.info["transparency"] = 0  # index 0 (black) is transparent
    im.putpixel((0, 0), 1)
    image = load(_bytes(im, "PNG", transparency=0))
    px = np.asarray(image.pil())
    assert tuple(px[4, 4]) == (255, 255, 255) and tuple(px[0, 0]) == (255, 0, 0)


def test_exif_rotation_is_applied():
    im = _photo(60, 20)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    image = load(_bytes(im, "JPEG", exif=exif.tobytes()))
    assert image.size == (20, 60) and image.data != _bytes(im, "JPEG")
    assert decode(image.data).size == (20, 60)


def test_fit_size_policy():
    t = fit_size(1000, 700, max_side=512, multiple=16)
    assert (t.width, t.height) == (512, 352) and t.width % 16 == 0 and t.height % 16 == 0
    t = fit_size(451, 300, max_side=1024)
    assert (t.width, t.height, t.scale, t.crop_left, t.crop_top) == (448, 288, 1.0, 1, 6)
    with pytest.raises(ImageError):
        fit_size(10, 200, max_side=512)


def test_fit_passthrough_and_box_mapping():
    data = _bytes(_photo(64, 48), "JPEG")
    image = load(data)
    same, t = fit(image, max_side=64)
    assert same is image and t.identity
    resized, t = fit(load(_bytes(_photo(200, 100), "PNG")), max_side=100)
    assert resized.size == (96, 48) and resized.format == "PNG"
    # a box covering the right half of the original maps onto the right half of the fitted image
    x0, y0, x1, y1 = t.box((100, 0, 200, 100))
    assert abs(x0 - 48) <= 1 and x1 == 96 and y0 == 0 and y1 == 48



def test_fit_box_stays_inside_the_source_for_every_size_up_to_2000():
    """Every width 1..2000 against heights across the range: the scaled size is rounded, and mapping it back
    must never ask for a box past the source edge (2.1% of LAION rows were lost to PIL's 'box can't exceed
    original image size')."""
    from x2i.core.imageio import ImageError, fit_size, source_box

    for w in range(1, 2001):
        for h in (1, 16, 17, 100, 333, 400, 558, 559, 1023, 1024, 1500, 1999, 2000):
            try:
                t = fit_size(w, h, 448, 16)
            except ImageError:
                continue
            for x0, y0 in ((0, 0), (7, 3)):
                bx0, by0, bx1, by1 = source_box((x0, y0, x0 + w, y0 + h), t)
                assert x0 <= bx0 < bx1 <= x0 + w and y0 <= by0 < by1 <= y0 + h, (w, h, t)


def test_fit_pil_resizes_the_sizes_that_used_to_fail():
    """Real resizes at sizes whose rounding overshoots (e.g. 558 px at max_side 448: 448/0.8025 = 558.25)."""
    from x2i.core.imageio import fit_pil, fit_size

    big = Image.new("RGB", (2010, 1510), (90, 120, 30))
    overshooting = [w for w in range(449, 2001) if round(w * (448 / w)) / (448 / w) > w][:40] + [558, 1117, 1999]
    assert len(overshooting) > 10
    for w in overshooting:
        h = w * 3 // 4  # the width is the longer side: it sets the scale
        for region in ((0, 0, w, h), (9, 5, 9 + w, 5 + h)):
            out, t = fit_pil(big, 448, 16, region=region)
            assert out.size == (t.width, t.height) == (fit_size(w, h, 448).width, fit_size(w, h, 448).height)
