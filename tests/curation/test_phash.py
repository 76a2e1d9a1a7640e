"""x2i's pHash: imagehash's recipe on an area-averaged 32x32 grey image (within a few bits of imagehash), the
same hash from PIL pixels and arrays, robust to what near duplicates are, and a build hashes the fitted pixels
it already holds."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from x2i.core.imageio import fit_pil
from x2i.curation.phash import phash


def images() -> list[Image.Image]:
    import matplotlib.cbook as cbook
    from skimage import data

    out = [Image.fromarray(getattr(data, n)()) for n in ("astronaut", "coffee", "chelsea", "rocket")]
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        out.append(Image.open(io.BytesIO(f.read())).convert("RGB"))
    rng = np.random.default_rng(0)
    sizes = ((31, 47), (32, 32), (640, 97))
    out += [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]
    out.append(Image.new("RGB", (50, 40), (10, 200, 30)))  # flat: every coefficient ties with the median
    out += [Image.new("RGB", (64, 64), c) for c in ((0, 0, 0), (255, 255, 255))]
    # Exact symmetries: a ramp constant along one axis (half its coefficients are exact zeros), stripes, checks.
    ramp = np.tile(np.arange(64, dtype=np.uint8)[None, :] * 4, (64, 1))
    checks = ((np.indices((64, 64)).sum(0) // 8) % 2 * 255).astype(np.uint8)
    stripes = np.tile((np.arange(64) % 2 * 255).astype(np.uint8), (64, 1))
    out += [Image.fromarray(a) for a in (ramp, np.ascontiguousarray(ramp.T), checks, stripes)]
    return out


def distance(a: str, b: str) -> int:
    return (int(a, 16) ^ int(b, 16)).bit_count()


def test_close_to_imagehash_on_photos_and_exact_ties_kept():
    """The reduction differs from imagehash's LANCZOS by a fraction of a grey level: photos and their fitted
    copies land within 4 bits (0.6 on average on the package photos); flat images, ramps, stripes and checks keep
    imagehash's exact ties (identical hashes). Checks of 8 px and 1 px stripes hold no energy in the 8x8 low
    frequencies once area-averaged: every AC coefficient ties at zero, so only the DC bit is set (imagehash's
    LANCZOS rings at the borders and sets noise bits there)."""
    imagehash = pytest.importorskip("imagehash")
    photos = images()[:5]
    gaps = []
    for im in photos:
        for candidate in (im, fit_pil(im, 224)[0], fit_pil(im, 512)[0]):
            gaps.append(distance(phash(candidate), str(imagehash.phash(candidate))))
    assert max(gaps) <= 4 and sum(gaps) / len(gaps) <= 1.5, gaps
    *flat, checks, stripes = images()[-7:]  # flat, black, white, two ramps; checks; stripes
    for im in flat:
        assert phash(im) == str(imagehash.phash(im)), im.size
    assert phash(checks) == phash(stripes) == "8000000000000000"


def test_pil_and_array_inputs_give_one_hash():
    for im in images():
        rgb = im.convert("RGB")
        assert phash(rgb) == phash(np.asarray(rgb))
        assert phash(rgb.convert("L")) == phash(np.asarray(rgb.convert("L")))
        assert phash(rgb.convert("RGBA")) == phash(rgb)


def test_near_duplicates_stay_near_and_different_photos_far():
    """What dedup relies on (max_distance 4): a photo re-encoded at low quality, resized or slightly brightened
    stays within 4 bits of itself; the five different photos are far apart."""
    photos = images()[:5]
    hashes = [phash(im) for im in photos]
    for im, h in zip(photos, hashes):
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=60)
        variants = [Image.open(io.BytesIO(buf.getvalue())).convert("RGB"),
                    im.resize((im.width * 2 // 3, im.height * 2 // 3), Image.Resampling.BILINEAR),
                    Image.fromarray(np.clip(np.asarray(im, dtype=np.int16) + 8, 0, 255).astype(np.uint8))]
        assert all(distance(h, phash(v)) <= 4 for v in variants), [distance(h, phash(v)) for v in variants]
    assert min(distance(a, b) for i, a in enumerate(hashes) for b in hashes[i + 1:]) > 16


def test_a_build_hashes_the_pixels_it_holds_without_decoding_again(tmp_path, monkeypatch):
    """Each source image is decoded once (by `load`); fit keeps the fitted pixels and dedup hashes those:
    `decode` (the only way back from bytes to pixels) is never called during the build."""
    import json

    from helpers_curate import cli, rows
    from x2i.core import imageio

    calls = []
    real = imageio.decode
    monkeypatch.setattr(imageio, "decode", lambda *a, **k: calls.append(1) or real(*a, **k))
    embedded = {"scenes": 8, "per_shard": 4, "size": 400, "photos": False}
    out = tmp_path / "out"
    result = cli("build", "--task", "text-to-image", "-o", str(out), "-q", "--set",
                 "source.options.embedded=" + json.dumps(embedded))
    assert result.exit_code == 0, result.output
    built = rows(out)
    assert built and all(r["phash"] for r in built)
    assert calls == []


def test_area_means_are_exact_cell_means():
    """The 32x32 reduction is the exact area-weighted mean of each cell: block means where the sides divide by 32,
    OpenCV's INTER_AREA (float) at fractional cells, on odd sizes and large ones alike."""
    import cv2

    from x2i.curation.phash import area_means

    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 256, (64, 96), dtype=np.uint8)
    want = blocks.reshape(32, 2, 32, 3).mean(axis=(1, 3))
    assert np.allclose(area_means(blocks), want, atol=1e-9)
    for shape in ((373, 512), (512, 400), (97, 131), (33, 40), (1000, 1000)):
        g = rng.integers(0, 256, shape, dtype=np.uint8)
        reference = cv2.resize(g.astype(np.float32), (32, 32), interpolation=cv2.INTER_AREA)
        assert np.abs(area_means(g) - reference).max() < 1e-3, shape
