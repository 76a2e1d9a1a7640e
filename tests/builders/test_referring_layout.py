"""Referring segmentation and layout against the shapes world's exact boxes and masks."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from ._builder_helpers import recipe, run_builder, shapes_scene
from x2i.builders import make_builder
from x2i.builders.layout import TEMPLATES as LAYOUT_TEMPLATES
from x2i.builders.layout import box_colors, render_layout
from x2i.builders.referring_segmentation import TEMPLATES as REF_TEMPLATES
from x2i.builders.referring_segmentation import box_mask, referent
from x2i.core.errors import X2IError
from x2i.core.prompt import check, placeholder


def _pixels(enc) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(enc.data)).convert("RGB")).astype(int)


def _shape_for_span(scene, span):
    _, spans = scene.caption()
    return next(i for start, end, i in spans if [start, end] == list(span))


def test_templates_are_well_formed():
    for t in REF_TEMPLATES:
        check(t.format(ref="the cat", image=placeholder(1), color="blue"), 1)
    for t in LAYOUT_TEMPLATES:
        check(t.format(image=placeholder(1), caption="A cat.", grounding="the cat is at [0.1, 0.2, 0.3, 0.4]"), 1)
    assert referent("A small red circle") == "the small red circle"
    assert referent("Grace Hopper") == "Grace Hopper" and referent("cap") == "the cap"


def test_referring_boxes_and_tint_match_the_shapes_world():
    samples, ctx = run_builder(recipe("referring_segmentation"), limit=20)
    checked = 0
    for s in samples:
        check(s.instruction, 1)
        scene = shapes_scene(s)
        if scene is None:
            continue
        i = _shape_for_span(scene, s.meta["span"])
        shape = scene.shapes[i]
        assert s.meta["phrase"].endswith(shape.phrase)
        assert referent(s.meta["phrase"]) in s.instruction and "blue" in s.instruction
        (box,) = s.meta["boxes_px"]
        assert np.allclose(box, scene.boxes()[i], atol=1e-3)  # GRIT boxes -> pixels -> the scene's exact box
        assert s.meta["mask_source"] == "box"
        mask = box_mask(512, 512, box)
        full = scene.masks(visible=False)[i]
        assert not (full & ~mask).any()  # the whole shape lies inside its box mask ...
        ys, xs = np.nonzero(full)
        rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
        assert abs(rows[0] - ys.min()) <= 2 and abs(rows[-1] - ys.max()) <= 2  # ... tight (star tips are thin)
        assert abs(cols[0] - xs.min()) <= 2 and abs(cols[-1] - xs.max()) <= 2
        before, after = _pixels(s.input_images[0]), _pixels(s.output_image)
        inside = np.abs(after - (before * 0.4 + np.array([0, 0, 255]) * 0.6))[mask].mean()
        outside = np.abs(after - before)[~mask].mean()
        assert inside < 4 and outside < 2  # JPEG noise only
        checked += 1
    assert checked >= 10
    assert ctx.reject_counts["entity_fills_image"] >= 1  # the background chunks (box = whole image)


def test_repeated_span_is_one_referent_with_all_its_boxes():
    """The rocket photo's caption names 'lightning towers' once, with two boxes: one sample, both tinted."""
    samples, _ = run_builder(recipe("referring_segmentation", min_confidence=0.0), limit=5)
    towers = [s for s in samples if s.meta["phrase"] == "lightning towers"]
    assert len(towers) == 1 and len(towers[0].meta["boxes"]) == 2


def test_referring_params_are_checked():
    with pytest.raises(X2IError, match="colors"):
        make_builder(recipe("referring_segmentation", colors=["mauve"]))
    with pytest.raises(X2IError, match="not a box masker"):
        make_builder(recipe("referring_segmentation", masker="canny"))


def test_missing_masker_falls_back_to_boxes_with_a_note():
    b = make_builder(recipe("referring_segmentation", masker="sam"))
    assert b.masker is None and "sam" in b.notes()[0] and "box masks" in b.notes()[0]


def test_sam_masks_stay_inside_their_boxes(tmp_path):
    """SAM (random weights, the transformers layout) through the builder: masks clipped to the box, recorded."""
    from x2i.annotators import random_weights

    random_weights.write("sam", tmp_path / "sam")
    samples, _ = run_builder(recipe("referring_segmentation", masker="sam", masker_weights=str(tmp_path / "sam")),
                             limit=8)
    assert samples
    for s in samples:
        assert s.meta["mask_source"] in ("sam", "box")
        if s.meta["mask_source"] == "sam":
            assert s.meta["masker"]["name"] == "sam" and len(s.meta["mask_scores"]) == len(s.meta["boxes"])
            w, h = s.output_image.size
            boxes_area = sum((b[2] - b[0]) * (b[3] - b[1]) for b in s.meta["boxes_px"]) / (w * h)
            assert s.meta["mask_area"] <= boxes_area + 1e-6


def test_layout_boxes_are_the_scene_boxes_gligen_style():
    samples, _ = run_builder(recipe("layout"), limit=20)
    checked = 0
    for s in samples:
        check(s.instruction, 1)
        g = s.meta["grounding"]
        assert len(g["boxes"]) == len(g["phrases"]) <= 30
        areas = [(b[2] - b[0]) * (b[3] - b[1]) for b in g["boxes"]]
        assert areas == sorted(areas, reverse=True) and min(areas) >= 0.01
        assert all(0 <= v <= 1 for b in g["boxes"] for v in b)
        (lw, lh), (w, h) = s.input_images[0].size, s.output_image.size
        assert s.input_images[0].format == "PNG" and max(lw, lh) <= 512 and abs(lw / lh - w / h) < 0.05
        scene = shapes_scene(s)
        if scene is None:
            continue
        expected = {}
        for start, end, i in scene.caption()[1]:
            x0, y0, x1, y1 = scene.boxes()[i]
            expected[scene.caption()[0][start:end]] = [x0 / 512, y0 / 512, x1 / 512, y1 / 512]
        for phrase, box in zip(g["phrases"], g["boxes"]):
            if phrase in expected:
                assert np.allclose(box, expected[phrase], atol=1e-5)
        assert set(expected) <= set(g["phrases"])  # every shape is grounded (all are >= 0.01 of the image)
        checked += 1
    assert checked >= 10


def test_layout_limits_are_counted():
    samples, ctx = run_builder(recipe("layout", max_boxes=1, min_box_area=0.05), limit=20)
    assert all(len(s.meta["grounding"]["boxes"]) == 1 for s in samples)
    assert ctx.reject_counts["box_over_limit"] > 0 and ctx.reject_counts["box_too_small"] > 0


def test_rendered_layout_outlines_each_box_in_its_colour():
    im = render_layout((200, 100), [[0.1, 0.2, 0.6, 0.9], [0.7, 0.1, 0.9, 0.5]], ["a b", "c"])
    arr = np.asarray(im)
    c0, c1 = box_colors(2)
    assert tuple(arr[60, 20]) == c0 and tuple(arr[30, 140]) == c1  # left edges (x0 * 200), below the labels
    assert tuple(arr[60, 60]) == (0, 0, 0)  # inside the box: background
