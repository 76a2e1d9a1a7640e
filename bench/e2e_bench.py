"""End to end, a URL list -> a training-ready text-to-image Parquet: x2i (download mode build) vs img2dataset.

    python bench/e2e_bench.py --urls 2000 --latency 0.02 --repeats 2 --img2dataset /tmp/i2d-venv/bin/img2dataset

Inputs: `--urls` distinct JPEGs (random crops of the five photos shipped with scikit-image and matplotlib,
`--side` px on the longer side, 768 by default, quality 90) served by a loopback HTTP server in its own process,
each answer after `--latency` seconds (standing in for the network); the URL list is a Parquet file of URL + TEXT
only. The photos are 300-640 px: a larger `--side` upsamples them (smoother, cheaper to decode than real photos).
Both tools run as their command line, in a fresh output folder, wall clock from start to exit (with the CPU
seconds of the process tree and the machine's idle core-seconds meanwhile), alternating
`--repeats` times (each keeps its median), with the same budget: 2 processes x 16 concurrent requests, images
fitted to 512 px on the longer side, JPEG quality 95, Parquet out.
- x2i: `x2i build` of a text-to-image recipe in download mode, score filters off (the list has no scores),
  caption_clean + dedup (sha256 + pHash) as in manifests/text_to_image.yaml, 2 workers, then centre-cropped to
  multiples of 16, rejects ledger and manifest written.
- x2i_420: the same build writing 4:2:0 JPEGs (`--set output.jpeg_subsampling=4:2:0`), as img2dataset does
  (OpenCV's default): the like-for-like comparison. x2i's default at quality 95 keeps full-resolution colour
  (4:4:4), a quarter more bytes to write (x2i.core.jpeg_settings).
- img2dataset: `--processes_count 2 --thread_count 16 --image_size 512 --resize_mode keep_ratio_largest
  --output_format parquet` (no dedup, no caption cleaning).
img2dataset is not an x2i dependency: install it into its own virtual environment (it pins opencv < 5).
`--baseline-src DIR`: also run the x2i command from another version of the code installed into DIR
(`pip install --no-deps --target DIR <checkout>`; run as PYTHONPATH=DIR from DIR, so the editable install is not
picked up), on a copy of the URL list carrying constant score columns (a checkout without "filters that are
off need no column" cannot read a plain list) - a before/after in the same run.
"""
from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from loopback import image_server
from report import report


def images(n: int, seed: int = 0, side: int = 768) -> list[bytes]:
    import matplotlib.cbook as cbook
    from skimage import data

    photos = [Image.fromarray(getattr(data, name)()) for name in ("astronaut", "coffee", "chelsea", "rocket")]
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        photos.append(Image.open(io.BytesIO(f.read())).convert("RGB"))
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        im = photos[i % len(photos)]
        w, h = im.size
        cw, ch = int(w * rng.uniform(0.5, 1.0)), int(h * rng.uniform(0.5, 1.0))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = im.crop((x, y, x + cw, y + ch))
        scale = side / max(cw, ch)
        crop = crop.resize((round(cw * scale), round(ch * scale)), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        crop.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def serve(bodies: list[bytes], latency: float, port_out) -> None:
    """The loopback server, run in its own process (so its work is not x2i's or img2dataset's)."""
    httpd = image_server(bodies, latency)
    port_out.put(httpd.server_address[1])
    httpd.serve_forever()


RECIPE = """
name: e2e
builder: text_to_image
source:
  format: laion
  path: {urls}
  options:
    download: true
    rows_per_partition: {per}
    downloader: {{allow_networks: ["127.0.0.0/8"], concurrency: 16, timeout: 10.0, retries: 0}}
params: {{min_side: null, min_aesthetic: null, max_pwatermark: null, max_punsafe: null}}
steps:
  - {{name: caption_clean, min_words: 2}}
  - {{name: dedup, by: [sha256, phash], max_distance: 4}}
output: {{max_side: 512, multiple: 16, jpeg_quality: 95}}
"""


CPU: dict[str, list[float]] = {}
IDLE: dict[str, list[float]] = {}


class IdleCores:
    """The machine's idle core-seconds while a command runs (/proc/stat, sampled every 50 ms in a thread): the
    time a core had nothing to do, e.g. while one process starts up or finishes alone. Linux only (else None)."""

    def __enter__(self):
        import threading

        self.idle, self.stop = 0.0, threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True) if os.path.exists("/proc/stat") else None
        if self.thread is not None:
            self.thread.start()
        return self

    @staticmethod
    def _idle_seconds() -> float:
        with open("/proc/stat") as f:
            return int(f.readline().split()[4]) / os.sysconf("SC_CLK_TCK")

    def _sample(self) -> None:
        start = self._idle_seconds()
        while not self.stop.wait(0.05):
            self.idle = self._idle_seconds() - start
        self.idle = self._idle_seconds() - start

    def __exit__(self, *exc):
        self.stop.set()
        if self.thread is not None:
            self.thread.join()

    @property
    def seconds(self) -> float | None:
        return self.idle if self.thread is not None else None


def run(cmd: list[str], env: dict | None = None, name: str = "", cwd: str | None = None) -> float:
    """Wall seconds of one command; its CPU seconds (user + system of it and every process it waited for,
    so pool workers included) go to CPU[name]: on a shared machine the CPU a tool burns is the steadier figure.
    The idle core-seconds meanwhile go to IDLE[name]."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with IdleCores() as idle:
        t = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
        secs = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU.setdefault(name, []).append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    if idle.seconds is not None:
        IDLE.setdefault(name, []).append(idle.seconds)
    if done.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return secs


def x2i_rows(out: Path) -> int:
    return json.loads((out / "manifest.json").read_text())["rows"]


def i2d_rows(out: Path) -> int:
    return sum(pq.ParquetFile(p).metadata.num_rows for p in out.glob("*.parquet")
               if "jpg" in pq.read_schema(p).names)


def precompile() -> None:
    """Byte-compile x2i's packages, as `pip install` does for img2dataset: an editable install has no .pyc
    files, and with PYTHONDONTWRITEBYTECODE set (as on the development machine) every x2i process would
    compile its modules again (~0.15 s a process)."""
    import compileall
    import importlib

    for name in ("x2i", "x2i.builders", "x2i.annotators", "x2i.model"):
        compileall.compile_dir(str(Path(importlib.import_module(name).__file__).parent), quiet=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--urls", type=int, default=2000)
    ap.add_argument("--latency", type=float, default=0.02)
    ap.add_argument("--side", type=int, default=768, help="the source JPEGs' longer side (fitted to 512)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--img2dataset", default=shutil.which("img2dataset"))
    ap.add_argument("--json", default=None)
    ap.add_argument("--baseline-src", default=None)
    a = ap.parse_args()
    precompile()
    work = Path(tempfile.mkdtemp(prefix="x2i-e2e-"))
    bodies = images(a.urls, side=a.side)
    queue = multiprocessing.get_context("fork").Queue()
    server = multiprocessing.get_context("fork").Process(target=serve, args=(bodies, a.latency, queue), daemon=True)
    server.start()
    base = f"http://127.0.0.1:{queue.get(timeout=30)}"
    urls = work / "urls.parquet"
    pq.write_table(pa.table({"URL": [f"{base}/img/{i}.jpg" for i in range(a.urls)],
                             "TEXT": [f"A photo, crop number {i} of a picture" for i in range(a.urls)]}), urls)
    recipe = work / "e2e.yaml"
    recipe.write_text(RECIPE.format(urls=urls, per=-(-a.urls // 2)))
    if a.baseline_src:
        scored = pq.read_table(urls)
        for name, value in (("WIDTH", 768.0), ("HEIGHT", 576.0), ("similarity", 0.3), ("punsafe", 0.0),
                            ("pwatermark", 0.0), ("aesthetic", 5.0)):
            scored = scored.append_column(name, pa.array([value] * a.urls, pa.float64()))
        pq.write_table(scored, work / "scored.parquet")
        (work / "baseline.yaml").write_text(RECIPE.format(urls=work / "scored.parquet", per=-(-a.urls // 2)))
    x2i = str(Path(sys.executable).with_name("x2i"))
    env = {**os.environ, "X2I_CACHE": str(work / "cache")}
    times: dict[str, list[float]] = {"x2i": [], "x2i_420": [], "img2dataset": [], "x2i_baseline": []}
    rows = {}
    for r in range(a.repeats):
        if a.baseline_src:
            out = work / f"base-{r}"
            base_env = {**env, "PYTHONPATH": a.baseline_src}
            times["x2i_baseline"].append(run([sys.executable, "-m", "x2i.cli.main", "build", "--recipe",
                                              str(work / "baseline.yaml"), "-o", str(out), "-q", "--workers", "2"],
                                             base_env, "x2i_baseline", cwd=a.baseline_src))
            rows["x2i_baseline"] = x2i_rows(out)
        out = work / f"x2i-{r}"
        times["x2i"].append(run([x2i, "build", "--recipe", str(recipe), "-o", str(out), "-q", "--workers", "2"],
                                env, "x2i"))
        rows["x2i"] = x2i_rows(out)
        out = work / f"x2i-420-{r}"
        times["x2i_420"].append(run([x2i, "build", "--recipe", str(recipe), "-o", str(out), "-q", "--workers", "2",
                                     "--set", "output.jpeg_subsampling=4:2:0"], env, "x2i_420"))
        rows["x2i_420"] = x2i_rows(out)
        if a.img2dataset:
            out = work / f"i2d-{r}"
            times["img2dataset"].append(run([
                a.img2dataset, "--url_list", str(urls), "--input_format", "parquet", "--url_col", "URL",
                "--caption_col", "TEXT", "--output_format", "parquet", "--output_folder", str(out),
                "--processes_count", "2", "--thread_count", "16", "--image_size", "512",
                "--resize_mode", "keep_ratio_largest", "--resize_only_if_bigger", "True", "--encode_quality", "95",
                "--disallowed_header_directives", "[]", "--timeout", "10", "--retries", "0",
                "--number_sample_per_shard", str(-(-a.urls // 2)), "--enable_wandb", "False",
                "--distributor", "multiprocessing"], name="img2dataset"))
            rows["img2dataset"] = i2d_rows(out)
    server.terminate()
    res = {"urls": a.urls, "side": a.side, "latency_s": a.latency, "load": os.getloadavg(), "rows": rows,
           "seconds": {k: round(statistics.median(v), 2) for k, v in times.items() if v},
           "all_seconds": {k: [round(x, 2) for x in v] for k, v in times.items()}}
    res["urls_per_s"] = {k: round(a.urls / s, 1) for k, s in res["seconds"].items()}
    res["cpu_seconds"] = {k: round(statistics.median(v), 2) for k, v in CPU.items() if v}
    res["idle_core_seconds"] = {k: round(statistics.median(v), 2) for k, v in IDLE.items() if v}
    if "img2dataset" in res["cpu_seconds"]:
        res["x2i_over_img2dataset_cpu"] = round(res["cpu_seconds"]["img2dataset"] / res["cpu_seconds"]["x2i"], 2)
        res["x2i_420_over_img2dataset_cpu"] = round(res["cpu_seconds"]["img2dataset"]
                                                    / res["cpu_seconds"]["x2i_420"], 2)
    if "x2i_baseline" in res["cpu_seconds"]:
        res["x2i_over_baseline_cpu"] = round(res["cpu_seconds"]["x2i_baseline"] / res["cpu_seconds"]["x2i"], 2)
    if "img2dataset" in res["seconds"]:
        res["x2i_over_img2dataset"] = round(res["seconds"]["img2dataset"] / res["seconds"]["x2i"], 2)
        res["x2i_420_over_img2dataset"] = round(res["seconds"]["img2dataset"] / res["seconds"]["x2i_420"], 2)
    if "x2i_baseline" in res["seconds"]:
        res["x2i_over_baseline"] = round(res["seconds"]["x2i_baseline"] / res["seconds"]["x2i"], 2)
    report(res, a.json, work)


if __name__ == "__main__":
    main()
