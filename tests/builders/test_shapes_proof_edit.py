"""The edit learning-proof set (builders/shapes_proof.py, bench/bench_learning.py --proof edit): where the input
image sits in the instruction, the shapes the edit leaves alone in meta, and the checker's test that they were
kept (x2i.model.testing.shapes_check.shapes_kept)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from x2i.builders.shapes_proof import ShapesProofParams, ShapesProofStep, edit_instruction, proof_sample
from x2i.core import prompt as prompt_format
from x2i.model.testing.shapes_check import shapes_kept
from x2i.shapes.world import COLORS


def test_image_last_instruction_keeps_the_edit_and_one_placeholder():
    text = "Make the red circle blue."
    last = edit_instruction(text, "last")
    assert last == "Make the red circle blue in " + prompt_format.placeholder(1) + "."
    assert edit_instruction(text, "first") == prompt_format.placeholder(1) + " " + text
    for form in (last, edit_instruction(text, "first")):
        assert prompt_format.problems(form, 1) == []
    with pytest.raises(ValueError):
        edit_instruction(text, "middle")
    with pytest.raises(ValueError):
        ShapesProofStep(ShapesProofParams(proof="edit", edit_image="middle"))


@pytest.mark.parametrize("where", ["first", "last"])
def test_only_the_placement_of_the_image_changes(where):
    # The two forms draw the same scenes and edits: the A/B of the placement changes nothing else.
    a = proof_sample("edit", 3, ShapesProofParams(proof="edit", edit_image="last"))
    b = proof_sample("edit", 3, ShapesProofParams(proof="edit", edit_image=where))
    strip = lambda t: t.replace(prompt_format.placeholder(1), "").replace(" in .", ".").strip()  # noqa: E731
    assert strip(a[0]) == strip(b[0])
    assert np.array_equal(np.asarray(a[1][0]), np.asarray(b[1][0])) and np.array_equal(np.asarray(a[2]),
                                                                                      np.asarray(b[2]))


def test_kept_shapes_are_in_the_meta_and_the_checker_finds_them_in_the_truth_only():
    p = ShapesProofParams(proof="edit", world_seed=5)
    found = total = 0
    for i in range(60):
        text, inputs, after, meta = proof_sample("edit", i, p)
        shapes = meta["proof"]["shapes"]
        # recolour: every shape but the recoloured one is kept; remove: every shape left is.
        assert sum(not s["kept"] for s in shapes) == (meta["proof"]["kind"] == "recolour")
        flags = shapes_kept(after, shapes)
        found, total = found + sum(flags), total + len(flags)
        assert not any(shapes_kept(Image.new("RGB", after.size, (200, 200, 200)), shapes))
        for k, s in enumerate(shapes):  # a kept shape painted in another colour is not kept
            if s["kept"]:
                other = next(c for c in COLORS if c != s["color"])
                moved = shapes[:k] + [{**s, "color": other}] + shapes[k + 1:]
                assert shapes_kept(after, moved)[sum(t["kept"] for t in shapes[:k])] is False
    assert total > 30 and found == total
