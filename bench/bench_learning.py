"""Proof that the trainer learns: build the shapes-world mix with x2i, train a tiny OmniGen on CPU, generate images
for held-out prompts and check the dominant colour and the shape class against each prompt.

    python bench/bench_learning.py                      # the recorded figure (docs/benchmarks.md, ## Training)
    python bench/bench_learning.py --steps 100 --prompts 24   # a quicker, weaker run

Everything goes through the CLI a user runs (README: "Training on the shapes world"):
    x2i build --task shapes-text-to-image   (64 px single-shape scenes, the text-to-image recipe on LAION format)
    x2i build --task shapes-image-edit      (64 px edit sessions with exact change masks, MagicBrush format)
    x2i train --mix shapes --model tiny     (manifests/mix_shapes.yaml: 0.8 text-to-image, 0.2 image-edit, and
                                             the training settings it was tuned with)
then generation (x2i.model.trained.load_trained: Euler, classifier-free guidance with the empty negative prompt
the model was trained with) and x2i.model.shapes_check. Chance is 1/6 for colour and 1/4 for shape. The checker's
own accuracy on real renders of the same data is printed first, so a low figure can be told from a bad checker.
Output: a JSON line with the figures, and WORK/grid.png (every generated image with its verdict).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=cwd, env=env, check=True)
    return time.perf_counter() - t0


def prompts(n: int, seed: int) -> list[str]:
    """n captions in the data's own form, cycling through every colour x shape pair (sizes and backgrounds
    drawn), in a fixed order."""
    import numpy as np

    from x2i.shapes.world import BACKGROUNDS, COLORS, SHAPES, SIZES

    rng = np.random.default_rng([seed, 99])
    pairs = [(c, s) for c in COLORS for s in SHAPES]
    out = []
    for i in range(n):
        color, shape = pairs[i % len(pairs)]
        size = list(SIZES)[int(rng.integers(len(SIZES)))]
        background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
        article = "An" if size[0] in "aeiou" else "A"
        out.append(f"{article} {size} {color} {shape} on a {background} background.")
    return out


def checker_on_data(data_dir: Path, limit: int = 300) -> dict[str, float]:
    from x2i.core.imageio import decode
    from x2i.model.testing.shapes_check import accuracy, check
    from x2i.engine.shards import iter_rows, shard_files

    verdicts = []
    for path in shard_files(data_dir):
        for row in iter_rows(path, columns=["instruction", "output_image"]):
            verdicts.append(check(decode(row["output_image"]["bytes"]), row["instruction"]))
            if len(verdicts) >= limit:
                return accuracy(verdicts)
    return accuracy(verdicts)


def save_grid(images, texts, verdicts, path: Path, per_row: int = 8) -> None:
    from PIL import Image, ImageDraw

    cell_w, cell_h, scale = 168, 200, 2
    rows = (len(images) + per_row - 1) // per_row
    grid = Image.new("RGB", (per_row * cell_w, rows * cell_h), "white")
    draw = ImageDraw.Draw(grid)
    for i, (im, text, v) in enumerate(zip(images, texts, verdicts)):
        x, y = (i % per_row) * cell_w, (i // per_row) * cell_h
        grid.paste(im.resize((im.width * scale, im.height * scale), Image.Resampling.NEAREST), (x + 20, y + 4))
        words = text.replace(" background.", "").split()
        draw.text((x + 4, y + 136), " ".join(words[1:4]), fill="black")
        draw.text((x + 4, y + 150), " ".join(words[4:]), fill="gray")
        mark = "ok" if v.both_ok else ("colour ok" if v.color_ok else "wrong")
        draw.text((x + 4, y + 166), f"got {v.color} {v.shape}: {mark}", fill="green" if v.both_ok else "red")
    grid.save(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/x2i-bench-learning"))
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: the mix's)")
    ap.add_argument("--prompts", type=int, default=192, help="held-out prompts (8 per colour x shape pair)")
    ap.add_argument("--guidance", type=float, default=9.0,
                    help="classifier-free guidance scale (chosen among 3, 4.5, 6, 9 on --prompt-seed 0 prompts)")
    ap.add_argument("--sample-steps", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0, help="training seed")
    ap.add_argument("--prompt-seed", type=int, default=1, help="held-out prompts (sizes, backgrounds) and noise")
    ap.add_argument("--model-dir", default="final-ema", help="final or final-ema")
    ap.add_argument("--retrain", action="store_true", help="train again even when WORK/run holds a model")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="passed to x2i train --set (repeatable), e.g. codec.pca_factor=4")
    ap.add_argument("--device", default=None,
                    help="train and generate here (default: training picks CUDA when present, generation on CPU)")
    ap.add_argument("--limit", type=int, default=None,
                    help="build from the first N source records of each task only (smoke runs)")
    ap.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = ap.parse_args()

    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "X2I_CACHE": os.environ.get("X2I_CACHE", str(work / "cache"))}
    x2i = [sys.executable, "-m", "x2i.cli.main"]
    times = {}
    for task in ("shapes-text-to-image", "shapes-image-edit"):
        out = work / "out" / task
        if not (out / "manifest.json").is_file():
            limit = ["--limit", str(args.limit)] if args.limit else []
            times[f"build {task}"] = run(x2i + ["build", "--task", task, "--out", str(out), "-q"] + limit, work, env)
    print("checker on the built text-to-image rows:", checker_on_data(work / "out" / "shapes-text-to-image"))

    run_dir = work / "run"
    if args.retrain or not (run_dir / args.model_dir / "model.safetensors").is_file():
        import shutil

        shutil.rmtree(run_dir, ignore_errors=True)
        cmd = x2i + ["train", "--mix", "shapes", "--model", "tiny", "--out", str(run_dir), "-q",
                     "--set", f"seed={args.seed}"]
        if args.steps is not None:
            cmd += ["--steps", str(args.steps)]
        if args.device:
            cmd += ["--set", f"device={args.device}"]
        for item in args.overrides:
            cmd += ["--set", item]
        times["train"] = run(cmd, work, env)

    import torch

    from x2i.model.inference.pipeline import load_trained
    from x2i.model.testing.shapes_check import accuracy, check

    t0 = time.perf_counter()
    pipe = load_trained(run_dir / args.model_dir, device=args.device or "cpu")
    texts = prompts(args.prompts, args.prompt_seed)
    images = []
    for start in range(0, len(texts), 32):
        chunk = texts[start:start + 32]
        images += pipe(chunk, height=64, width=64, steps=args.sample_steps, guidance_scale=args.guidance,
                       negative_prompt="", seed=args.prompt_seed * 1000 + start)
    verdicts = [check(im, t) for im, t in zip(images, texts)]
    times["generate+check"] = time.perf_counter() - t0
    result = {"accuracy": accuracy(verdicts), "chance": {"color": 1 / 6, "shape": 1 / 4},
              "seconds": {k: round(v, 1) for k, v in times.items()}, "torch_threads": torch.get_num_threads(),
              "model": args.model_dir, "guidance": args.guidance, "sample_steps": args.sample_steps,
              "no_shape_drawn": sum(v.color is None for v in verdicts)}
    steps_log = [json.loads(line) for line in open(run_dir / "log.jsonl")]
    result["train"] = {"steps": steps_log[-1]["step"], "final_loss": round(steps_log[-1]["loss"], 4),
                       "mix": steps_log[-1]["mix"]}
    save_grid(images, texts, verdicts, work / "grid.png")
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    print(f"grid: {work / 'grid.png'}")


if __name__ == "__main__":
    main()
