import json

import pyarrow.parquet as pq
from PIL import Image

from x2i.core.schema import SCHEMA_VERSION, row_to_sample, schema_version_of
from x2i.engine.shards import PartitionWriter, iter_rows, shard_files


def test_round_trip_through_pyarrow(tmp_path, make_sample):
    samples = [make_sample(n_inputs=k % 3, seed=k) for k in range(7)]
    w = PartitionWriter(tmp_path, 0)
    for s in samples:
        w.write(s)
    infos = w.commit()
    assert [i.rows for i in infos] == [7] and infos[0].path == "data/subject_driven/part-00000-000.parquet"
    rows = list(iter_rows(tmp_path / infos[0].path))
    for s, row in zip(samples, rows):
        back = row_to_sample(row)
        assert back.id == s.id and back.instruction == s.instruction and back.meta == s.meta
        assert back.output_image.data == s.output_image.data and back.output_image.size == s.output_image.size
        assert [im.data for im in back.input_images] == [im.data for im in s.input_images]
        assert (row["width"], row["height"]) == s.output_image.size
    schema = pq.read_schema(tmp_path / infos[0].path)
    assert schema_version_of(schema) == SCHEMA_VERSION
    assert "input_images" in json.loads(schema.metadata[b"huggingface"])["info"]["features"]


def test_row_groups_at_most_100_rows(tmp_path, make_sample):
    w = PartitionWriter(tmp_path, 3)
    for k in range(230):
        w.write(make_sample(n_inputs=0, seed=k, size=(16, 16)))
    (info,) = w.commit()
    md = pq.ParquetFile(tmp_path / info.path).metadata
    assert md.num_rows == 230 and max(md.row_group(g).num_rows for g in range(md.num_row_groups)) <= 100


def test_datasets_decodes_every_image_column(tmp_path, make_sample):
    import datasets

    w = PartitionWriter(tmp_path, 0)
    for k in range(4):
        w.write(make_sample(n_inputs=k % 3, seed=k))
    w.commit()
    files = [str(p) for p in shard_files(tmp_path)]
    ds = datasets.load_dataset("parquet", data_files=files, split="train")
    assert len(ds) == 4
    row = ds[2]
    assert isinstance(row["output_image"], Image.Image) and row["output_image"].size == (64, 48)
    assert len(row["input_images"]) == 2 and all(isinstance(im, Image.Image) for im in row["input_images"])
    assert ds[0]["input_images"] == []


def test_shards_roll_over_at_max_bytes(tmp_path, make_sample):
    w = PartitionWriter(tmp_path, 1, rows_per_group=10, max_bytes=20_000)
    for k in range(60):
        w.write(make_sample(n_inputs=0, seed=k, size=(64, 64)))
    infos = w.commit()
    assert len(infos) > 1 and sum(i.rows for i in infos) == 60
    assert [i.path for i in infos] == sorted(i.path for i in infos)


def test_abort_leaves_nothing_visible(tmp_path, make_sample):
    w = PartitionWriter(tmp_path, 0)
    for k in range(150):
        w.write(make_sample(seed=k))
    w.abort()
    assert shard_files(tmp_path) == [] and not list(tmp_path.rglob("*.parquet"))
