"""Annotator throughput: the pipeline vs the raw library call, and batched model throughput (GPU or CPU).

    python bench/annotators.py weight-free [--images 64] [--repeat 3]
    python bench/annotators.py models [--device cuda] [--batch 1,8] [--images 32] [--size 512] [--names ...]

weight-free: Canny and lineart-standard on the same decoded images, three ways, in one run:
  raw        the library call alone (cv2.Canny / controlnet_aux LineartStandardDetector) on numpy arrays;
  annotator  our annotator's batched call on the same images (mode normalisation, size checks, PIL output);
  and, for the whole step, a hand-written script (decode JPEG, raw call, encode PNG) vs x2i's ConditionStep
  (decode, annotate, coverage check, encode PNG, build the Sample) on the same JPEG bytes.
models: each weight-based annotator with random weights at the real architecture size (annotators.random_weights,
  size="real"), batched at each batch size, images of --size px; warm-up batch excluded. Random weights measure
  speed only. Figures go to stdout as a Markdown table.
"""
from __future__ import annotations

import argparse
import io
import tempfile
import time

import numpy as np
from PIL import Image


def _images(n: int, size: int = 512) -> list[Image.Image]:
    """Package photos and shapes scenes, cropped/resized to size x size."""
    from x2i.shapes.photos import PHOTOS
    from x2i.shapes.world import make_scene

    out = []
    for p in PHOTOS:
        im = p.load()
        s = min(im.size)
        out.append(im.crop((0, 0, s, s)).resize((size, size), Image.Resampling.LANCZOS))
    i = 0
    while len(out) < n:
        out.append(make_scene(i, 0, size, size).render())
        i += 1
    return out[:n]


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def weight_free(n: int, repeat: int) -> None:
    import cv2

    from x2i.annotators import create
    from x2i.annotators.base import import_controlnet_aux
    from x2i.builders.vision_control import AnnotatorParams, ConditionStep
    from x2i.core.imageio import encode, load
    from x2i.engine.recipe import OutputConfig
    from x2i.core.sample import SOURCE_TASK, Sample
    from x2i.engine.steps import Context

    import_controlnet_aux()
    from controlnet_aux import LineartStandardDetector

    images = _images(n)
    arrays = [np.asarray(im) for im in images]
    jpegs = [encode(im, "JPEG", 95).data for im in images]
    lsd = LineartStandardDetector()
    raw = {"canny": lambda a: cv2.Canny(a, 100, 200),
           "lineart_standard": lambda a: lsd(a, guassian_sigma=6.0, intensity_threshold=8, detect_resolution=512,
                                             output_type="np")[..., 0]}
    rows = []
    for name, call in raw.items():
        ann = create(name, batch_size=n)
        ann.load()
        t_raw = _best(lambda: [call(a) for a in arrays], repeat)
        t_ann = _best(lambda: ann(images), repeat)

        def script():
            for data in jpegs:
                a = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
                buf = io.BytesIO()
                Image.fromarray(call(a)).save(buf, "PNG", compress_level=1)

        def step():
            samples = [Sample(SOURCE_TASK, "x", load(d), source="bench", source_key=str(i), meta={"caption": "x"})
                       for i, d in enumerate(jpegs)]
            s = ConditionStep("vision", [ann], AnnotatorParams(annotators=[name], min_coverage=0.0), OutputConfig())
            out = list(s.run(samples, Context()))
            assert len(out) == len(samples)

        t_script = _best(script, repeat)
        t_step = _best(step, repeat)
        rows.append((name, n / t_raw, n / t_ann, t_raw / t_ann, n / t_script, n / t_step, t_script / t_step))
    print(f"\n{n} images of 512x512, best of {repeat}, {cv2.getNumThreads()} OpenCV threads\n")
    print("| annotator | raw call img/s | x2i annotator img/s | ratio | script (decode+raw+PNG) img/s "
          "| x2i ConditionStep img/s | ratio |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]:.1f} | {r[2]:.1f} | {r[3]:.2f} | {r[4]:.1f} | {r[5]:.1f} | {r[6]:.2f} |")


def models(device: str, batches: list[int], n: int, size: int, names: list[str], weights_size: str = "real",
           json_path: str | None = None) -> None:
    import json

    import torch

    from x2i.annotators import create, random_weights

    images = _images(n, size)
    print(f"\n{n} images of {size}x{size} on {device} "
          f"({torch.cuda.get_device_name() if device.startswith('cuda') else f'{torch.get_num_threads()} threads'}), "
          f"random weights at {weights_size} architecture size\n")
    print("| annotator | " + " | ".join(f"batch {b} img/s" for b in batches) + " |")
    print("|---|" + "---|" * len(batches))
    results = {"device": device, "images": n, "size": size, "weights": weights_size, "images_per_s": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            d = random_weights.write(name, f"{tmp}/{name}", size=weights_size)
            cells = []
            for b in batches:
                ann = create(name, device=device, weights=str(d), batch_size=b)
                if name == "sam":
                    boxes = [[(size * 0.1, size * 0.1, size * 0.6, size * 0.7)]] * n
                    run = lambda: ann.masks(images, boxes)  # noqa: E731
                    warm = lambda: ann.masks(images[:1], boxes[:1])  # noqa: E731
                else:
                    run = lambda: ann(images)  # noqa: E731
                    warm = lambda: ann(images[:b])  # noqa: E731
                warm()
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                t = time.perf_counter()
                run()
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                cells.append(f"{n / (time.perf_counter() - t):.2f}")
                del ann
            print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
            results["images_per_s"][name] = {f"batch_{b}": float(c) for b, c in zip(batches, cells)}
            if json_path:  # after every annotator, so a run cut short still leaves the first ones
                with open(json_path, "w") as f:
                    json.dump(results, f, indent=1)


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="what", required=True)
    wf = sub.add_parser("weight-free")
    wf.add_argument("--images", type=int, default=64)
    wf.add_argument("--repeat", type=int, default=3)
    m = sub.add_parser("models")
    m.add_argument("--device", default="cuda")
    m.add_argument("--batch", default="1,8")
    m.add_argument("--images", type=int, default=32)
    m.add_argument("--size", type=int, default=512)
    m.add_argument("--names", default="hed,depth_midas,depth_anything,depth_dpt,openpose,seg_upernet,sam")
    m.add_argument("--weights-size", default="real", choices=["real", "tiny"],
                   help="tiny: shrunken transformers configs (smoke runs; controlnet_aux networks stay full size)")
    m.add_argument("--json", default=None, help="also write the figures here")
    a = ap.parse_args()
    if a.what == "weight-free":
        weight_free(a.images, a.repeat)
    else:
        models(a.device, [int(b) for b in a.batch.split(",")], a.images, a.size, a.names.split(","), a.weights_size,
               a.json)


if __name__ == "__main__":
    main()
