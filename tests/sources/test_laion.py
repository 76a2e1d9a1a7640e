"""LAION-Aesthetics v1/v2 on real-format fixtures: every hard row ends as a row or as a reject with its reason."""
from __future__ import annotations

import json
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers_curate import cli, rejects, rows, validate
from realformat import LAION_V1, laion_cases, laion_metadata, write_laion, write_parquet

KEPT = {"https://example.com/laion/0.jpg", "https://example.com/laion/9.jpg", "https://example.com/laion/11.jpg"}


def expected_rejects(cases) -> Counter:
    return Counter(c["_expect"] for c in cases if c["_expect"])


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("X2I_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize("version,self_contained", [(1, False), (2, False), (1, True), (2, True)])
def test_laion_layouts_end_to_end(tmp_path, version, self_contained):
    cases = laion_cases()
    meta, images = write_laion(tmp_path / "src", cases, version, self_contained)
    out = tmp_path / "out"
    args = ["build", "--task", "text-to-image", "-o", str(out), "-q"]
    args += ["--source", str(images)] if self_contained else ["--source", str(meta), "--images", str(images)]
    result = cli(*args)
    assert result.exit_code == 0, result.output
    manifest = validate(out)
    got = rows(out)
    assert {json.loads(r["meta"])["url"] for r in got} == KEPT
    assert Counter(manifest["rejects"]) == expected_rejects(cases)
    assert manifest["post_build"]["dedup"]["dropped"] == {"duplicate_sha256": 1}  # row 6 is in another partition
    by_url = {json.loads(r["meta"])["url"]: r for r in got}
    cleaned = by_url["https://example.com/laion/11.jpg"]
    assert cleaned["instruction"] == "A yellow star & friends"  # caption_clean: tags, entities and URLs gone
    first = json.loads(by_url["https://example.com/laion/0.jpg"]["meta"])
    assert first["laion_version"] == version and first["aesthetic"] == pytest.approx(5.5)
    assert by_url["https://example.com/laion/0.jpg"]["aesthetic"] == pytest.approx(5.5)
    nan_row = json.loads(by_url["https://example.com/laion/9.jpg"]["meta"])
    assert nan_row["laion_width"] is None  # WIDTH was NaN: unknown, not a reason to drop a good image
    ledger = {r["reason"]: r for r in rejects(out)}
    assert json.loads(ledger["img2dataset_failed_to_download"]["meta"])["url"] == "https://example.com/laion/8.jpg"
    assert json.loads(ledger["duplicate_sha256"]["meta"])["url"] == "https://example.com/laion/6.jpg"


def test_nan_is_rejected_even_with_the_filter_off(tmp_path):
    """With min_aesthetic null the NaN row is kept, its meta is valid JSON, and a later threshold still sees NaN."""
    cases = laion_cases()
    meta, images = write_laion(tmp_path / "src", cases)
    out = tmp_path / "out"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""
name: t
builder: text_to_image
source: {{format: laion, path: {meta}, images: {images}}}
params: {{min_aesthetic: null, max_punsafe: null, max_pwatermark: null, min_side: null}}
steps:
  - {{name: meta_threshold, field: punsafe, max: 0.5, missing: keep}}
""")
    result = cli("build", "--recipe", str(recipe), "-o", str(out), "-q")
    assert result.exit_code == 0, result.output
    manifest = validate(out)
    assert manifest["rejects"]["punsafe_nan"] == 1 and "aesthetic_nan" not in manifest["rejects"]
    kept_nan = [json.loads(r["meta"]) for r in rows(out) if json.loads(r["meta"])["url"].endswith("/2.jpg")]
    assert kept_nan and kept_nan[0]["aesthetic"] is None and "aesthetic" in kept_nan[0]["nan_fields"]


@pytest.mark.parametrize("drop", ["pwatermark", "URL", "aesthetic"])
def test_missing_column_is_one_line_exit_2(tmp_path, drop):
    cases = laion_cases()[:3]
    table = pa.Table.from_pylist(laion_metadata(cases), schema=LAION_V1).drop_columns([drop])
    path = tmp_path / "meta.parquet"
    pq.write_table(table, path)
    _, images = write_laion(tmp_path / "src", cases)
    result = cli("build", "--task", "text-to-image", "--source", str(path), "--images", str(images),
                 "-o", str(tmp_path / "out"), "-q")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and f"missing column '{drop}'" in lines[0]


def test_metadata_without_images_or_download_is_refused(tmp_path):
    meta, _ = write_laion(tmp_path / "src", laion_cases()[:2])
    result = cli("build", "--task", "text-to-image", "--source", str(meta), "-o", str(tmp_path / "out"), "-q")
    assert result.exit_code == 2 and "download" in result.stderr


def test_v2_types_are_as_published(tmp_path):
    meta, _ = write_laion(tmp_path / "src", laion_cases()[:2], version=2)
    schema = pq.read_schema(meta)
    assert schema.field("AESTHETIC_SCORE").type == pa.float64() and schema.field("WIDTH").type == pa.float64()
    assert "__index_level_0__" in schema.names and "aesthetic" not in schema.names
    write_parquet(tmp_path / "x.parquet", [], LAION_V1)  # the v1 schema round-trips empty files too


def test_img2dataset_parquet_output_format(tmp_path):
    """img2dataset --output_format parquet: one parquet per shard with the image in a `jpg` column."""
    cases = [c for c in laion_cases() if c["_image"] is not None]
    meta = laion_metadata(cases)
    table = []
    for i, (c, m) in enumerate(zip(cases, meta)):
        table.append({"url": m["URL"], "caption": m["TEXT"], "key": f"00000{i:04d}", "status": "success",
                      "error_message": None, "width": 448, "height": 400, "original_width": 448,
                      "original_height": 400, "exif": None, "sha256": None, "jpg": c["_image"],
                      **{k: v for k, v in m.items() if k not in ("URL", "TEXT")}})
    schema = pa.schema([("url", pa.string()), ("caption", pa.string()), ("key", pa.string()), ("status", pa.string()),
                        ("error_message", pa.string()), ("width", pa.int64()), ("height", pa.int64()),
                        ("original_width", pa.int64()), ("original_height", pa.int64()), ("exif", pa.string()),
                        ("sha256", pa.string()), ("jpg", pa.binary())]
                       + [f for f in LAION_V1 if f.name not in ("URL", "TEXT")])
    folder = tmp_path / "pq"
    write_parquet(folder / "00000.parquet", table, schema)
    out = tmp_path / "out"
    result = cli("build", "--task", "text-to-image", "--source", str(folder), "-o", str(out), "-q")
    assert result.exit_code == 0, result.output
    manifest = validate(out)
    # row 5's download is small, but img2dataset recorded a 448x400 original: the recorded original size decides
    assert {json.loads(r["meta"])["url"] for r in rows(out)} == KEPT | {"https://example.com/laion/5.jpg"}
    assert "too_small" not in manifest["rejects"] and manifest["rejects"]["image_corrupt"] == 1
