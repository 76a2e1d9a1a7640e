"""rewrite_shard keeps every row it is not told to drop, in order, with its bytes, whatever runs the drops
cut (first, last, scattered, a whole row group, everything), hashes what it wrote, and is a no-op the second
time (a resumed post-build pass calls it again)."""
from __future__ import annotations

import io

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from x2i.core.imageio import load
from x2i.core.sample import Sample
from x2i.engine.shard_reading import iter_rows
from x2i.engine.shards import PartitionWriter, file_sha256, rewrite_shard

ROWS, PER_GROUP = 23, 5


def shard(tmp_path):
    rng = np.random.default_rng(1)
    writer = PartitionWriter(tmp_path / "out", 0, rows_per_group=PER_GROUP)
    samples = []
    for k in range(ROWS):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
        sample = Sample("text_to_image", f"image number {k}", load(buf.getvalue()), [], "test", f"k{k}", {}).with_id()
        writer.write(sample)
        samples.append(sample)
    (info,) = writer.commit()
    return tmp_path / "out" / info.path, samples


@pytest.mark.parametrize("drop", [[0], [ROWS - 1], [0, 1, 2, 3, 4], list(range(0, ROWS, 2)), [4, 5, 6, 11, 20],
                                  list(range(1, ROWS))])
def test_the_kept_rows_are_the_others_in_order(tmp_path, drop):
    path, samples = shard(tmp_path)
    groups_before = pq.ParquetFile(path).num_row_groups
    left, sha = rewrite_shard(path, {samples[i].id for i in drop} | {"not-a-row"})
    kept = [s for i, s in enumerate(samples) if i not in drop]
    rows = list(iter_rows(path))
    assert left == len(kept) == len(rows) and sha == file_sha256(path)
    assert [r["id"] for r in rows] == [s.id for s in kept]
    assert [r["output_image"]["bytes"] for r in rows] == [s.output_image.data for s in kept]
    assert [r["instruction"] for r in rows] == [s.instruction for s in kept]
    assert pq.ParquetFile(path).num_row_groups <= groups_before  # row groups never grow
    assert rewrite_shard(path, {samples[i].id for i in drop}) == (len(kept), None)  # again: nothing to do


def test_dropping_every_row_removes_the_shard(tmp_path):
    path, samples = shard(tmp_path)
    assert rewrite_shard(path, {s.id for s in samples}) == (0, None)
    assert not path.exists()
