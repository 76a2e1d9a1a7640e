"""A core install (no torch & co.): commands that need an extra say which one in one line, exit 2."""
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from blocked_imports import run_without
from x2i.core.extras import EXTRAS, MissingExtra, extra_for, require

@pytest.mark.parametrize("blocked,args,expected", [
    (["torch"], ["train", "--mix", "shapes", "--steps", "1"],
     "x2i train needs the 'model' extra: pip install 'x2i[model]'"),
    (["torch"], ["generate", "-p", "a cat", "-o", "cat.png"], "x2i generate needs the 'model' extra"),
    (["huggingface_hub"], ["annotators", "fetch", "sam", "--to", "w"],
     "x2i annotators fetch needs the 'annotators' extra: pip install 'x2i[annotators]'"),
])
def test_missing_extra_is_one_line_exit_2(tmp_path, blocked, args, expected):
    result = run_without(blocked, *args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("x2i: error: " + expected), result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()  # nothing created before the check


def test_core_commands_work_without_torch(tmp_path):
    result = run_without(["torch", "transformers", "diffusers"], "recipes", cwd=tmp_path)
    assert result.returncode == 0 and "subject-driven" in result.stdout, result.stderr


def test_require_names_the_extra():
    assert require("json").__name__ == "json"
    with pytest.raises(MissingExtra, match=r"^x2i view needs the 'curation' extra: pip install 'x2i\[curation\]'"):
        require("x2i_no_such_module_for_test", "curation", "x2i view")
    with pytest.raises(ModuleNotFoundError):  # a module no extra provides is a bug, not a user error
        require("x2i_no_such_module_for_test")
    assert extra_for("open_clip") == "curation" and extra_for("torch") == "model"
    assert extra_for("torch.nn", prefer="annotators") == "annotators" and extra_for("numpy") is None


def test_extras_table_matches_pyproject():
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    declared = pyproject["project"]["optional-dependencies"]
    import_name = {"open_clip_torch": "open_clip"}
    for extra, modules in EXTRAS.items():
        packages = {d.split(">")[0].split("=")[0].split("[")[0].strip() for d in declared[extra]}
        assert {import_name.get(p, p) for p in packages} == set(modules), extra
