"""The size policy's resampling: OpenCV INTER_AREA (x2i's fit_pil) vs PIL LANCZOS, speed and PSNR, one run.

    python bench/resize_bench.py [--repeats 20] [--threads 1]

Inputs: the five real photos shipped with scikit-image (astronaut, coffee, chelsea, rocket) and matplotlib
(grace_hopper), each upscaled once (PIL LANCZOS) to 2048 px on its longer side as a stand-in for a large web
photo, then fitted to max_side 1024, 512 and 256. Both resamplers are timed alternately on the same images
(best of `--repeats`); PSNR compares fit_pil's pixels with PIL LANCZOS to the same scaled size and crop.
`--threads 1` pins OpenCV to one thread (PIL resizes on one), so the ratio compares like with like.
"reduced_decode": the same photos as JPEG bytes, decoded and fitted in full against `load(fit_side=...)`'s
reduced decode (x2i/core/imageio.py), time and PSNR.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import time

import cv2
import numpy as np
from PIL import Image

from x2i.core.imageio import fit_pil, scaled_size


def photos() -> dict[str, Image.Image]:
    import matplotlib.cbook as cbook
    from skimage import data

    out = {name: Image.fromarray(getattr(data, name)()) for name in ("astronaut", "coffee", "chelsea", "rocket")}
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        out["grace_hopper"] = Image.open(io.BytesIO(f.read())).convert("RGB")
    return out


def pil_fit(im: Image.Image, max_side: int) -> Image.Image:
    _, t = fit_pil(im, max_side)
    scaled = im.resize(scaled_size(im.width, im.height, t.scale), Image.Resampling.LANCZOS, reducing_gap=3.0)
    return scaled.crop((t.crop_left, t.crop_top, t.crop_left + t.width, t.crop_top + t.height))


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def psnr(x: np.ndarray, y: np.ndarray) -> float:
    return float(10 * np.log10(255.0 ** 2 / np.mean((x.astype(np.float64) - y) ** 2)))


def filters() -> list[dict]:
    """Where INTER_LINEAR stops being as close to PIL LANCZOS as INTER_AREA: both filters on the photos at
    their own size, min and mean PSNR against LANCZOS per scale (x2i switches at 2/3)."""
    rows = []
    for scale in (0.5, 0.55, 0.6, 0.67, 0.7, 0.75, 0.85):
        row: dict = {"scale": scale}
        for label, flag in (("linear", cv2.INTER_LINEAR), ("area", cv2.INTER_AREA)):
            values = []
            for im in photos().values():
                size = scaled_size(im.width, im.height, scale)
                ref = np.asarray(im.resize(size, Image.Resampling.LANCZOS))
                values.append(psnr(cv2.resize(np.asarray(im), size, interpolation=flag), ref))
            row[label] = {"min_db": round(min(values), 1), "mean_db": round(float(np.mean(values)), 1)}
        rows.append(row)
        print(json.dumps(row))
    return rows


def at_scales() -> dict[str, list[float]]:
    """fit_pil (the policy as shipped) against PIL LANCZOS on each photo at its own size, per scale."""
    out = {}
    for name, im in photos().items():
        out[name] = []
        for scale in (0.9, 0.75, 0.5, 0.33, 0.25, 0.1):
            max_side = round(max(im.size) * scale)
            mine = np.asarray(fit_pil(im, max_side)[0])
            out[name].append(round(psnr(mine, np.asarray(pil_fit(im, max_side))), 1))
        print(json.dumps({name: out[name]}))
    return out


def reduced_decode(big: dict[str, Image.Image], repeats: int) -> list[dict]:
    """Decode + fit of the 2048 px photos as JPEG bytes (q92): the full decode (`load`) against the reduced one
    (`load(fit_side=...)`: libjpeg's 1/2-1/8 scale, then PIL LANCZOS over the exact box), ms per image and PSNR of
    each against PIL LANCZOS of the full decode."""
    from x2i.core.imageio import fit, fit_pixels, load

    rows = []
    for max_side in (1024, 768, 512, 256):
        t_full = t_reduced = 0.0
        full_db, reduced_db = [], []
        for im in big.values():
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=92)
            data = buf.getvalue()
            ref = np.asarray(pil_fit(load(data).pil(), max_side))
            t_full += best(lambda: fit(load(data), max_side, 16, 95), repeats)
            t_reduced += best(lambda: fit(load(data, fit_side=max_side), max_side, 16, 95), repeats)
            full_db.append(psnr(np.asarray(fit_pixels(load(data), max_side)[0]), ref))
            reduced_db.append(psnr(np.asarray(fit_pixels(load(data, fit_side=max_side), max_side)[0]), ref))
        n = len(big)
        rows.append({"max_side": max_side, "full_ms": round(t_full / n * 1e3, 2),
                     "reduced_ms": round(t_reduced / n * 1e3, 2), "speedup": round(t_full / t_reduced, 2),
                     "full_min_db": round(min(full_db), 1), "reduced_min_db": round(min(reduced_db), 1)})
        print(json.dumps(rows[-1]))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    cv2.setNumThreads(a.threads)
    big = {}
    for name, im in photos().items():
        s = 2048 / max(im.size)
        big[name] = im.resize((round(im.width * s), round(im.height * s)), Image.Resampling.LANCZOS)
    rows = []
    for max_side in (1024, 512, 256):
        t_pil = t_cv = 0.0
        worst = 1e9
        for name, im in big.items():
            t_pil += best(lambda: pil_fit(im, max_side), a.repeats)
            t_cv += best(lambda: fit_pil(im, max_side), a.repeats)
            worst = min(worst, psnr(np.asarray(fit_pil(im, max_side)[0]), np.asarray(pil_fit(im, max_side))))
        n = len(big)
        rows.append({"max_side": max_side, "pil_ms": round(t_pil / n * 1e3, 2), "cv2_ms": round(t_cv / n * 1e3, 2),
                     "pil_over_cv2": round(t_pil / t_cv, 2), "min_psnr_db": round(worst, 1)})
        print(json.dumps(rows[-1]))
    res = {"load": os.getloadavg(), "cv2_threads": a.threads, "rows": rows,
           "reduced_decode": reduced_decode(big, a.repeats), "filters": filters(), "photos": at_scales()}
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
