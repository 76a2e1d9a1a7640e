"""Few-shot composition: numbering, image order, the input cap, determinism across executors."""
from __future__ import annotations

import pytest
from PIL import Image

from ._builder_helpers import recipe, run_builder
from x2i.build import build
from x2i.builders import make_builder
from x2i.builders.few_shot import TEMPLATES, compose
from x2i.errors import X2IError
from x2i.imageio import encode
from x2i.prompt import check, image_ids, placeholder
from x2i.sample import Sample
from x2i.shards import iter_samples


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
