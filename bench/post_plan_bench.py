"""The post-build dedup plan on small builds: the single keep-first pass vs the sharded stages in one process.

    python bench/post_plan_bench.py [--rows 2000 10000 20000] [--repeats 3]

For each size, real shards (x2i's writer, 4 partitions of 100-row groups) whose rows carry a random pHash and
sha256, 10% of them a near copy (1-3 bits off) and 1% an exact copy of an earlier row, anywhere in the build.
Each plan runs in a fresh process, as the driver meets it after a build (what it imports counts): the single pass
(`DedupStep._plan_single`) and the sharded stages with one worker (`dedup_shards.plan`, what `_plan` ran below
POOL_MIN_ROWS before it chose the single pass there). Both must return the same drops; the medians are printed.
"""
from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

PLAN = """
import json, sys, time
from pathlib import Path
from types import SimpleNamespace
from x2i.curation.dedup import DedupParams, DedupStep
out, how = Path(sys.argv[1]), sys.argv[2]
records = [SimpleNamespace(index=r["index"], shards=[SimpleNamespace(**s) for s in r["shards"]])
           for r in json.loads((out / "records.json").read_text())]
params = DedupParams(by=["sha256", "phash"], max_distance=4, workers=0 if how == "single" else 1)
step = DedupStep(params)
start = time.perf_counter()
drops, rows = step._plan_single(out, records) if how == "single" else step._plan(out, records)
print(json.dumps({"seconds": time.perf_counter() - start, "drops": [d["id"] for d in drops], "rows": rows}))
"""


def write_build(out: Path, rows: int, seed: int = 0) -> None:
    from x2i.core.imageio import load
    from x2i.core.sample import Sample
    from x2i.engine.shards import PartitionWriter

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (90, 120, 30)).save(buf, "JPEG")
    image = load(buf.getvalue())
    hashes = rng.integers(0, 2**63, rows, dtype=np.int64).astype(np.uint64)
    shas = [rng.bytes(32).hex() for _ in range(rows)]
    for i in range(1, rows):
        roll = rng.random()
        if roll < 0.10:  # a near copy of an earlier row
            flips = rng.choice(64, int(rng.integers(1, 4)), replace=False)
            hashes[i] = hashes[int(rng.integers(0, i))] ^ np.uint64(sum(1 << int(b) for b in flips))
        elif roll < 0.11:  # an exact copy
            j = int(rng.integers(0, i))
            hashes[i], shas[i] = hashes[j], shas[j]
    records, per = [], -(-rows // 4)
    for part in range(4):
        writer = PartitionWriter(out, part)
        for i in range(part * per, min(rows, (part + 1) * per)):
            writer.write(Sample("text_to_image", f"row {i}", image, [], "bench", f"k{i}",
                                {"sha256": shas[i], "url": f"http://x/{i}.jpg"}, phash=f"{int(hashes[i]):016x}")
                         .with_id())
        records.append({"index": part, "shards": [{"path": s.path, "rows": s.rows} for s in writer.commit()]})
    (out / "records.json").write_text(json.dumps(records))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[2000, 10000, 20000])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    for rows in args.rows:
        out = Path(tempfile.mkdtemp(prefix="x2i-postplan-"))
        write_build(out, rows)
        times: dict[str, list[float]] = {"single": [], "sharded": []}
        drops = {}
        for _ in range(args.repeats):
            for how in times:
                done = subprocess.run([sys.executable, "-c", PLAN, str(out), how], capture_output=True, text=True,
                                      check=True)
                result = json.loads(done.stdout)
                times[how].append(result["seconds"])
                drops[how] = result["drops"]
        assert drops["single"] == drops["sharded"], "the two plans differ"
        single, sharded = (statistics.median(times[h]) for h in ("single", "sharded"))
        print(f"{rows:7d} rows, {len(drops['single'])} dropped: single pass {single:.3f} s, sharded stages in one "
              f"process {sharded:.3f} s ({sharded / single:.1f}x)")


if __name__ == "__main__":
    main()
