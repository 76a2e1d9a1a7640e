"""Few-shot composition: numbering, image order, the input cap, determinism across executors."""
from __future__ import annotations

import pytest
from PIL import Image

from ._builder_helpers import recipe, run_builder
from x2i.engine.build import build
from x2i.builders import make_builder
from x2i.engine.registry import BUILDERS
from x2i.builders.few_shot import TEMPLATES, compose
from x2i.core.errors import X2IError
from x2i.core.imageio import encode
from x2i.core.prompt import check, image_ids, placeholder
from x2i.core.sample import Sample
from x2i.engine.shards import iter_samples


def _img(v: int):
    return encode(Image.new("RGB", (32, 32), (v, v, v)), "PNG")


def _sample(key: str, n_inputs: int, task: str = "vision/canny") -> Sample:
    text = "Combine " + " and ".join(placeholder(k) for k in range(1, n_inputs + 1)) + "."
    return Sample(task, text, _img(200), [_img(k) for k in range(n_inputs)], "t", key).with_id()


@pytest.mark.parametrize("template", range(len(TEMPLATES)))
def test_compose_numbers_images_in_order_of_appearance(template):
    ex1, ex2, q = _sample("a", 1), _sample("b", 2), _sample("c", 1)
    text, images = compose([ex1, ex2], q, template)
    assert image_ids(text) == [1, 2, 3, 4, 5, 6]
    assert images == ex1.input_images + [ex1.output_image] + ex2.input_images + [ex2.output_image] + q.input_images
    check(text, 6)


def test_builder_output_is_valid_and_capped():
    samples, ctx = run_builder(recipe("few_shot", annotators=["canny"]), limit=12)
    assert samples and all(s.task.startswith("few_shot/vision/") for s in samples)
    for s in samples:
        check(s.instruction, len(s.input_images))
        fs = s.meta["few_shot"]
        assert 1 <= len(fs["examples"]) <= 2 and len(s.input_images) <= 5
        assert len(s.input_images) == 2 * len(fs["examples"]) + 1
        assert all(e["source_key"] != s.source_key for e in fs["examples"])
        assert fs["query_task"] == s.task[len("few_shot/"):]
    assert {len(s.meta["few_shot"]["examples"]) for s in samples} == {1, 2}
    assert {s.task for s in samples} == {"few_shot/vision/canny"}


def test_cap_drops_examples_and_rejects_when_nothing_fits():
    """subject_driven multi-entity queries have 2-3 inputs: with a cap of 3 only single-input tasks fit."""
    samples, ctx = run_builder(recipe("few_shot", task="subject_driven", task_params={}, max_input_images=3,
                                      annotators=None), limit=10)
    assert all(len(s.input_images) <= 3 for s in samples)
    assert ctx.reject_counts["few_shot_too_many_images"] > 0


def test_same_result_in_process_and_with_two_worker_processes(tmp_path):
    """Pools are per partition, so a 2-process build (the CLI, as a user runs it) equals an in-process one."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    build(recipe("few_shot", task="layout", task_params={}), tmp_path / "one", limit=60, progress=False)
    x2i = Path(sys.executable).with_name("x2i")
    subprocess.run([str(x2i), "build", "--task", "few-shot", "--set", "params.task=layout", "--set",
                    "params.task_params={}", "-n", "60", "-w", "2", "-q", "-o", str(tmp_path / "two")],
                   check=True, env=dict(os.environ), capture_output=True)
    a = sorted((s.id, s.instruction) for s in iter_samples(tmp_path / "one"))
    b = sorted((s.id, s.instruction) for s in iter_samples(tmp_path / "two"))
    assert a == b and len(a) > 40


def test_annotators_shortcut_and_bad_params():
    b = make_builder(recipe("few_shot", annotators=["canny"]))
    assert [a.name for a in b.base.annotators] == ["canny"]
    with pytest.raises(X2IError, match="params.task"):
        make_builder(recipe("few_shot", task="few_shot"))
    with pytest.raises(X2IError, match="params.examples"):
        make_builder(recipe("few_shot", examples=[2, 1]))


# -- every family ------------------------------------------------------------------------------------------------
FAMILIES = {  # base builder -> (source format, its params, source rows read)
    "vision": ("grit", {"annotators": ["canny"]}, 12),
    "control": ("grit", {"annotators": ["canny"]}, 12),
    "image_edit": ("magicbrush", {}, 16),
    "subject_driven": ("grit", {}, 12),
    "referring_segmentation": ("grit", {}, 8),
    "layout": ("grit", {}, 12),
}


def family_recipe(task: str, seed: int = 0, **params):
    from x2i.engine.recipe import Recipe, load_recipe

    fmt, task_params, _ = FAMILIES[task]
    data = load_recipe("few_shot").to_dict()
    data["seed"] = seed
    data["source"]["format"] = fmt
    data["params"].update(task=task, task_params=task_params, **params)
    return Recipe.from_dict(data)


def base_recipe(task: str, seed: int = 0):
    from x2i.engine.recipe import Recipe

    r = family_recipe(task, seed).to_dict()
    r.update(builder=task, params=FAMILIES[task][1], steps=[])
    return Recipe.from_dict(r)


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, x2i_cache):
    import os

    os.environ["X2I_CACHE"] = str(x2i_cache)  # module scope: the function-scoped monkeypatch is not there yet
    task = request.param
    limit = FAMILIES[task][2]
    shots, ctx = run_builder(family_recipe(task), limit=limit)
    base, _ = run_builder(base_recipe(task), limit=limit)
    return task, shots, ctx, {s.id: s for s in base}


def test_family_rows_are_k_examples_then_the_query(family):
    from x2i.builders.few_shot import source_item
    from x2i.core.prompt import renumber

    task, shots, ctx, base = family
    assert len(shots) >= 4, (task, dict(ctx.reject_counts))
    for s in shots:
        fs = s.meta["few_shot"]
        query, examples = base[fs["query_id"]], [base[e["id"]] for e in fs["examples"]]
        assert s.task == f"few_shot/{query.task}" and query.task.split("/")[0] == task
        assert 1 <= len(examples) <= 2 and len(s.input_images) <= 5
        # images: example 1's inputs and output, example 2's ..., then the query's inputs; the output is the query's
        expected = [im for e in examples for im in [*e.input_images, e.output_image]] + query.input_images
        assert [im.data for im in s.input_images] == [im.data for im in expected]
        assert s.output_image.data == query.output_image.data
        check(s.instruction, len(s.input_images))
        assert image_ids(s.instruction) == list(range(1, len(s.input_images) + 1))
        offset = len(s.input_images) - len(query.input_images)
        assert renumber(query.instruction, offset)[1:] in s.instruction  # the query comes last, renumbered
        # never the query itself, nor anything made from the same source item
        for e in examples:
            assert e.id != query.id and source_item(e) != source_item(query)
            assert not {im.data for im in [*e.input_images, e.output_image]} & {
                im.data for im in [*query.input_images, query.output_image]}
            if task == "image_edit":
                assert e.meta["img_id"] != query.meta["img_id"]  # another MagicBrush session


def test_family_is_deterministic_with_the_seed(family):
    task, shots, _, _ = family
    again, _ = run_builder(family_recipe(task), limit=FAMILIES[task][2])
    assert [(s.id, s.instruction) for s in again] == [(s.id, s.instruction) for s in shots]
    other, _ = run_builder(family_recipe(task, seed=1), limit=FAMILIES[task][2])
    picks = lambda rows: {(s.source_key, s.meta["few_shot"]["query_task"]): [e["source_key"] for e in  # noqa: E731
                          s.meta["few_shot"]["examples"]] for s in rows}
    assert picks(other) != picks(shots)  # the seed drives the choice


def test_source_items_of_edit_keys():
    from x2i.builders.few_shot import source_item

    def item(key, **meta):
        return source_item(Sample("image_edit", "x", _img(1), [_img(2)], "s", key, meta))[1]

    assert item("327726#2", img_id="327726") == item("327726#chain1-3", img_id="327726") == "img_id:327726"
    assert item("train#4") == item("train#4#inverse") == "train#4" != item("train#5")
    assert item("multi#0#2") == item("multi#0#2#inverse") == item("multi#0#chain1-2") == item("multi#0#1") \
        == "multi#0"
    assert item("1000003") == "1000003"


def test_any_registered_builder_but_text_to_image(monkeypatch):
    with pytest.raises(X2IError, match="not a few-shot base task.*image_edit"):
        make_builder(recipe("few_shot", task="text_to_image", task_params={}))
    with pytest.raises(X2IError, match="add --format magicbrush"):
        make_builder(recipe("few_shot", task="image_edit", task_params={}))
    with pytest.raises(X2IError, match="applies to annotator tasks"):
        make_builder(recipe("few_shot", task="layout", annotators=["canny"]))
    # a builder registered later (builders/in_context.py) is taken by its registry name, nothing else to change
    monkeypatch.setitem(BUILDERS._items, "in_context", BUILDERS.get("subject_driven"))
    b = make_builder(recipe("few_shot", task="in_context", task_params={}))
    assert type(b.base).__name__ == "SubjectDrivenBuilder" and b.base.recipe.builder == "in_context"
