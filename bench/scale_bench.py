"""A large text-to-image build from a plain URL + caption img2dataset output: rows/s, CPU and peak memory.

    python bench/scale_bench.py --rows 40000 --workers 2

Inputs (written before timing, not timed): `--rows` distinct JPEGs (random crops of the five photos shipped with
scikit-image and matplotlib, 640 px on the longer side, quality 90) as an img2dataset webdataset output with url
and caption only (no LAION scores: the score filters are set to null), 5,000 per shard. Timed: `x2i build` of
text-to-image (caption_clean, dedup sha256 + pHash with the post-build pass, output max_side 512) as a command,
wall clock, CPU of the whole process tree, and the largest peak RSS of any process in it (the driver or a worker).
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

RECIPE = """
name: scale
builder: text_to_image
source: {{format: laion, path: {images}}}
params: {{min_side: null, min_aesthetic: null, max_pwatermark: null, max_punsafe: null}}
steps:
  - {{name: caption_clean, min_words: 2}}
  - {{name: dedup, by: [sha256, phash], max_distance: 4}}
output: {{max_side: 512, multiple: 16, jpeg_quality: 95}}
"""


def write_shard(out: str, shard: int, start: int, count: int) -> None:
    import matplotlib.cbook as cbook
    from skimage import data

    from x2i.shapes.img2dataset_writer import DownloadRecord, write_shard as write

    photos = [Image.fromarray(getattr(data, name)()) for name in ("astronaut", "coffee", "chelsea", "rocket")]
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        photos.append(Image.open(io.BytesIO(f.read())).convert("RGB"))
    rng = np.random.default_rng(shard)
    records = []
    for i in range(start, start + count):
        im = photos[i % len(photos)]
        w, h = im.size
        cw, ch = int(w * rng.uniform(0.4, 1.0)), int(h * rng.uniform(0.4, 1.0))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        scale = 640 / max(cw, ch)
        crop = im.resize((round(cw * scale), round(ch * scale)), Image.Resampling.BILINEAR, box=(x, y, x + cw, y + ch))
        buf = io.BytesIO()
        crop.save(buf, "JPEG", quality=90)
        records.append(DownloadRecord(f"http://example.invalid/{i}.jpg", f"A photo, crop number {i} of a picture",
                                      buf.getvalue(), crop.width, crop.height))
    write(Path(out), shard, records, [])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=40000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--per-shard", type=int, default=5000)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="x2i-scale-"))
    images = work / "images"
    with cf.ProcessPoolExecutor(a.workers) as pool:
        starts = range(0, a.rows, a.per_shard)
        list(pool.map(write_shard, [str(images)] * len(starts), range(len(starts)), starts,
                      [min(a.per_shard, a.rows - s) for s in starts]))
    recipe = work / "scale.yaml"
    recipe.write_text(RECIPE.format(images=images))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load_before = os.getloadavg()
    t = time.perf_counter()
    done = subprocess.run([str(Path(sys.executable).with_name("x2i")), "build", "--recipe", str(recipe), "-o",
                           str(work / "out"), "-q", "--workers", str(a.workers)], capture_output=True, text=True,
                          env={**os.environ, "X2I_CACHE": str(work / "cache")})
    secs = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(done.stdout[-2000:] + done.stderr[-2000:])
    manifest = json.loads((work / "out" / "manifest.json").read_text())
    res = {"source_rows": a.rows, "rows": manifest["rows"], "rejects": manifest.get("rejects"),
           "workers": a.workers, "seconds": round(secs, 1), "rows_per_s": round(a.rows / secs, 1),
           "cpu_seconds": round(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime, 1),
           "largest_process_peak_rss_mib": round(after.ru_maxrss / 1024),
           "post_build_dedup": manifest.get("post_build", {}).get("dedup", {}).get("dropped"),
           "load_before": load_before, "load_after": os.getloadavg()}
    print(json.dumps(res))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
