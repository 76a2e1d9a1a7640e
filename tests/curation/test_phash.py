"""x2i's pHash is imagehash's, bit for bit, and a build hashes the fitted pixels it already holds."""
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


def test_bit_identical_to_imagehash_on_photos_noise_and_fitted_pixels():
    imagehash = pytest.importorskip("imagehash")
    for im in images():
        for candidate in (im, fit_pil(im, 224)[0] if min(im.size) * 224 / max(im.size) >= 16 else im):
            assert phash(candidate) == str(imagehash.phash(candidate)), candidate.size


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
