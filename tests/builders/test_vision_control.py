"""Vision and control builders on the embedded sample: real builds, real Parquet, exact condition pixels."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from ._builder_helpers import recipe, run_builder
from x2i.engine.build import build
from x2i.builders import make_builder
from x2i.builders.vision_control import CONTROL_TEMPLATES, VISION_POSE_TEMPLATES, VISION_TEMPLATES, ConditionStep
from x2i.core.errors import X2IError
from x2i.core.imageio import load
from x2i.core.prompt import check, placeholder
from x2i.core.sample import SOURCE_TASK, Sample
from x2i.engine.shards import iter_samples
from x2i.engine.steps import Context


def test_templates_are_well_formed():
    for t in VISION_TEMPLATES + VISION_POSE_TEMPLATES + CONTROL_TEMPLATES:
        check(t.format(what="depth map", image=placeholder(1), caption="A cat."), 1)


def test_vision_build_writes_conditions_that_datasets_reads(tmp_path):
    import datasets

    manifest = build(recipe("vision", annotators=["canny", "lineart_standard"]), tmp_path / "out", limit=12,
                     progress=False)
    # every (source image, annotator) pair is a row or a counted reject
    assert manifest.tasks["vision/canny"].rows + manifest.tasks["vision/lineart_standard"].rows \
        + manifest.rejects_total == 24
    assert manifest.tasks["vision/canny"].rows >= 10
    assert manifest.rejects.get("invalid_sample", 0) == 0
    samples = list(iter_samples(tmp_path / "out"))
    for s in samples:
        check(s.instruction, 1)
        assert s.output_image.format == "PNG" and s.input_images[0].format == "JPEG"
        assert s.output_image.size == s.input_images[0].size
        assert s.meta["annotator"]["name"] == s.task.split("/")[1]
        assert s.meta["annotator"]["version"].startswith(s.task.split("/")[1] + "-1 (")
    ds = datasets.load_dataset("parquet", data_files=str(tmp_path / "out" / "data" / "vision" / "canny" / "*.parquet"),
                               split="train")
    row = ds[0]
    assert row["output_image"].mode == "L" and len(row["input_images"]) == 1
    assert json.loads(row["meta"])["annotator"]["name"] == "canny"


def test_control_condition_is_canny_of_the_output_photo():
    """Shapes scenes need no resizing, so the condition must be exactly OpenCV's Canny of the output photo."""
    import cv2

    samples, ctx = run_builder(recipe("control", annotators=["canny"]), limit=12)
    scenes = [s for s in samples if int(s.source_key) < 9_000_000]
    assert scenes and all(s.task == "control/canny" for s in samples)
    for s in scenes:
        assert s.output_image.size == s.input_images[0].size == (512, 512)
        photo = np.asarray(Image.open(io.BytesIO(s.output_image.data)).convert("RGB"))
        cond = np.asarray(Image.open(io.BytesIO(s.input_images[0].data)))
        assert np.array_equal(cond, cv2.Canny(photo, 100, 200))
        assert s.meta["caption"] in s.instruction


def test_photos_are_fitted_and_conditions_aligned():
    """A 600x400 photo is fitted to multiples of 16 with the condition the same view scaled by one factor
    (builders.vision_control.aligned_fit): the vision output (the condition) and its input share one aspect."""
    r = recipe("vision", annotators=["canny"])
    data = r.to_dict()
    data["output"]["max_input_side"] = 256
    from x2i.engine.recipe import Recipe

    samples, _ = run_builder(Recipe.from_dict(data), limit=5)
    coffee = next(s for s in samples if "espresso" in s.meta["caption"])
    assert coffee.meta["source_size"] == [600, 400]
    w, h = coffee.output_image.size
    assert (w, h) == coffee.input_images[0].size and max(w, h) <= 256 and w % 16 == 0 and h % 16 == 0
    assert abs(w / h - 600 / 400) < 0.06  # a centre crop, never a stretch
    assert coffee.meta["condition_size"] == [w, h]


def test_ids_are_deterministic_and_templates_recorded():
    a, _ = run_builder(recipe("vision", annotators=["canny"]), limit=8)
    b, _ = run_builder(recipe("vision", annotators=["canny"]), limit=8)
    assert [s.id for s in a] == [s.id for s in b] and len({s.id for s in a}) == len(a)
    assert [s.instruction for s in a] == [s.instruction for s in b]
    assert len({s.meta["template"] for s in a}) > 1
    assert all(VISION_TEMPLATES[s.meta["template"]].format(what=s.meta["condition"], image=placeholder(1))
               == s.instruction for s in a)


def test_missing_weights_are_skipped_with_one_note(tmp_path):
    manifest = build(recipe("control", annotators=["canny", "hed", "depth_midas"]), tmp_path / "o", limit=4,
                     progress=False)
    assert list(manifest.tasks) == ["control/canny"]
    (note,) = manifest.notes
    assert "hed (missing ControlNetHED.pth)" in note and "depth_midas (missing dpt_hybrid-midas-501f0c75.pt)" in note


def test_only_missing_annotators_is_a_clear_error():
    with pytest.raises(X2IError, match="no usable annotator.*ControlNetHED.pth.*x2i annotators fetch hed"):
        make_builder(recipe("vision", annotators=["hed"]))
    with pytest.raises(X2IError, match="ControlNetHED.pth"):
        make_builder(recipe("vision", annotators=["hed", "canny"], skip_missing=False))
    with pytest.raises(X2IError, match="box_mask"):
        make_builder(recipe("vision", annotators=["sam"]))


def _source(data: bytes, key: str) -> Sample:
    return Sample(SOURCE_TASK, "A thing.", load(data), source="test", source_key=key, meta={"caption": "A thing."})


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def test_bad_inputs_are_normalised_or_rejected_with_reasons():
    rng = np.random.default_rng(0)
    rgb = Image.fromarray((rng.random((96, 128, 3)) * 255).astype(np.uint8))
    inputs = {
        "gray": _png(rgb.convert("L")),
        "rgba": _png(rgb.convert("RGBA")),
        "sixteen": _png(Image.fromarray((rng.random((96, 128)) * 65535).astype(np.uint16))),
        "tiny": _png(rgb.resize((48, 48))),
        "flat": _png(Image.new("RGB", (128, 96), (90, 90, 90))),
    }
    builder = make_builder(recipe("vision", annotators=["canny"]))
    (step,) = builder.steps()
    assert isinstance(step, ConditionStep)
    ctx = Context(seed=0, strict=True)
    out = list(step.run([_source(d, k) for k, d in inputs.items()], ctx))
    assert sorted(s.source_key for s in out) == ["gray", "rgba", "sixteen"]
    assert all(s.output_image.size == (128, 96) for s in out)
    assert ctx.reject_counts == {"image_too_small": 1, "empty_condition": 1}
    # the tiny image is refused before any annotator runs; the flat one by the canny annotator
    assert {r.source_key: r.task for r in ctx.rejects} == {"tiny": SOURCE_TASK, "flat": "vision/canny"}


def test_no_person_is_a_counted_reject(tmp_path, monkeypatch):
    """OpenPose with random weights (the real CMU checkpoint layout) finds nobody: rejected, not an empty sample."""
    from x2i.annotators import random_weights

    random_weights.write("openpose", tmp_path / "w" / "lllyasviel" / "Annotators")
    monkeypatch.setenv("X2I_ANNOTATOR_DIR", str(tmp_path / "w"))
    samples, ctx = run_builder(recipe("vision", annotators=["canny", "openpose"],
                                      options={"openpose": {"detect_resolution": 128}}), limit=3)
    assert {s.task for s in samples} == {"vision/canny"} and len(samples) == 3
    assert ctx.reject_counts["no_person_found"] == 3
