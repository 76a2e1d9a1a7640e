"""Training mixes: ratios as configured, task ratios with families and `other`, and every bad input refused
before training starts."""
from __future__ import annotations

import json
import shutil

import pytest

from x2i.core.config import ConfigError
from x2i.core.errors import X2IError
from x2i.model.training.mix import load_mix

from train_helpers import write_dataset, write_mix


def test_dataset_ratios_split_by_rows_inside_a_dataset(datasets, tmp_path):
    mix = load_mix(write_mix(tmp_path / "m.yaml", [{"path": str(datasets["a"]), "ratio": 3},
                                                    {"path": str(datasets["b"] / "manifest.json"), "ratio": 1}]))
    w = mix.target_ratios()
    # a: 0.75 shared 60:30 between its tasks; b: 0.25.
    assert w == pytest.approx({"a:text_to_image": 0.5, "a:image_edit": 0.25, "b:subject_driven": 0.25})
    assert sum(s.rows for s in mix.streams) == 130 and not mix.notes


def test_task_ratios_with_families_other_and_missing_keys(tmp_path, datasets):
    c = write_dataset(tmp_path / "c", {"control/canny": 10, "control/depth": 30, "vision/pose": 20}, name="c")
    path = write_mix(tmp_path / "m.yaml", [{"path": str(datasets["a"])}, {"path": str(datasets["b"])},
                                            {"path": str(c)}],
                     task_ratios={"text_to_image": 0.5, "subject_driven": 0.2, "control": 0.1, "image_edit": 0.1,
                                  "other": 0.1, "few_shot": 0.5})
    mix = load_mix(path)
    w = mix.target_ratios()
    total = 1.0  # few_shot has no data: renormalised over the 1.0 that does
    assert w["a:text_to_image"] == pytest.approx(0.5 / total)
    assert w["b:subject_driven"] == pytest.approx(0.2)
    assert w["a:image_edit"] == pytest.approx(0.1)
    # control/* share the control key by rows (10:30), vision/pose falls under `other`.
    assert w["c:control/canny"] == pytest.approx(0.025) and w["c:control/depth"] == pytest.approx(0.075)
    assert w["c:vision/pose"] == pytest.approx(0.1)
    assert any("few_shot" in n for n in mix.notes)
    # Without `other`, unnamed tasks are reported and not sampled.
    mix = load_mix(write_mix(tmp_path / "m2.yaml", [{"path": str(c)}], task_ratios={"control": 1.0}))
    assert set(mix.target_ratios()) == {"c:control/canny", "c:control/depth"}
    assert any("vision/pose" in n for n in mix.notes)


def test_missing_manifest_and_shard_are_named(tmp_path, datasets):
    with pytest.raises(X2IError, match="nowhere/manifest.json not found"):
        load_mix(write_mix(tmp_path / "m.yaml", [{"path": str(tmp_path / "nowhere")}]))
    copy = tmp_path / "copy"
    shutil.copytree(datasets["b"], copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / manifest["shards"][0]["path"]).unlink()
    with pytest.raises(X2IError, match=f"shard .*{manifest['shards'][0]['path']} listed in .* not found"):
        load_mix(write_mix(tmp_path / "m.yaml", [{"path": str(copy)}]))


def test_a_changed_shard_is_refused(tmp_path, datasets):
    copy = tmp_path / "copy"
    shutil.copytree(datasets["b"], copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    shard = copy / manifest["shards"][0]["path"]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different bytes: only the checksum can tell
    shard.write_bytes(bytes(data))
    with pytest.raises(X2IError, match="does not match its manifest.*sha256.*refusing"):
        load_mix(write_mix(tmp_path / "m.yaml", [{"path": str(copy)}]))
    # verify: size lets it through (the user's explicit choice) ...
    load_mix(write_mix(tmp_path / "m.yaml", [{"path": str(copy)}], verify="size"))
    # ... but not a shard whose size differs.
    shard.write_bytes(bytes(data) + b"x")
    with pytest.raises(X2IError, match="bytes, its manifest .* says"):
        load_mix(write_mix(tmp_path / "m.yaml", [{"path": str(copy)}], verify="size"))


def test_bad_mix_files(tmp_path, datasets):
    with pytest.raises(ConfigError, match="unknown key"):
        load_mix(write_mix(tmp_path / "m.yaml", [{"path": str(datasets["a"]), "weight": 1}]))
    with pytest.raises(ConfigError, match="ratio must be > 0"):
        load_mix(write_mix(tmp_path / "m.yaml", [{"path": str(datasets["a"]), "ratio": 0}]))
    with pytest.raises(X2IError, match="no rows of task"):
        load_mix(write_mix(tmp_path / "m.yaml", [{"path": str(datasets["a"]), "tasks": ["subject_driven"]}]))
    with pytest.raises(X2IError, match="no mix file"):
        load_mix("no-such-mix")
