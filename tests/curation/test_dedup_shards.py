"""The sharded post-build dedup pass drops exactly what the single keep-first pass on the driver dropped."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from x2i.engine.manifest import records_from

from x2i.curation.dedup import DedupParams, DedupStep

COLUMNS = pa.schema([("id", pa.string()), ("task", pa.string()), ("instruction", pa.string()),
                     ("source", pa.string()), ("source_key", pa.string()), ("phash", pa.string()),
                     ("meta", pa.string())])


def many_duplicates(out, partitions=5, shards_per=2, rows_per=120, seed=0):
    """Shards crowded with exact and near duplicates: few sha256 values, pHashes drawn around few centres
    (0-7 bits off, so chains of near duplicates and pairs just past the distance appear), two tasks, inputs in
    some rows, a few instructions, rows without a pHash or a sha256."""
    rng = np.random.default_rng(seed)
    centres = rng.integers(0, 2 ** 63, size=40, dtype=np.int64).astype(np.uint64)
    shas = [f"{int(v):064x}" for v in rng.integers(0, 2 ** 62, size=25)]
    records, n = [], 0
    for p in range(partitions):
        shards = []
        for s in range(shards_per):
            rows = []
            for _ in range(rows_per):
                value = int(centres[rng.integers(0, len(centres))])
                for b in rng.choice(64, size=int(rng.integers(0, 8)), replace=False):
                    value ^= 1 << int(b)
                meta = {"sha256": shas[rng.integers(0, len(shas))], "url": f"http://x/{n}.jpg"}
                if rng.random() < 0.2:
                    meta["inputs_sha256"] = ["in-a", "in-b"][int(rng.integers(0, 2))]
                if rng.random() < 0.05:
                    del meta["sha256"]
                rows.append({"id": f"id{n}", "task": ["text_to_image", "image_edit"][int(rng.random() < 0.3)],
                             "instruction": ["Make it red", "make  it red", "add a cat"][int(rng.integers(0, 3))],
                             "source": "synthetic", "source_key": str(n),
                             "phash": None if rng.random() < 0.05 else f"{value:016x}", "meta": json.dumps(meta)})
                n += 1
            path = f"data/t/part-{p:05d}-{s:03d}.parquet"
            (out / path).parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.Table.from_pylist(rows, schema=COLUMNS), out / path, row_group_size=50)
            shards.append({"path": path, "rows": len(rows)})
        records.append(SimpleNamespace(index=p, shards=[SimpleNamespace(**sh) for sh in shards]))
    return records[::-1]  # the pass must order by partition itself


@pytest.mark.parametrize("by,k", [(["sha256", "phash"], 4), (["sha256", "phash"], 0), (["phash"], 6),
                                  (["sha256"], 4), (["sha256", "phash"], 9)])
def test_sharded_pass_equals_the_single_pass(tmp_path, by, k):
    records = many_duplicates(tmp_path)
    reference, checked = DedupStep(DedupParams(by=by, max_distance=k))._plan_single(tmp_path, records)
    assert checked == 1200 and len(reference) > 100  # crowded enough to exercise chains and both reasons
    for workers in (1, 3):
        step = DedupStep(DedupParams(by=by, max_distance=k, workers=workers))
        drops, rows = step._plan(tmp_path, records)
        assert rows == checked
        assert drops == reference, workers
    assert not (tmp_path / "_progress" / "dedup-scratch").exists()


def test_a_build_with_many_duplicates_drops_the_same_rows(tmp_path):
    """A real text-to-image build whose partitions repeat each other (within-partition dedup off, so every
    duplicate is left to the post-build pass): the pool's plan equals the single pass, row for row."""
    from helpers_curate import cli, rows

    embedded = {"scenes": 12, "per_shard": 3, "size": 256, "photos": False}
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""
name: dup
builder: text_to_image
source: {{format: laion, options: {{embedded: {json.dumps(embedded)}}}}}
params: {{min_side: null, min_aesthetic: null, max_pwatermark: null, max_punsafe: null}}
steps:
  - {{name: dedup, by: [sha256, phash], max_distance: 10, within_partition: false, across_build: false}}
""")
    out = tmp_path / "out"
    result = cli("build", "--recipe", str(recipe), "-o", str(out), "-q")
    assert result.exit_code == 0, result.output
    records = records_from([json.loads(f.read_text()) for f in sorted((out / "_progress").glob("part-*.json"))])
    assert len(records) > 2 and sum(bool(r.shards) for r in records) > 2
    assert len(rows(out)) > 10
    step = DedupStep(DedupParams(by=["sha256", "phash"], max_distance=10, workers=2))
    reference, _ = step._plan_single(out, records)
    drops, _ = step._plan(out, records)
    assert reference and drops == reference
