"""Big Parquet files split into several partitions (x2i/sources/parquet_parts.py): the same rows, in the same
order, with the same rejects and the same `--limit` quotas as one partition per file; stable labels; small files
(the embedded samples) keep their single partition."""
from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from realformat import IP2P, MAGICBRUSH, edit_pairs, ip2p_rows, magicbrush_rows
from x2i.core.errors import X2IError
from x2i.engine.build import _quotas
from x2i.engine.recipe import SourceConfig, load_recipe
from x2i.engine.steps import Context
from x2i.sources import make_source
from x2i.sources.parquet_parts import align, spans

ROWS = 45
ROW_GROUP = 4  # 12 row groups, the last one short


def _jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=80)
    return buf.getvalue()


@pytest.fixture
def img2dataset_parquet(tmp_path):
    """An img2dataset parquet shard carrying GRIT and LAION columns, with failed downloads and missing keys."""
    rows = []
    for i in range(ROWS):
        failed = i % 7 == 3
        caption = f"a red square number {i} on a table"
        rows.append({"key": None if i % 5 == 0 else f"{i:09d}", "url": f"http://example.com/{i}.jpg",
                     "caption": caption if i % 11 else "", "status": "failed_to_download" if failed else "success",
                     "error_message": "timeout" if failed else None, "width": 32, "height": 24,
                     "jpg": None if failed else _jpeg(i),
                     "noun_chunks": [[0.0, 12.0, 0.1, 0.1, 0.6, 0.7, 0.9]], "ref_exps": [],
                     "punsafe": 0.01, "pwatermark": 0.1, "aesthetic": 5.0 + i / 100})
    path = tmp_path / "i2d" / "00000.parquet"
    path.parent.mkdir()
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=ROW_GROUP)
    assert pq.ParquetFile(path).metadata.num_row_groups == 12
    return path


def _fingerprint(sample) -> tuple:
    meta = {k: (v.data if hasattr(v, "data") else v) for k, v in sample.meta.items()}
    return (sample.source_key, sample.instruction, sample.output_image.data,
            tuple(im.data for im in sample.input_images), json.dumps(meta, sort_keys=True, default=repr))


def _read(source, limit=None) -> tuple[list, list, list]:
    """Samples and rejects of the whole source, each partition read with its share of `limit`."""
    parts = source.partitions()
    ctx = Context()
    samples = [_fingerprint(s) for p, q in zip(parts, _quotas(source, parts, limit)) for s in source.read(p, ctx, q)]
    rejects = [(r.reason, r.source_key, r.detail, json.dumps(r.meta, sort_keys=True)) for r in ctx.rejects]
    return samples, rejects, [source.label(p) for p in parts]


def _source(fmt, path, rows_per_partition, **options):
    return make_source(SourceConfig(format=fmt, path=str(path), options={"rows_per_partition": rows_per_partition,
                                                                          **options}))


def test_spans_pack_whole_row_groups_and_cut_big_ones(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"x": list(range(45))}), path, row_group_size=4)
    assert spans(path, 45) == [(0, 45)]  # small enough: one partition
    assert spans(path, 10) == [(0, 8), (8, 16), (16, 24), (24, 32), (32, 40), (40, 45)]
    pq.write_table(pa.table({"x": list(range(25))}), path, row_group_size=25)  # one big group
    assert spans(path, 10) == [(0, 10), (10, 20), (20, 25)]
    keys = ["a"] * 3 + ["b"] * 9 + ["c"] * 13  # a session swallowing a whole span's worth of rows
    assert align([(0, 10), (10, 20), (20, 25)], keys) == [(0, 12), (12, 25)]


@pytest.mark.parametrize("fmt", ["grit", "laion"])
@pytest.mark.parametrize("rows_per_partition", [1, 5, 8, 13])
def test_img2dataset_parquet_split_yields_the_same_rows(img2dataset_parquet, fmt, rows_per_partition):
    whole = _source(fmt, img2dataset_parquet.parent, 10_000)
    split = _source(fmt, img2dataset_parquet.parent, rows_per_partition)
    samples, rejects, labels = _read(whole)
    assert labels == ["00000.parquet"] and len(samples) > 20 and rejects
    split_samples, split_rejects, split_labels = _read(split)
    assert (split_samples, split_rejects) == (samples, rejects)
    assert len(split_labels) == len(set(split_labels)) >= ROWS // max(rows_per_partition, ROW_GROUP) > 1
    assert split_labels == _read(_source(fmt, img2dataset_parquet.parent, rows_per_partition))[2]  # stable
    for limit in (0, 1, 9, 22, 44, 100):  # --limit: the first N rows, split or not
        assert _read(split, limit)[:2] == _read(whole, limit)[:2]


def test_split_labels_name_the_rows(img2dataset_parquet):
    assert _read(_source("grit", img2dataset_parquet.parent, 8))[2][:3] == [
        "00000.parquet[0:8]", "00000.parquet[8:16]", "00000.parquet[16:24]"]


@pytest.fixture(scope="module")
def magicbrush_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("mb") / "train-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist(magicbrush_rows(sessions=7), schema=MAGICBRUSH), path, row_group_size=2)
    return path


def test_magicbrush_split_keeps_sessions_and_chains(magicbrush_file):
    whole = _source("magicbrush", magicbrush_file, 10_000)
    samples, rejects, _ = _read(whole)
    assert any(json.loads(s[4]).get("edit_kind") == "chain" for s in samples)
    ids = pq.read_table(magicbrush_file, columns=["img_id"]).column(0).to_pylist()
    for rows_per_partition in (1, 2, 3):
        split = _source("magicbrush", magicbrush_file, rows_per_partition)
        parts = split.partitions()
        assert len(parts) > 1
        for p in parts:  # no session straddles two partitions
            assert p.start == 0 or ids[p.start] != ids[p.start - 1]
        assert _read(split)[:2] == (samples, rejects)
        for limit in (1, 4, 7):
            assert _read(split, limit)[:2] == _read(whole, limit)[:2]


def test_instructpix2pix_split_yields_the_same_rows(tmp_path):
    path = tmp_path / "ip2p" / "train.parquet"
    path.parent.mkdir()
    pq.write_table(pa.Table.from_pylist(ip2p_rows(edit_pairs(9)), schema=IP2P), path, row_group_size=2)
    whole, split = _source("instructpix2pix", path, 10_000), _source("instructpix2pix", path, 3)
    # row groups of 2 packed up to 3 rows: [0:2] [2:4] [4:6] [6:9] (the last group holds 1 row)
    assert [split.label(p) for p in split.partitions()] == ["train.parquet[0:2]", "train.parquet[2:4]",
                                                            "train.parquet[4:6]", "train.parquet[6:9]"]
    assert whole.partitions() == [str(path)]
    assert _read(split)[:2] == _read(whole)[:2]
    assert _read(split, 5)[:2] == _read(whole, 5)[:2]


@pytest.mark.parametrize("task", ["subject-driven", "image-edit", "text-to-image"])
def test_embedded_samples_keep_one_partition_per_file(task):
    recipe = load_recipe(task)
    source = make_source(recipe.source)
    labels = [source.label(p) for p in source.partitions()]
    assert labels and all("[" not in label for label in labels)


@pytest.mark.parametrize("fmt", ["grit", "magicbrush"])
def test_rows_per_partition_must_be_positive(img2dataset_parquet, fmt):
    with pytest.raises(X2IError, match="rows_per_partition"):
        _source(fmt, img2dataset_parquet.parent, 0)
