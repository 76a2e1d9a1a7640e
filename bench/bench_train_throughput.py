"""Training throughput: tokens/s and model FLOPs utilisation (MFU) of the trainer, and whether the loader keeps up.

    # GPU (the issue's benchmark): a 1.0B-parameter OmniGen-shaped model at 512 x 512, bf16, checkpointing off/on
    python bench/bench_train_throughput.py --device cuda --preset 1b --size 512 --batch 8 --steps 40 --workers 8
    # CPU (recorded here): a small model at 128 x 128
    python bench/bench_train_throughput.py --device cpu --preset small --size 128 --batch 4 --steps 12 --workers 2

What runs is the real trainer (`x2i.model.train.Trainer`) on the embedded text-to-image sample built by x2i
(`x2i build --task text-to-image`: 512 px shapes scenes and photos, fitted to --size buckets), with a patch-PCA codec of
SDXL's shape (8x downsampling, 4 latent channels; fitted in seconds, so the codec costs what a VAE encode would
cost at most): 512 x 512 gives 32 x 32 = 1024 output tokens per image, as OmniGen-v1 at 512 px.

Reported per configuration:
- trainer: samples/s and tokens/s over the steps after warm-up (from the run's log.jsonl), the share of step time
  spent waiting for data (`data_wait_frac`), peak GPU memory;
- MFU = model FLOPs / (step time x peak): model FLOPs per step = 6 x N x tokens + 12 x layers x hidden x sum of
  squared sequence lengths (attention), N = parameters outside the token embedding; recomputation under
  checkpointing is not counted (the usual MFU convention). Peak dense bf16 FLOP/s: H100 SXM / H200 989e12,
  H100 PCIe 756e12, A100 312e12, or --peak-tflops;
- loader alone: samples/s of the same loader (same workers) with no model, to compare with the trainer's.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

PRESETS = {
    # ~1.0B parameters: Phi-3-like proportions, 20 layers of 2048.
    "1b": dict(hidden_size=2048, num_layers=20, num_heads=16, num_kv_heads=16, intermediate_size=5632,
               vocab_size=32064, pad_token_id=0, max_position_embeddings=131072,
               original_max_position_embeddings=4096, pos_embed_max_size=192, pos_embed_base_size=64),
    "small": dict(hidden_size=256, num_layers=4, num_heads=8, num_kv_heads=8, intermediate_size=768),
}
PEAKS = {"H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12, "A100": 312e12}


def peak_flops(device: str, override: float | None) -> float | None:
    if override:
        return override * 1e12
    if not device.startswith("cuda"):
        return None
    import torch

    name = torch.cuda.get_device_name()
    for key in sorted(PEAKS, key=len, reverse=True):
        if key in name:
            return PEAKS[key]
    return None


def build_data(work: Path, limit: int | None = None) -> Path:
    """The text-to-image recipe on the embedded sample, as shipped: 512 px shapes scenes and package photos
    (the first `limit` source records only, for a quick smoke run)."""
    out = work / "t2i"
    if not (out / "manifest.json").is_file():
        env = {**os.environ, "X2I_CACHE": os.environ.get("X2I_CACHE", str(work / "cache"))}
        subprocess.run([sys.executable, "-m", "x2i.cli.main", "build", "--task", "text-to-image", "--out", str(out),
                        "-q"] + (["--limit", str(limit)] if limit else []), check=True, env=env)
    mix = work / "mix.yaml"
    mix.write_text(f"name: bench\nseed: 0\ndatasets:\n  - {{path: {out}}}\n")
    return mix


def loader_throughput(trainer, batches: int) -> float:
    from x2i.model.training.loader import make_dataloader

    it = iter(make_dataloader(trainer.dataset))
    next(it)  # workers started
    t0, n = time.perf_counter(), 0
    for _ in range(batches):
        n += len(next(it))
    return n / (time.perf_counter() - t0)


def loader_table(args, mix: Path) -> None:
    """The loader alone: decode, fit to the bucket, tokenize, collate; latents not computed."""
    from x2i.core.config import from_dict
    from x2i.model.inference.processor import Processor
    from x2i.model.inference.tokenizer import build_tiny_tokenizer
    from x2i.model.training.loader import Geometry, LoaderConfig, MixLoader, make_dataloader
    from x2i.model.training.mix import load_mix

    tokenizer = build_tiny_tokenizer(args.work / "tokenizer")
    m = load_mix(mix)
    print("| workers | samples/s | batches/s |")
    print("|---|---|---|")
    for workers in range(args.workers + 1):
        config = from_dict(LoaderConfig, {"batch_size": args.batch, "max_pixels": args.size * args.size,
                                          "num_workers": workers, "max_input_side": args.size})
        loader = make_dataloader(MixLoader(m, config, Processor(tokenizer), Geometry(8, 2, "bench")))
        it = iter(loader)
        next(it)
        batches = max(8, 4 * workers)
        t0, n = time.perf_counter(), 0
        for _ in range(batches):
            n += len(next(it))
        dt = time.perf_counter() - t0
        print(f"| {workers} | {n / dt:.1f} | {batches / dt:.2f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="1b")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=None, help="steps left out of the figures (default: steps / 4)")
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--checkpointing", choices=["off", "on", "both"], default="both")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--work", type=Path, default=Path("/tmp/x2i-bench-throughput"))
    ap.add_argument("--limit", type=int, default=None, help="build from the first N source records only (smoke runs)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results (a list, one per setting) here")
    ap.add_argument("--loader-only", action="store_true",
                    help="only the loader's samples/s, for 0..--workers worker processes (no model steps)")
    args = ap.parse_args()

    import torch

    from x2i.model.training.config import load_train_config
    from x2i.model.training.loop import Trainer

    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    mix = build_data(work, args.limit)
    if args.loader_only:
        return loader_table(args, mix)
    warmup = args.warmup if args.warmup is not None else max(1, args.steps // 4)
    peak = peak_flops(args.device, args.peak_tflops)
    results = []
    for ckpt in (["off", "on"] if args.checkpointing == "both" else [args.checkpointing]):
        run = work / f"run-{args.preset}-{args.size}-{ckpt}"
        shutil.rmtree(run, ignore_errors=True)
        config = load_train_config(base={
            "mix": str(mix), "run_dir": str(run), "steps": args.steps, "device": args.device,
            "precision": args.precision, "log_every": 1, "save_every": 10 ** 9, "tensorboard": False, "export": False,
            "progress": False, "model": {"preset": "tiny", "overrides": PRESETS[args.preset],
                                          "gradient_checkpointing": ckpt == "on"},
            "codec": {"kind": "pca", "pca_factor": 8, "pca_components": 4, "pca_images": 64, "pca_whiten": False},
            "loader": {"batch_size": args.batch, "max_pixels": args.size * args.size, "num_workers": args.workers,
                       "max_input_side": args.size, "dropout": {"both": 0.0, "text": 0.0}},
            "optim": {"lr": 1e-5, "warmup_steps": 1}})
        trainer = Trainer(config)
        base = trainer.module.model
        n_params = sum(p.numel() for n, p in base.named_parameters() if "embed_tokens" not in n)
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        trainer.train()
        wall = time.perf_counter() - t0
        log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()][warmup:]
        step_time = sum(r["step_time_s"] for r in log) / len(log)
        samples = sum(r["samples_per_s"] * r["step_time_s"] for r in log)
        tokens = sum(r["tokens_per_s"] * r["step_time_s"] for r in log)
        seq = tokens / max(samples, 1)
        cfg = trainer.model_config
        flops_per_token = 6 * n_params + 12 * cfg.num_layers * cfg.hidden_size * seq
        tokens_per_s = tokens / (step_time * len(log))
        loader_sps = loader_throughput(trainer, max(4, 2 * args.workers))
        result = {"preset": args.preset, "params_non_embedding": n_params, "size": args.size, "batch": args.batch,
                  "checkpointing": ckpt, "device": torch.cuda.get_device_name() if args.device.startswith("cuda")
                  else f"cpu x{torch.get_num_threads()} threads",
                  "precision": "bf16" if trainer.bf16 else "fp32", "seq_len": round(seq, 1),
                  "step_time_s": round(step_time, 4), "samples_per_s": round(samples / (step_time * len(log)), 2),
                  "tokens_per_s": round(tokens_per_s, 1),
                  "data_wait_frac": round(sum(r["data_wait_frac"] for r in log) / len(log), 4),
                  "loader_only_samples_per_s": round(loader_sps, 1), "wall_s": round(wall, 1)}
        if peak:
            result["mfu"], result["peak_tflops"] = round(flops_per_token * tokens_per_s / peak, 4), peak / 1e12
        if args.device.startswith("cuda"):
            result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)
        results.append(result)
        print(json.dumps(result), flush=True)
        if args.json:  # after every setting, so a run cut short still leaves the first
            args.json.write_text(json.dumps(results, indent=1))
        del trainer
    print("| checkpointing | tokens/s | samples/s | MFU | data wait | loader alone (samples/s) |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['checkpointing']} | {r['tokens_per_s']:.0f} | {r['samples_per_s']:.2f} | "
              f"{r.get('mfu', float('nan')):.1%} | {r['data_wait_frac']:.1%} | {r['loader_only_samples_per_s']} |")


if __name__ == "__main__":
    main()
