"""Every learning proof of bench/bench_learning.py runs end to end at toy size (build, train 20 steps, generate,
score) and writes the JSON the docs and the GPU suite read; the figures themselves are docs/benchmarks.md's."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="needs the model extra: pip install 'x2i[model]'")

BENCH = Path(__file__).resolve().parents[3] / "bench" / "bench_learning.py"
KEYS = {"proof", "colour_accuracy", "shape_accuracy", "chance_colour", "chance_shape", "prompts", "steps",
        "seconds"}


def proofs_in_help() -> list[str]:
    text = subprocess.run([sys.executable, str(BENCH), "--help"], capture_output=True, text=True, check=True).stdout
    return [p.strip() for p in re.search(r"--proof\s+\{([^}]*)\}", text).group(1).split(",")]


def test_help_lists_the_three_proofs():
    # bench/gpu_suite.py runs every choice it finds here.
    assert proofs_in_help() == ["text", "reference", "edit"]


@pytest.mark.slow
@pytest.mark.parametrize("proof", ["text", "reference", "edit"])
def test_proof_runs_and_writes_its_figures(proof, tmp_path):
    out = tmp_path / "r.json"
    env = {**os.environ, "X2I_CACHE": str(tmp_path / "cache")}
    subprocess.run([sys.executable, str(BENCH), "--proof", proof, "--work", str(tmp_path / "w"), "--steps", "20",
                    "--prompts", "8", "--sample-steps", "2", "--limit", "40", "--set", "tensorboard=false",
                    "--set", "codec.pca_images=64", "--json", str(out)], check=True, env=env, timeout=600)
    r = json.loads(out.read_text())
    assert KEYS <= r.keys() and r["proof"] == proof and r["prompts"] == 8 and r["steps"] == 20
    for key in ("colour_accuracy", "shape_accuracy"):
        assert 0.0 <= r[key] <= 1.0
    if proof == "reference":
        assert 0.0 <= r["swap_follow_rate"] <= 1.0
    if proof == "edit":
        assert 0.0 <= r["unchanged_error"] <= 1.0 and 0.0 <= r["codec_floor"] <= 1.0
    assert (tmp_path / "w" / "grid.png").is_file()
