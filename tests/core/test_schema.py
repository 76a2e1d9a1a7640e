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


def _image_columns_compression(path) -> set[str]:
    group = pq.ParquetFile(path).metadata.row_group(0)
    return {group.column(i).compression for i in range(group.num_columns)
            if group.column(i).path_in_schema.endswith(".bytes")}


def test_image_bytes_compressed_only_when_zstd_pays(tmp_path):
    """Photos' JPEG bytes stay uncompressed in the shard (zstd gains nothing on them and costs at every write and
    read); flat synthetic images keep zstd; a post-build rewrite keeps the shard's choice; both read back."""
    import io

    import numpy as np

    from x2i.core.imageio import load
    from x2i.core.sample import Sample
    from x2i.engine.shards import rewrite_shard

    def jpeg_of(im: Image.Image) -> bytes:
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=95)
        return buf.getvalue()

    import skimage.data

    rng = np.random.default_rng(0)
    photo = Image.fromarray(skimage.data.astronaut())  # 512 px: JPEG tables are ~1% of a crop's bytes
    photos = [photo.crop((x, y, x + 384, y + 384)) for x, y in rng.integers(0, 128, (12, 2))]
    flats = [Image.new("RGB", (128, 128), tuple(int(v) for v in rng.integers(0, 256, 3))) for _ in range(12)]
    for name, images, expected in (("photos", photos, {"UNCOMPRESSED"}), ("flat", flats, {"ZSTD"})):
        out = tmp_path / name
        w = PartitionWriter(out, 0)
        samples = [Sample("text_to_image", f"image {k}", load(jpeg_of(im)), [], "test", f"k{k}", {}).with_id()
                   for k, im in enumerate(images)]
        for s in samples:
            w.write(s)
        (info,) = w.commit()
        path = out / info.path
        assert _image_columns_compression(path) == expected, name
        from x2i.engine.shards import file_sha256

        rows_left, sha = rewrite_shard(path, {samples[0].id})
        assert rows_left == len(samples) - 1 and sha == file_sha256(path)
        assert _image_columns_compression(path) == expected, name
        rows = list(iter_rows(path))
        assert [r["output_image"]["bytes"] for r in rows] == [s.output_image.data for s in samples[1:]]
