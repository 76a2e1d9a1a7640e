import io
import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from x2i.engine.build import build
from x2i.engine.recipe import load_recipe
from x2i.core.schema import ARROW_SCHEMA, SCHEMA
from x2i.engine.shards import shard_files
from x2i.inspect.validate import validate


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("valid")
    build(load_recipe("subject-driven"), out, limit=12, progress=False, strict=True)
    return out


@pytest.fixture
def dataset(built, tmp_path):
    target = tmp_path / "ds"
    shutil.copytree(built, target)
    return target


def _rewrite(path, edit, schema=SCHEMA, row_group_size=100):
    rows = pq.read_table(path).to_pylist()
    rows = (edit(rows) if edit else None) or rows
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path, row_group_size=row_group_size)


def _messages(report):
    return [str(p) for p in report.problems]


def _jpeg(w, h):
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (9, 9, 9)).save(buf, "JPEG")
    return buf.getvalue()


def test_clean_build_passes(built):
    report = validate(built)
    assert report.ok, _messages(report)
    assert report.rows > 10 and report.images > report.rows


def _set(index, **values):
    def edit(rows):
        rows[index].update(values)
    return edit


@pytest.mark.parametrize("edit,expected", [
    (_set(0, instruction="no placeholder here"), "instruction: 0 placeholder(s) for 1"),
    (_set(0, instruction="<img><|image_2|></img> wrong number"), "instruction: image numbers"),
    (_set(0, instruction="<img><|image_1|> unclosed"), "stray"),
    (_set(0, task=""), "empty task"),
    (_set(0, id=""), "empty id"),
    (_set(0, meta="{not json"), "meta is not valid JSON"),
    (_set(0, meta="[1, 2]"), "meta is not a JSON object"),
    (_set(0, aesthetic=float("nan")), "aesthetic is nan"),
    (_set(0, width=1), "width/height 1x"),
    (_set(0, output_image=None), "output_image is missing"),
    (_set(0, output_image={"bytes": b"\xff\xd8\xff\xe0 truncated jpeg", "path": "x.jpg"}), "does not decode"),
    (_set(0, output_image={"bytes": _jpeg(50, 50), "path": "x.jpg"}, width=50, height=50), "not a multiple of 16"),
])
def test_row_defects_are_reported(dataset, edit, expected):
    shard = shard_files(dataset)[0]
    _rewrite(shard, edit)
    report = validate(dataset)
    assert not report.ok
    hits = [p for p in report.problems if expected in p.message]
    assert hits, _messages(report)
    assert hits[0].row == 0 and hits[0].file.endswith(shard.name)


def test_input_image_defect_is_reported(dataset):
    def edit(rows):
        rows[0]["input_images"][0] = {"bytes": b"garbage", "path": "in.jpg"}
    _rewrite(shard_files(dataset)[0], edit)
    assert any("input image 1 does not decode" in m for m in _messages(validate(dataset)))


def test_duplicate_ids_across_rows(dataset):
    def edit(rows):
        rows[1]["id"] = rows[0]["id"]
    _rewrite(shard_files(dataset)[0], edit)
    assert any("duplicate id" in m for m in _messages(validate(dataset)))


def test_file_level_defects(dataset):
    shard = shard_files(dataset)[0]
    _rewrite(shard, None, schema=ARROW_SCHEMA)  # no huggingface / x2i metadata
    msgs = _messages(validate(dataset))
    assert any("no huggingface features metadata" in m for m in msgs)
    assert any("x2i schema version None" in m for m in msgs)
    _rewrite(shard, lambda rows: [r | {"id": f"{r['id']}-{k}"} for k in range(9) for r in rows], row_group_size=1000)
    assert any("rows (> 100)" in m for m in _messages(validate(dataset)))
    table = pq.read_table(shard).drop_columns(["phash"])
    pq.write_table(table, shard)
    assert any("missing ['phash']" in m for m in _messages(validate(dataset)))


def test_manifest_consistency(dataset):
    shard = shard_files(dataset)[0]
    copy = shard.with_name("part-09999-000.parquet")
    shutil.copy(shard, copy)
    msgs = _messages(validate(dataset))
    assert any("not listed in manifest.json" in m for m in msgs)
    copy.unlink()
    _rewrite(shard, lambda rows: rows[:-1])
    msgs = _messages(validate(dataset))
    assert any("sha256 differs" in m for m in msgs) and any("rows, manifest says" in m for m in msgs)
    shard.unlink()
    assert any("listed in manifest.json but missing" in m for m in _messages(validate(dataset)))
    manifest = json.loads((dataset / "manifest.json").read_text())
    assert manifest["rows"] > 0


def _kill_after(dataset, done):
    """The folder as a build killed after `done` partitions leaves it: no manifest, later records gone."""
    (dataset / "manifest.json").unlink()
    for record in sorted((dataset / "_progress").glob("part-*.json"))[done:]:
        record.unlink()


def test_unfinished_build_fails_with_one_line_and_partial_checks_what_is_there(dataset):
    _kill_after(dataset, 2)
    report = validate(dataset)
    assert not report.ok and report.problems == [] and report.rows == 0  # rows not checked
    assert "unfinished build: no manifest.json (2 of 5 partitions done)" in report.summary()
    assert "re-running the same `x2i build`" in report.summary() and "--partial" in report.summary()
    partial = validate(dataset, partial=True)
    assert partial.ok and partial.rows > 0, _messages(partial)
    assert "partial: 2 of 5 partitions done" in partial.summary()


def test_resuming_the_unfinished_build_makes_it_valid(dataset):
    _kill_after(dataset, 2)
    build(load_recipe("subject-driven"), dataset, limit=12, progress=False, strict=True)
    report = validate(dataset)
    assert report.ok and report.rows > 10, _messages(report)


def test_shards_that_disagree_with_the_manifest_fail_the_build(dataset):
    shard = shard_files(dataset)[0]
    shutil.copy(shard, shard.with_name("part-00003-000.parquet"))  # a stray shard the manifest does not list
    report = validate(dataset)
    assert not report.ok and report.summary().startswith("FAILED: ")
    assert "do not match manifest.json (1 problem(s) above" in report.summary()
    assert any("duplicate id" in m for m in _messages(report))  # the rows are still checked
    partial = validate(dataset, partial=True)
    assert partial.incomplete is None and any("duplicate id" in m for m in _messages(partial))


def test_zero_row_build_is_valid_and_ledgers_are_not_data(tmp_path):
    data = load_recipe("subject-driven").to_dict()
    data["params"]["min_crop_side"] = 100_000  # every entity crop is too small: all rejected
    recipe_file = tmp_path / "reject_all.yaml"
    recipe_file.write_text(yaml.safe_dump(data))
    out = tmp_path / "empty"
    manifest = build(load_recipe(recipe_file), out, limit=12, progress=False, strict=True, allow_empty=True)
    assert manifest.rows == 0 and manifest.rejects_total > 0
    assert list((out / "rejects").glob("*.parquet"))  # the ledgers exist and would fail as data shards
    report = validate(out)
    assert report.ok, _messages(report)
    assert report.rows == 0 and report.files == 0 and "0 rows: an empty build" in report.summary()
    (out / "manifest.json").unlink()
    assert "unfinished build" in validate(out).summary()
