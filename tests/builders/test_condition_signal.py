"""Conditions that carry signal (calibrated emptiness per annotator) and conditions that share their output's
aspect ratio exactly."""
from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image, ImageDraw

from ._builder_helpers import recipe, run_builder
from x2i.builders.vision_control import (SIGNAL, AnnotatorParams, SignalTest, aligned_fit, condition_size, signal,
                                         signal_test)
from x2i.core.errors import X2IError
from x2i.core.imageio import ImageError, fit_size


def _lines(size=512, value=255, width=1) -> Image.Image:
    """A small triangle outline (the sparsest real drawing of the shapes world) on black, drawn to scale."""
    im = Image.new("L", (size, size), 0)
    f = size / 512
    ImageDraw.Draw(im).polygon([(100 * f, 100 * f), (180 * f, 110 * f), (130 * f, 170 * f)], outline=value,
                               width=width)
    return im


def test_edge_density_is_line_length_in_image_sides():
    small = signal(_lines(), SIGNAL["canny"])
    assert 0.3 < small < 0.6  # ~220 px of outline on a 512 px image: ~0.4 sides, above canny's 0.1
    assert small >= SIGNAL["canny"].minimum
    # the same drawing at twice the size measures about the same (a share of pixels would halve)
    assert signal(_lines(1024), SIGNAL["canny"]) == pytest.approx(small, rel=0.05)
    assert signal(_lines(256), SIGNAL["canny"]) == pytest.approx(small, rel=0.05)


def test_faint_lineart_texture_is_empty():
    """Lineart-standard answers background texture with faint values; only lines above level 64 count."""
    rng = np.random.default_rng(0)
    faint = Image.fromarray((rng.random((512, 512)) * 60).astype(np.uint8), "L")  # 98% of pixels non-black
    test = SIGNAL["lineart_standard"]
    assert signal(faint, test) == 0.0 < test.minimum
    assert signal(Image.fromarray(np.maximum(np.asarray(faint), np.asarray(_lines(width=2)))), test) > test.minimum


def test_depth_range_and_segmentation_measures():
    depth = SignalTest("depth_range", 0, 0.1)
    flat = np.full((64, 64), 128, np.uint8)
    flat[0, :3] = [0, 255, 255]  # min-max normalisation: two outliers span 0..255, the rest is one level
    assert signal(Image.fromarray(flat), depth) == 0.0
    ramp = np.tile(np.linspace(0, 255, 64).astype(np.uint8), (64, 1))
    assert signal(Image.fromarray(ramp), depth) > 0.9
    seg = SignalTest("non_dominant", 0, 0.005)
    one = np.zeros((64, 64, 3), np.uint8) + [120, 120, 120]
    assert signal(Image.fromarray(one.astype(np.uint8)), seg) == 0.0
    two = one.copy()
    two[:16] = [4, 200, 3]
    assert signal(Image.fromarray(two.astype(np.uint8)), seg) == pytest.approx(0.25)


def test_per_annotator_tests_overrides_and_legacy_rule():
    p = AnnotatorParams(annotators=["canny", "lineart_standard", "depth_midas"], min_signal={"canny": 0.5})
    assert signal_test("canny", "edge", p) == SignalTest("edge_density", 127, 0.5)
    assert signal_test("lineart_standard", "edge", p) == SIGNAL["lineart_standard"]
    assert signal_test("depth_midas", "depth", p).measure == "depth_range"
    legacy = AnnotatorParams(min_coverage=0.0005)
    assert signal_test("canny", "edge", legacy) == SignalTest("lit_share", 0, 0.0005)
    assert signal_test("depth_midas", "depth", legacy) is None
    assert signal_test("canny", "edge", AnnotatorParams(min_coverage=0.0)) is None
    with pytest.raises(X2IError, match="min_signal"):
        AnnotatorParams(annotators=["canny"], min_signal={"hed": 1.0})


def test_embedded_lineart_that_misses_every_shape_is_rejected_with_its_measure():
    """Scenes 1000003 and 1000007: low-contrast shapes lineart-standard does not draw (edge density 0 sides at
    level 64), while Canny outlines them; the old non-black share caught only 1000007 (1000003's texture is lit)."""
    samples, ctx = run_builder(recipe("vision", annotators=["canny", "lineart_standard"]), limit=14)
    rejected = {r.source_key: r for r in ctx.rejects if r.reason == "empty_condition"}
    assert set(rejected) == {"1000003", "1000007"}
    assert all(r.task == "vision/lineart_standard" and r.detail.startswith("edge_density 0 < 0.08 (level 64)")
               for r in rejected.values())
    kept = [s for s in samples if s.task == "vision/canny"]
    assert len(kept) == 14 and all(s.meta["condition_signal"]["value"] >= 0.1 for s in kept)
    assert all(s.meta["condition_signal"]["measure"] == "edge_density" for s in samples)
    _, legacy = run_builder(recipe("vision", annotators=["lineart_standard"], min_coverage=0.0005), limit=14)
    assert [r.source_key for r in legacy.rejects] == ["1000007"]


def _sizes(n: int = 600):
    rnd = random.Random(7)
    sizes = [(600, 400), (640, 427), (451, 300), (3000, 2000), (1024, 77), (4000, 64), (77, 1024), (513, 512)]
    for _ in range(n):
        w = rnd.randint(64, 4000)
        sizes.append((w, max(64, min(6000, int(w / rnd.uniform(0.25, 4))))))
    return sizes


@pytest.mark.parametrize("max_side,max_input_side", [(1024, 512), (512, 256), (1024, 384)])
def test_condition_shares_the_output_aspect_over_many_sizes(max_side, max_input_side):
    worst_old = 0.0
    for w, h in _sizes():
        try:
            plain = fit_size(w, h, max_side, 16)
        except ImageError:  # too thin to fit: refused the same way (a counted image_too_small)
            with pytest.raises(ImageError, match="smaller than 16 px"):
                aligned_fit(w, h, max_side, max_input_side, 16)
            continue
        t, (cw, ch) = aligned_fit(w, h, max_side, max_input_side, 16)
        assert t.width % 16 == t.height % 16 == cw % 16 == ch % 16 == 0
        assert max(cw, ch) <= max_input_side and t.width <= plain.width and t.height <= plain.height
        # one scale factor: the aspect ratios agree within one condition pixel's rounding (here: exactly)
        assert abs(t.width / t.height - cw / ch) <= 0.5 / ch * (cw / ch) + 1e-12
        assert t.width * ch == t.height * cw
        # the crop stays inside the scaled image
        sw, sh = (w, h) if t.scale == 1.0 else (round(w * t.scale), round(h * t.scale))
        assert 0 <= t.crop_left and t.crop_left + t.width <= sw and 0 <= t.crop_top and t.crop_top + t.height <= sh
        ow, oh = condition_size(plain, max_input_side, 16)
        worst_old = max(worst_old, abs(plain.width / plain.height - ow / oh))
    assert worst_old > 0.02  # what independent rounding did (592x400 -> 512x352: 1.48 vs 1.45)


def test_built_photo_and_condition_share_one_scale():
    samples, _ = run_builder(recipe("control", annotators=["canny"]), limit=205)
    photos = [s for s in samples if int(s.source_key) >= 9_000_000]
    assert len(photos) == 5
    for s in photos:
        (w, h), (cw, ch) = s.output_image.size, s.input_images[0].size
        assert w * ch == h * cw and max(cw, ch) <= 512, (w, h, cw, ch)
    coffee = next(s for s in photos if "espresso" in s.meta["caption"])
    assert coffee.output_image.size == (576, 384) and coffee.input_images[0].size == (480, 320)
