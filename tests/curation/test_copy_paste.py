"""Copy-paste measure: verbatim crops score ~1, changed views score low; the step drops copies and reports the rate."""
import numpy as np
import pytest

from x2i.engine.build import build
from x2i.curation.copy_paste import copy_score, masked_score, subject_mask
from x2i.engine.recipe import Recipe, load_recipe
from x2i.inspect.stats import compute


def test_scores_on_synthetic_images():
    import cv2

    rng = np.random.default_rng(0)
    image = cv2.GaussianBlur((rng.random((240, 320, 3)) * 255).astype(np.uint8), (0, 0), 4)  # photo-like, not pixel noise
    crop = image[60:140, 100:200].copy()
    assert copy_score(crop, image) > 0.99
    assert copy_score(cv2.resize(crop, (50, 40), interpolation=cv2.INTER_AREA), image) > 0.97  # other scale
    rotated = cv2.warpAffine(crop, cv2.getRotationMatrix2D((50, 40), 35, 1.0), (100, 80))
    assert copy_score(rotated, image) < 0.9
    # a flat red square cut out onto white is judged by its silhouette: a copy where the same square is
    canvas = np.full((200, 200, 3), 180, np.uint8)
    canvas[50:90, 60:100] = (220, 40, 40)
    sub = np.full((56, 56, 3), 255, np.uint8)
    sub[8:48, 8:48] = (220, 40, 40)
    assert masked_score(sub, canvas, subject_mask(sub, (255, 255, 255)), (1.0,), 256) > 0.97
    disc = np.full((56, 56, 3), 255, np.uint8)
    cv2.circle(disc, (28, 28), 20, (220, 40, 40), -1)
    assert masked_score(disc, canvas, subject_mask(disc, (255, 255, 255)), (1.0,), 256) < 0.97


def test_plain_grit_crops_are_copies_and_the_step_drops_them(tmp_path):
    plain = tmp_path / "plain"
    build(load_recipe("subject-driven"), plain, limit=12, progress=False, strict=True)
    rate = compute(plain)["copy_paste"]["subject_driven"]
    assert rate["rows_checked"] >= 20 and rate["rate"] >= 0.8
    data = load_recipe("subject-driven").to_dict()
    data["steps"] = [{"name": "copy_paste", "threshold": 0.97}]
    manifest = build(Recipe.from_dict(data), tmp_path / "filtered", limit=12, progress=False, strict=True)
    summary = manifest.post_build["copy_paste"]
    assert manifest.rejects["copy_paste"] == summary["dropped"] == summary["copies"]
    assert summary["rows_checked"] == rate["rows_checked"] and summary["rate"] == pytest.approx(rate["rate"], abs=0.01)
