"""The QA notebooks: stripped in git, parameterised, and executed (nbclient, the env's python3 kernel)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from x2i.core.errors import X2IError
from x2i.inspect.notebook import execute, inject_parameters, main, strip

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
ALL = sorted(NOTEBOOKS.glob("*.ipynb"))


def _outputs(nb, cell_type: str) -> list:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == cell_type]


def _pngs(nb) -> int:
    return sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)


def _text(nb) -> str:
    return "".join(o.get("text", "") for o in _outputs(nb, "stream"))


def test_there_are_two_notebooks():
    assert [p.name for p in ALL] == ["annotator_family.ipynb", "dataset_qa.ipynb"]


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_notebooks_are_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code), f"run: python -m x2i.inspect.notebook --strip {path}"
    assert "parameters" in code[0].metadata.get("tags", [])  # papermill-style parameters come first
    assert sum("parameters" in c.metadata.get("tags", []) for c in code) == 1


def test_parameters_are_appended_to_the_parameters_cell():
    nb = nbformat.read(NOTEBOOKS / "dataset_qa.ipynb", as_version=4)
    inject_parameters(nb, {"dataset": "/data/x", "per_task": 2})
    source = nb.cells[1].source
    assert "seed = 0" in source  # defaults not given stay
    assert source.rstrip().endswith("dataset = '/data/x'\nper_task = 2")
    namespace: dict = {}
    exec(source, namespace)
    assert namespace["dataset"] == "/data/x" and namespace["per_task"] == 2 and namespace["seed"] == 0
    nb.cells[1].metadata["tags"] = []
    with pytest.raises(X2IError, match="no cell tagged 'parameters'"):
        inject_parameters(nb, {"dataset": "x"})


def test_dataset_qa_notebook_on_the_shapes_build(shapes_build, tmp_path, monkeypatch):
    out = tmp_path / "qa.ipynb"
    # as a user would run it: `python -m x2i.inspect.notebook NB dataset=<path relative to here> per_task=2 -o OUT`
    monkeypatch.chdir(shapes_build.parent)
    main([str(NOTEBOOKS / "dataset_qa.ipynb"), f"dataset={shapes_build.name}", "per_task=2", "-o", str(out)])
    nb = nbformat.read(out, as_version=4)
    assert f"dataset = {str(shapes_build.resolve())!r}" in nb.cells[1].source
    manifest = json.loads((shapes_build / "manifest.json").read_text())
    assert _outputs(nb, "error") == []
    text = _text(nb)
    assert f"rows: {manifest['rows']}" in text
    for reason in manifest["rejects"]:
        assert reason in text
    # rows per task, rejects, scores, sizes, and one sample grid per task
    assert _pngs(nb) == 4 + len(manifest["tasks"])
    # the executed copy has outputs; stripping it gives back a clean notebook
    main(["--strip", str(out)])
    assert strip(out) is False  # already clean
    assert all(c.outputs == [] for c in nbformat.read(out, as_version=4).cells if c.cell_type == "code")


@pytest.mark.parametrize("family, tasks", [("vision", ["vision/canny", "vision/mask"]), ("control", ["control/canny"])])
def test_annotator_notebook(mixed_dataset, family, tasks):
    nb = execute(NOTEBOOKS / "annotator_family.ipynb", {"dataset": str(mixed_dataset), "family": family,
                                                        "per_task": 2})
    text = _text(nb)
    assert f"of family {family!r} in {len(tasks)} task(s): {', '.join(tasks)}" in text
    assert '{"name": "canny", "version":' in text  # the annotator as the rows' meta states it
    assert ("shapes-truth" in text) == (family == "vision")
    assert _pngs(nb) == 2 + len(tasks)  # rows per task, sizes, one image|condition|overlay figure per task


def test_annotator_notebook_names_the_families_when_the_family_is_missing(mixed_dataset):
    from nbclient.exceptions import CellExecutionError

    with pytest.raises(CellExecutionError, match="no tasks of family 'pose'.*families there: "):
        execute(NOTEBOOKS / "annotator_family.ipynb", {"dataset": str(mixed_dataset), "family": "pose"})
