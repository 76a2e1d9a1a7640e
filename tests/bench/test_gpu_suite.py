"""The GPU suite's smoke mode runs every section end to end on CPU and reports numbers for each: a section that
rots (a renamed option, a changed JSON key) fails here before it wastes the GPU run."""
from __future__ import annotations

import json
import numbers
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _numbers(obj) -> list[float]:
    if isinstance(obj, bool):
        return []
    if isinstance(obj, numbers.Number):
        return [obj]
    if isinstance(obj, dict):
        return [n for v in obj.values() for n in _numbers(v)]
    if isinstance(obj, list):
        return [n for v in obj for n in _numbers(v)]
    return []


@pytest.mark.slow
def test_gpu_suite_smoke(tmp_path):
    out = tmp_path / "suite"
    env = {**os.environ, "PYTHON": sys.executable, "TMPDIR": str(tmp_path)}
    proc = subprocess.run(["bash", str(REPO / "bench" / "gpu_suite.sh"), "--smoke", str(out)], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "gpu_suite.json").read_text())
    assert (out / "gpu_suite.md").read_text().startswith("# GPU suite")
    by_name = {e["section"]: e for e in report["sections"]}
    learning = [name for name in by_name if name.startswith("learning:")]
    assert learning, by_name.keys()
    for name in ["preflight", "inference", "train_throughput", "annotators", "curation", *learning]:
        entry = by_name[name]
        assert "error" not in entry, (name, entry.get("error"), entry.get("log_tail"))
        assert _numbers(entry["result"]), (name, entry["result"])

    inference = by_name["inference"]["result"]
    for case in ("text_to_image", "one_input_image"):
        assert inference["cases"][case]["ours_s"] > 0
        # diffusers is installed wherever the tests run: the comparison must have happened.
        assert inference["cases"][case]["ratio"] > 0, inference.get("diffusers_error")
    assert inference["check_text_to_image_guidance1_max_abs_diff"] < 1e-3
    assert {r["checkpointing"] for r in by_name["train_throughput"]["result"]} == {"off", "on"}
    assert all(r["tokens_per_s"] > 0 for r in by_name["train_throughput"]["result"])
    rates = by_name["annotators"]["result"]["images_per_s"]
    assert rates and all(v > 0 for cells in rates.values() for v in cells.values())
    for step in ("aesthetic", "clip_score"):
        assert by_name["curation"]["result"][step]["batched_images_per_s"] > 0
    assert by_name["curation"]["result"]["dedup_hashing_images_per_s"] > 0
    for name in learning:
        acc = by_name[name]["result"]["accuracy"]
        assert acc["n"] > 0 and 0 <= acc["color"] <= 1
    assert report["suite"]["total_s"] < report["suite"]["budget_s"]


def test_learning_proofs_follow_bench_learning_help(tmp_path):
    """A proof added to bench_learning.py's --proof choices joins the suite without editing it."""
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import gpu_suite
    finally:
        sys.path.remove(str(REPO / "bench"))
    fake = tmp_path / "bench_learning.py"
    fake.write_text("import argparse\nap = argparse.ArgumentParser()\n"
                    "ap.add_argument('--proof', choices=['colour', 'reference', 'edit'], default='colour')\n"
                    "ap.parse_args()\n")
    assert gpu_suite.learning_proofs(sys.executable, fake)[0] == ["colour", "reference", "edit"]
    fake.write_text("import argparse\nargparse.ArgumentParser().parse_args()\n")
    assert gpu_suite.learning_proofs(sys.executable, fake)[0] == [None]
    # today's script: the one proof, run as learning:default
    proofs, _ = gpu_suite.learning_proofs(sys.executable)
    names = [s.name for s in gpu_suite.sections(False, tmp_path, proofs)]
    assert names[:5] == ["preflight", "inference", "train_throughput", "annotators", "curation"]
    assert names[5:] == [f"learning:{p or 'default'}" for p in proofs]
