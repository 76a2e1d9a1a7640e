"""Model-free curation steps: NaN is never compared, placeholders survive caption cleanup, sizes use the source."""
from __future__ import annotations

import pytest

from x2i.builders import make_steps
from x2i.core.config import ConfigError
from x2i.curation.filters import CaptionCleanParams, CaptionCleanStep, threshold_reason
from x2i.core.errors import X2IError
from x2i.core.imageio import encode
from x2i.core.prompt import check
from x2i.core.sample import Sample
from x2i.engine.steps import Context


def sample(instruction="A red circle.", meta=None, size=(64, 48), inputs=0) -> Sample:
    from PIL import Image

    im = encode(Image.new("RGB", size, (10, 20, 30)), "PNG")
    return Sample("t", instruction, im, [im] * inputs, source="s", source_key=instruction, meta=meta or {})


def run(configs, items):
    ctx = Context()
    out = items
    for step in make_steps(configs):
        out = list(step.run(out, ctx))
    return out, ctx


@pytest.mark.parametrize("value,expected", [
    (float("nan"), "x_nan"), (None, "x_missing"), ("0.3", "x_invalid"), (0.5, "x_above_max"), (0.7, "x_above_max"),
    (0.49, None), (True, "x_invalid"),
])
def test_threshold_reason_never_compares_nan(value, expected):
    got = threshold_reason("x", value, max=0.5)
    assert (got[0] if got else None) == expected


def test_meta_threshold_step(tmp_path):
    items = [sample(meta={"pwatermark": 0.1}), sample(meta={"pwatermark": 0.9}), sample(meta={}),
             sample(meta={"pwatermark": None, "nan_fields": ["pwatermark"]}),
             sample(meta={"ultra": {"clip_sim_dir": 0.3}})]
    kept, ctx = run([{"name": "meta_threshold", "field": "pwatermark", "max": 0.5}], items)
    assert len(kept) == 1 and ctx.reject_counts == {"pwatermark_above_max": 1, "pwatermark_missing": 2,
                                                   "pwatermark_nan": 1}
    kept, ctx = run([{"name": "meta_threshold", "field": "pwatermark", "max": 0.5, "missing": "keep"}], items)
    assert len(kept) == 3 and ctx.reject_counts == {"pwatermark_above_max": 1, "pwatermark_nan": 1}
    kept, _ = run([{"name": "meta_threshold", "field": "ultra.clip_sim_dir", "min": 0.2, "missing": "keep"}], items)
    assert len(kept) == 5
    kept, ctx = run([{"name": "meta_threshold", "field": "x", "max": None}], items)  # both bounds null: off
    assert len(kept) == len(items) and not ctx.reject_counts
    with pytest.raises(X2IError):
        make_steps([{"name": "meta_threshold", "field": "x", "missing": "drop"}])
    with pytest.raises(ConfigError):
        make_steps([{"name": "meta_threshold", "field": "x", "max": 1, "typo": 2}])


@pytest.mark.parametrize("raw,clean", [
    ("A <b>red</b> circle &amp; a square", "A red circle & a square"),
    ("Buy now https://shop.example/x?id=3 a lamp", "Buy now a lamp"),
    ("  spaced\n\tout   text ", "spaced out text"),
    ("The cat is in <img><|image_1|></img>. A <i>cat</i> sleeps.", "The cat is in <img><|image_1|></img>. A cat sleeps."),
    ("<img><|image_1|></img> Make the <b>umbrella</b> red.", "<img><|image_1|></img> Make the umbrella red."),
])
def test_caption_clean_keeps_placeholders(raw, clean):
    n = raw.count("<|image_")
    out = CaptionCleanStep(CaptionCleanParams()).process(sample(raw, inputs=n), Context())
    assert out.instruction == clean
    check(out.instruction, n)
    assert out.meta["instruction_raw"] == raw


@pytest.mark.parametrize("raw,reason", [("IMG_2041.JPG 3000x2000", "caption_not_text"), ("<br>", "caption_too_short"),
                                        ("word " * 500, "caption_too_long")])
def test_caption_clean_rejects(raw, reason):
    kept, ctx = run([{"name": "caption_clean", "min_words": 1, "max_chars": 1000}], [sample(raw)])
    assert kept == [] and ctx.reject_counts == {reason: 1}


def test_size_filter_uses_the_source_size():
    items = [sample(meta={"source_size": [1000, 300]}), sample(meta={"source_size": [500, 400]}),
             sample(size=(600, 600))]
    kept, ctx = run([{"name": "size_filter", "min_side": 384, "max_aspect": 3.0}], items)
    assert [s.meta.get("source_size") for s in kept] == [[500, 400], None]
    assert ctx.reject_counts == {"too_small": 1}
    kept, ctx = run([{"name": "size_filter", "max_aspect": 3.0}], [sample(meta={"source_size": [1000, 300]})])
    assert ctx.reject_counts == {"aspect_too_extreme": 1}
