"""Subject-driven build throughput: the x2i pipeline vs a bare loop, and Ray with 2 workers vs 1.

    python bench/bench_build.py [--scenes 800] [--per-shard 200] [--repeats 3] [--skip-ray]

All figures come from one run on the same inputs (a shapes world at 512 px written in GRIT/img2dataset format):
- pipeline: `build()` with the local executor, one process, samples/s written;
- bare loop: one process doing only decode -> crop -> encode -> write Parquet for the very same crops
  (read from the pipeline's output meta), no validation, no manifests, no rejects;
- Ray: `build(executor="ray")` with 1 and then 2 worker CPUs (Ray started before timing, so start-up cost
  is not counted in either).
Goals (issue 2): pipeline >= 0.8x the bare loop; 2 Ray workers >= 1.8x one.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import tarfile
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image


def build_once(recipe, out: Path, **kw) -> tuple[int, float]:
    from x2i.engine.build import build

    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    manifest = build(recipe, out, progress=False, **kw)
    return manifest.rows, time.perf_counter() - start


def bare_loop(images_dir: Path, crops: dict[str, list[list[list[int]]]], out: Path, quality: int = 95) -> tuple[int, float]:
    """decode -> crop -> encode -> write, nothing else, for the same samples (crop boxes) the pipeline made."""
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    rows = 0
    for shard_index, tar_path in enumerate(sorted(images_dir.glob("*.tar"))):
        batch = []
        with tarfile.open(tar_path, "r|*") as tar:
            for member in tar:
                if not member.name.endswith(".jpg"):
                    continue
                data = tar.extractfile(member).read()
                boxes = crops.get(member.name[:-4], [])
                if not boxes:
                    continue
                image = Image.open(io.BytesIO(data)).convert("RGB")
                encoded: dict[tuple[int, ...], bytes] = {}  # a box used by several samples is encoded once
                for sample_boxes in boxes:
                    inputs = []
                    for box in map(tuple, sample_boxes):
                        if box not in encoded:
                            buf = io.BytesIO()
                            image.crop(box).save(buf, "JPEG", quality=quality, subsampling=0)
                            encoded[box] = buf.getvalue()
                        inputs.append(encoded[box])
                    batch.append({"inputs": inputs, "output": data})
        table = pa.table({"inputs": [b["inputs"] for b in batch], "output": [b["output"] for b in batch]})
        pq.write_table(table, out / f"{shard_index:05d}.parquet", compression="zstd", row_group_size=100)
        rows += len(batch)
    return rows, time.perf_counter() - start


def pipeline_crops(out: Path) -> dict[str, list[list[list[int]]]]:
    """img2dataset key -> one list of crop boxes per sample the pipeline made from that image."""
    from x2i.engine.shards import iter_rows, shard_files

    crops: dict[str, list[list[list[int]]]] = {}
    for f in shard_files(out):
        for row in iter_rows(f, columns=["meta"]):
            meta = json.loads(row["meta"])
            crops.setdefault(meta["img2dataset_key"], []).append([e["crop_px"] for e in meta["entities"]])
    return crops


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", type=int, default=800)
    ap.add_argument("--per-shard", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-ray", action="store_true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="x2i-bench-"))
    os.environ.setdefault("X2I_CACHE", str(work / "cache"))
    from x2i.engine.recipe import resolve_recipe
    from x2i.shapes.embedded import embedded_source

    options = {"scenes": args.scenes, "per_shard": args.per_shard, "size": 512, "photos": False}
    images_dir = embedded_source("grit", options)  # written before timing starts
    recipe, _ = resolve_recipe("subject-driven", {"source.options": {"embedded": options}})
    results = {}

    # Alternate the two, several times, and keep each one's median: other load on the machine hits both alike.
    rows, _ = build_once(recipe, work / "pipeline")
    crops = pipeline_crops(work / "pipeline")
    times: dict[str, list[float]] = {"pipeline": [], "bare": []}
    for _ in range(args.repeats):
        times["pipeline"].append(build_once(recipe, work / "pipeline")[1])
        bare_rows, secs = bare_loop(images_dir, crops, work / "bare")
        assert bare_rows == rows, (bare_rows, rows)
        times["bare"].append(secs)
    for name, secs in times.items():
        results[name] = (rows, statistics.median(secs))

    if not args.skip_ray:
        import ray

        for workers in (1, 2):
            ray.init(num_cpus=workers, include_dashboard=False, configure_logging=False,
                     runtime_env={"env_vars": {"X2I_CACHE": os.environ["X2I_CACHE"]}})
            build_once(recipe, work / "ray-warmup", executor="ray", workers=workers, limit=args.per_shard * workers)
            secs = [build_once(recipe, work / f"ray{workers}", executor="ray", workers=workers)[1]
                    for _ in range(args.repeats)]
            results[f"ray{workers}"] = (rows, statistics.median(secs))
            ray.shutdown()

    rate = {k: r / s for k, (r, s) in results.items()}
    print(f"inputs: {args.scenes} shapes-world scenes at 512 px, {args.scenes // args.per_shard} partitions; "
          f"{rows} subject-driven samples")
    for k, (r, s) in results.items():
        print(f"  {k:10s} {r:6d} samples in {s:7.2f} s = {rate[k]:8.1f} samples/s")
    print(f"pipeline / bare loop = {rate['pipeline'] / rate['bare']:.2f}x (goal >= 0.8)")
    if "ray2" in rate:
        print(f"ray 2 workers / 1 worker = {rate['ray2'] / rate['ray1']:.2f}x (goal >= 1.8)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
