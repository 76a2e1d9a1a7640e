"""Curation throughput: aesthetic score, CLIP score and dedup hashing, batched vs one by one.

Random weights in the real layouts (open_clip hf-hub folder + the predictor's .pth), ViT-B/32-size by default
(`--arch ViT-L-14` for the real aesthetic backbone). Runs on CUDA when available (`--device`), else CPU.

    python bench/curation_bench.py --images 96 --batch 32 [--device cuda] [--arch ViT-B-32] [--json out.json]
"""
from __future__ import annotations

import argparse
import io
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from x2i.curation.dedup import sample_hashes
from x2i.curation.models import pick_device
from x2i.curation.random_weights import TINY_CLIP, model_cfg_of, save_random_clip, save_random_predictor
from x2i.curation.scores import AestheticParams, AestheticStep, ClipScoreParams, ClipScoreStep
from x2i.core.imageio import load
from x2i.core.sample import Sample
from x2i.shapes.world import make_scene
from x2i.engine.steps import Context


def make_samples(n: int, size: int) -> list[bytes]:
    out = []
    for i in range(n):
        buf = io.BytesIO()
        make_scene(i, 0, size, size).render().save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def fresh(blobs: list[bytes]) -> list[Sample]:
    """New samples each run: decoding is part of the cost, as in a build."""
    return [Sample("text_to_image", f"Coloured shapes number {i}.", load(b), source="bench", source_key=str(i))
            for i, b in enumerate(blobs)]


def timed(step, blobs, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        samples = fresh(blobs)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        n = sum(1 for _ in step.run(samples, Context()))
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
        assert n == len(blobs)
    return len(blobs) / best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--arch", default="ViT-B-32", help="an open_clip architecture, or tiny (1 layer, smoke runs)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    device = pick_device(a.device)
    blobs = make_samples(a.images, a.size)
    results: dict = {"device": device, "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None,
                     "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                     "arch": a.arch, "images": a.images, "image_size": a.size, "batch": a.batch,
                     "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TINY_CLIP if a.arch == "tiny" else model_cfg_of(a.arch)
        clip_dir = save_random_clip(Path(tmp) / "clip", cfg)
        pred = save_random_predictor(Path(tmp) / "pred.pth", cfg["embed_dim"])
        common = dict(device=a.device, precision=a.precision)
        for name, make in (
            ("aesthetic", lambda b: AestheticStep(AestheticParams(clip_model=str(clip_dir), predictor=str(pred),
                                                                  batch_size=b, **common))),
            ("clip_score", lambda b: ClipScoreStep(ClipScoreParams(clip_model=str(clip_dir), batch_size=b, **common))),
        ):
            timed(make(a.batch), blobs[: a.batch], 1)  # warm-up: model load, kernels
            batched = timed(make(a.batch), blobs, a.repeat)
            single = timed(make(1), blobs, a.repeat)
            results[name] = {"batched_images_per_s": round(batched, 2), "one_by_one_images_per_s": round(single, 2),
                             "batch_speedup": round(batched / single, 2)}
            print(f"{name:10s} batch={a.batch}: {batched:8.1f} img/s   one-by-one: {single:8.1f} img/s   "
                  f"ratio {batched / single:.2f}x", flush=True)
    samples = fresh(blobs)
    t = time.perf_counter()
    for s in samples:
        sample_hashes(s, want_phash=True)
    rate = len(samples) / (time.perf_counter() - t)
    results["dedup_hashing_images_per_s"] = round(rate, 1)
    print(f"dedup hashing (decode + sha256 + pHash): {rate:.1f} img/s")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
