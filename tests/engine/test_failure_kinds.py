"""Two kinds of failure, never mixed: a bad row is a counted reject; anything else stops the build (exit 2).

Each test reproduces a way a build used to say "exit 0" over a broken setup: undeclared exceptions turned into
per-row rejects, wrong column types, broken weight files, builds that kept nothing.
"""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from x2i.engine.build import build
from x2i.builders.subject_driven import SubjectDrivenStep
from x2i.core.errors import BuildStopped, SourceError, X2IError
from x2i.engine.manifest import Policy
from x2i.engine.recipe import Recipe, load_recipe


def recipe(name: str, **params) -> Recipe:
    data = load_recipe(name).to_dict()
    data["params"].update(params)
    return Recipe.from_dict(data)


def fail_on(monkeypatch, keys: set[str] | None, exc: BaseException) -> None:
    """Make the subject-driven step raise `exc` on the source rows in `keys` (all rows when None)."""
    original = SubjectDrivenStep.process

    def process(self, sample, ctx):
        if keys is None or sample.source_key in keys:
            raise exc
        return original(self, sample, ctx)

    monkeypatch.setattr(SubjectDrivenStep, "process", process)


def first_keys(n: int) -> list[str]:
    from x2i.sources import make_source
    from x2i.engine.steps import Context

    source = make_source(load_recipe("subject-driven").source)
    return [s.source_key for s in source.read(source.partitions()[0], Context(), n)]


def test_undeclared_error_stops_the_build_with_one_line(monkeypatch, tmp_path):
    fail_on(monkeypatch, {first_keys(5)[4]}, RuntimeError("boom"))
    with pytest.raises(BuildStopped) as info:
        build(load_recipe("subject-driven"), tmp_path / "out", limit=40, progress=False)
    message = str(info.value)
    assert "\n" not in message
    assert "RuntimeError: boom" in message and "--max-error-rate" in message and "subject_driven" in message
    assert not (tmp_path / "out" / "manifest.json").exists()
    assert not list((tmp_path / "out").rglob("part-*.parquet"))  # the failed partition committed nothing


def test_error_budget_counts_undeclared_errors_as_rejects(monkeypatch, tmp_path):
    bad = first_keys(3)[2]
    fail_on(monkeypatch, {bad}, RuntimeError("boom"))
    manifest = build(load_recipe("subject-driven"), tmp_path / "out", limit=40, progress=False, max_error_rate=0.1)
    assert manifest.rejects["unexpected_error"] == 1
    assert manifest.unexpected_errors == 1
    assert manifest.policy == Policy(max_error_rate=0.1, allow_empty=False)
    ledger = pq.read_table(tmp_path / "out" / "rejects" / "part-00000.parquet").to_pylist()
    row = next(r for r in ledger if r["reason"] == "unexpected_error")
    assert row["source_key"] == bad and "RuntimeError: boom" in row["detail"]


def test_error_budget_exceeded_stops(monkeypatch, tmp_path):
    fail_on(monkeypatch, set(first_keys(10)), RuntimeError("boom"))
    with pytest.raises(BuildStopped, match="exceed --max-error-rate 0.05"):
        build(load_recipe("subject-driven"), tmp_path / "out", limit=40, progress=False, max_error_rate=0.05)


def test_environment_errors_are_never_budgeted(monkeypatch, tmp_path):
    fail_on(monkeypatch, None, ModuleNotFoundError("No module named 'open_clip'", name="open_clip"))
    with pytest.raises(BuildStopped) as info:
        build(load_recipe("subject-driven"), tmp_path / "out", limit=40, progress=False, max_error_rate=0.9)
    assert "pip install 'x2i[curation]'" in str(info.value)


def test_bad_rows_are_still_data(tmp_path):
    """The embedded source has rows the builder rejects for declared reasons: counted, never a stop."""
    manifest = build(load_recipe("subject-driven"), tmp_path / "out", limit=60, progress=False)
    assert manifest.rows > 0 and manifest.rejects_total > 0
    assert manifest.unexpected_errors == 0
    assert not any(r.startswith("error_") or r == "unexpected_error" for r in manifest.rejects)


def test_a_build_that_keeps_no_row_stops_unless_allowed(tmp_path):
    nothing = recipe("subject-driven", min_crop_side=100_000)
    with pytest.raises(BuildStopped, match="wrote 0 rows.*entity_crop_too_small.*--allow-empty"):
        build(nothing, tmp_path / "a", limit=20, progress=False)
    manifest = build(nothing, tmp_path / "b", limit=20, progress=False, allow_empty=True)
    assert manifest.rows == 0 and manifest.source_samples == 20
    assert manifest.policy.allow_empty is True


def test_max_error_rate_out_of_range_is_a_user_error(tmp_path):
    with pytest.raises(X2IError, match="max-error-rate"):
        build(load_recipe("subject-driven"), tmp_path / "out", limit=5, progress=False, max_error_rate=1.5)


# -- wrong column types: the file and the column, before any work -------------------------------------------------
def _laion(tmp_path, text_type):
    path = tmp_path / "laion.parquet"
    pq.write_table(pa.table({"URL": pa.array(["http://127.0.0.1/a.jpg"]), "TEXT": pa.array([["a", "b"]], text_type),
                             "aesthetic": pa.array([6.0])}), path)
    return path


def test_laion_text_as_a_list_is_refused_before_work(tmp_path):
    path = _laion(tmp_path, pa.list_(pa.string()))
    r = load_recipe("text-to-image").to_dict()
    r["source"]["path"] = str(path)
    with pytest.raises(SourceError) as info:
        build(Recipe.from_dict(r), tmp_path / "out", progress=False)
    assert str(path) in str(info.value) and "column 'TEXT'" in str(info.value) and "expected string" in str(info.value)
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_grit_caption_and_url_as_int64_are_refused(tmp_path):
    meta = tmp_path / "grit.parquet"
    pq.write_table(pa.table({"key": ["0"], "url": pa.array([1], pa.int64()), "caption": pa.array([2], pa.int64()),
                             "noun_chunks": [[[0.0, 1.0, 0.1, 0.1, 0.5, 0.5, 0.9]]]}), meta)
    (tmp_path / "images").mkdir()
    r = load_recipe("subject-driven").to_dict()
    r["source"].update(path=str(meta), images=str(tmp_path / "images"))
    with pytest.raises(SourceError, match=r"grit\.parquet: column '(url|caption)' has type int64, expected string"):
        build(Recipe.from_dict(r), tmp_path / "out", progress=False)


def test_img2dataset_image_column_that_is_not_binary_is_refused(tmp_path):
    shards = tmp_path / "i2d"
    shards.mkdir()
    pq.write_table(pa.table({"key": ["000000000"], "jpg": ["not bytes"], "caption": ["a cat"],
                             "url": ["http://127.0.0.1/x.jpg"], "status": ["success"]}), shards / "00000.parquet")
    r = load_recipe("text-to-image").to_dict()
    r["source"].update(path=None, images=str(shards))
    with pytest.raises(SourceError, match=r"00000\.parquet: column 'jpg' has type string, expected binary"):
        build(Recipe.from_dict(r), tmp_path / "out", progress=False)


def test_all_null_columns_fit_any_type(tmp_path):
    """A column with no values (Arrow `null`) cannot hold a value of the wrong type: not refused for its type."""
    from x2i.sources.columns import check_types

    check_types("f", pa.schema([("TEXT", pa.null())]), {"TEXT": ("string",)})


# -- weights ----------------------------------------------------------------------------------------------------
def test_a_corrupt_weight_file_stops_the_build_naming_the_file(tmp_path, monkeypatch):
    pytest.importorskip("controlnet_aux", reason="needs the annotators extra")
    from x2i.annotators.random_weights import write

    monkeypatch.delenv("X2I_ANNOTATOR_DIR", raising=False)
    weights = write("hed", tmp_path / "hed")
    for f in weights.rglob("*"):
        if f.is_file():
            f.write_bytes(b"\x80\x04 not a pickle nor safetensors")
    r = recipe("vision", annotators=["hed"], weights={"hed": str(weights)})
    with pytest.raises(X2IError) as info:
        build(r, tmp_path / "out", limit=4, progress=False)
    message = str(info.value)
    assert "hed" in message and "could not load its weights" in message and str(weights) in message
    manifest = tmp_path / "out" / "manifest.json"
    assert not manifest.exists() or json.loads(manifest.read_text())["rows"] == 0


# -- the post-build passes: an empty build, an undeclared error -------------------------------------------------
def _with_dedup(**params) -> Recipe:
    data = load_recipe("subject-driven").to_dict()
    data["params"].update(params)
    data["steps"] = [*data.get("steps", []), {"name": "dedup", "by": ["sha256", "phash"], "max_distance": 4}]
    return Recipe.from_dict(data)


def test_post_build_dedup_over_a_build_that_kept_nothing(tmp_path):
    """Every row rejected (e.g. every download failed): no shard to dedup; the build says so, never crashes."""
    nothing = _with_dedup(min_crop_side=100_000)
    with pytest.raises(BuildStopped, match="wrote 0 rows"):
        build(nothing, tmp_path / "a", limit=20, progress=False)
    manifest = build(nothing, tmp_path / "b", limit=20, progress=False, allow_empty=True)
    assert manifest.rows == 0
    assert manifest.post_build["dedup"]["rows_checked"] == 0 and manifest.post_build["dedup"]["dropped"] == {}


def test_undeclared_error_in_a_post_build_pass_is_one_line(monkeypatch, tmp_path):
    from x2i.curation.dedup import DedupStep

    def broken(self, out, records):
        raise ValueError("need at least one array to concatenate")

    monkeypatch.setattr(DedupStep, "after_build", broken)
    with pytest.raises(BuildStopped) as info:
        build(_with_dedup(), tmp_path / "out", limit=20, progress=False)
    message = str(info.value)
    assert "\n" not in message and "post-build step dedup" in message and "ValueError" in message
    assert not (tmp_path / "out" / "manifest.json").exists()
