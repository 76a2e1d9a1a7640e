"""The README's quick-start install has no extras: every shipped recipe either builds rows with no
undeclared-error rejects, or exits 2 in one line naming the extra to install. Never "0 rows, exit 0"."""
import json

import pytest

from blocked_imports import OPTIONAL_MODULES, run_without
from x2i.engine.recipe import task_names


@pytest.mark.parametrize("task", task_names())
def test_every_recipe_on_a_core_install_builds_or_names_the_extra(task, tmp_path):
    out = tmp_path / "out"
    result = run_without(OPTIONAL_MODULES, "build", "--task", task, "--out", out, "--limit", "24", "-q",
                         cwd=tmp_path)
    assert "Traceback" not in result.stderr, result.stderr
    if result.returncode == 0:
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["rows"] > 0
        assert manifest["unexpected_errors"] == 0
        assert not [r for r in manifest["rejects"] if r.startswith("error_") or r == "unexpected_error"]
        return
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    if task == "omnigen-import":  # no embedded sample: the format needs a JSONL path
        assert "needs a path" in lines[0]
    else:
        assert "pip install 'x2i[" in lines[0], lines[0]
    assert not out.exists() or not list(out.rglob("*.parquet"))  # refused before any work
