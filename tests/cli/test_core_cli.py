"""The CLI through typer's runner: the commands a new user types."""
import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from x2i.cli.main import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "sd"
    result = run("build", "--task", "subject-driven", "--out", out, "--limit", 12, "--quiet")
    assert result.exit_code == 0, result.output
    assert "subject_driven:" in result.output and "rejected" in result.output
    return out


def test_every_command_has_help():
    result = run("--help")
    assert result.exit_code == 0
    for command in ("build", "validate", "stats", "export", "import", "recipes"):
        assert command in result.output
        sub = run(command, "--help")
        assert sub.exit_code == 0 and "Usage" in sub.output, command


def test_build_then_validate_stats_export_import(dataset, tmp_path):
    assert json.loads((dataset / "manifest.json").read_text())["rows"] > 0
    result = run("validate", dataset)
    assert result.exit_code == 0 and "OK:" in result.output
    result = run("stats", dataset, "--json")
    stats = json.loads(result.output)
    assert result.exit_code == 0 and stats["tasks"]["subject_driven"]["rows"] == stats["rows"] > 0
    result = run("export", dataset, "--out", tmp_path / "og")
    assert result.exit_code == 0 and (tmp_path / "og" / "data.jsonl").exists()
    result = run("import", tmp_path / "og" / "data.jsonl", "--images", tmp_path / "og" / "images",
                 "--out", tmp_path / "back", "-q")
    assert result.exit_code == 0, result.output
    assert run("validate", tmp_path / "back").exit_code == 0


def test_rerun_resumes_and_seed_change_is_refused(dataset):
    result = run("build", "--task", "subject-driven", "--out", dataset, "--limit", 12, "--quiet")
    assert result.exit_code == 0
    result = run("build", "--task", "subject-driven", "--out", dataset, "--limit", 12, "--seed", 3, "-q")
    assert result.exit_code == 2 and "different plan" in result.output


def test_validate_fails_with_a_per_row_report(dataset, tmp_path):
    shard = next(dataset.rglob("part-*.parquet"))
    rows = pq.read_table(shard).to_pylist()
    rows[1]["instruction"] = "placeholder gone"
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=pq.read_schema(shard)), bad)
    result = run("validate", bad)
    assert result.exit_code == 1
    assert "bad.parquet row 1" in result.output and "FAILED" in result.output


@pytest.mark.parametrize("args,needle", [
    (["--source", "/definitely/not/here"], "/definitely/not/here: no such file or directory"),
    (["--set", "params.min_crop_sides=3"],
     "manifests/subject_driven.yaml: params.min_crop_sides: unknown key; did you mean 'min_crop_side'?"),
    (["--set", "params.min_crop_side=big"],
     "manifests/subject_driven.yaml: params.min_crop_side: expected an integer, got 'big'"),
    (["--set", "params.min_crop_side"], "manifests/subject_driven.yaml: --set expects key=value"),
    (["--set", "params.margin=[1,"], "manifests/subject_driven.yaml: params.margin: value '[1,' is not valid YAML"),
    (["--set", "output.multipel=8"],
     "manifests/subject_driven.yaml: output.multipel: unknown key; did you mean 'multiple'?"),
    (["--executor", "spark"], "unknown executor"),
])
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, args, needle):
    result = run("build", "--task", "subject-driven", "--out", tmp_path / "o", "-q", *args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in result.output


def test_missing_column_in_source_is_one_line(tmp_path):
    meta = tmp_path / "grit.parquet"
    pq.write_table(pa.table({"url": ["u"], "caption": ["a"]}), meta)
    images = tmp_path / "images"
    images.mkdir()
    result = run("build", "-t", "subject-driven", "--source", meta, "--images", images, "-o", tmp_path / "o", "-q")
    assert result.exit_code == 2
    assert f"{meta}: missing column 'noun_chunks'" in result.output


def test_validate_an_unfinished_build(dataset, tmp_path):
    unfinished = tmp_path / "unfinished"
    shutil.copytree(dataset, unfinished)
    (unfinished / "manifest.json").unlink()
    result = run("validate", unfinished)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1, result.output
    assert lines[0].startswith("FAILED: ") and "unfinished build: no manifest.json (5 of 5" in lines[0]
    assert "--partial" in lines[0] and "x2i build" in lines[0]
    result = run("validate", unfinished, "--partial", "--json")
    report = json.loads(result.output)
    assert result.exit_code == 0 and report["ok"] and report["rows"] > 0 and report["note"].startswith("partial")


def test_unknown_task_suggests_the_close_names_recipes_lists(tmp_path):
    listed = [line.split()[0] for line in run("recipes").output.splitlines()]
    assert "subject-driven" in listed and "text-to-image" in listed
    result = run("build", "--task", "subject-drivn", "--out", tmp_path / "o", "-q")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "no recipe named 'subject-drivn'; did you mean 'subject-driven'?" in result.output
    assert all(name in result.output for name in listed)  # named as --task takes them
    assert run("build", "--task", listed[-1], "--help").exit_code == 0


def test_recipe_file_errors_name_the_file_and_nested_key(tmp_path):
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("name: mine\nbuilder: subject_driven\nsource: {format: grit, pth: x}\n")
    result = run("build", "--recipe", recipe, "--out", tmp_path / "o", "-q")
    assert result.exit_code == 2
    assert f"{recipe}: source.pth: unknown key; did you mean 'path'?" in result.output


def test_unknown_model_preset_is_one_line_and_creates_nothing(tmp_path):
    pytest.importorskip("torch")  # without it the command stops earlier, at the missing extra (test_extras.py)
    result = run("train", "--mix", "shapes", "--model", "huge", "--out", tmp_path / "run")
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "Traceback" not in result.output, result.output
    assert "unknown model preset 'huge'" in lines[0] and "omnigen-v1, small, tiny" in lines[0]
    assert not (tmp_path / "run").exists()


def test_an_undeclared_error_is_one_line_and_exit_2(monkeypatch, tmp_path):
    """A bug (an exception no code path declares) still ends as one line and exit 2; X2I_DEBUG=1 re-raises it."""
    import x2i.engine.build

    def broken(*args, **kwargs):
        raise KeyError("row_id")

    monkeypatch.setattr(x2i.engine.build, "build_recipe", broken)
    result = run("build", "--task", "subject-driven", "--out", tmp_path / "o", "-q")
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "Traceback" not in result.output, result.output
    assert "x2i build: internal error KeyError: 'row_id' at test_core_cli.py:" in lines[0]
    assert "X2I_DEBUG=1" in lines[0]
    monkeypatch.setenv("X2I_DEBUG", "1")
    result = run("build", "--task", "subject-driven", "--out", tmp_path / "o", "-q")
    assert isinstance(result.exception, KeyError)


@pytest.mark.parametrize("scenes, per_shard, noted", [(4, 16, True), (8, 4, False)])
def test_more_workers_than_partitions_is_noted(tmp_path, scenes, per_shard, noted):
    """A source small enough for one partition leaves the second worker idle, and the user is told how to split
    it; a source of several partitions for two workers has nothing to say."""
    embedded = (f'source.options.embedded={{"scenes": {scenes}, "per_shard": {per_shard}, "size": 400, '
                '"photos": false}')
    result = run("build", "--task", "text-to-image", "--out", tmp_path / "o", "-q", "--workers", 2, "--set", embedded)
    assert result.exit_code == 0, result.output
    parts = json.loads((tmp_path / "o" / "manifest.json").read_text())["partitions"]
    assert (len(parts) == 1) is noted
    note = "note: the source made 1 partition(s), so only 1 of the 2 workers had work"
    assert (note in result.output) is noted and ("rows_per_partition" in result.output) is noted
