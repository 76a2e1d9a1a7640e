"""Training command: x2i train."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import typer

from x2i.cli.common import fail, user_errors


@user_errors
def train_command(
    mix: Optional[str] = typer.Option(None, "--mix", help="Training mix YAML (manifests/mix_*.yaml) or a shipped mix name, e.g. shapes."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Shape of a fresh model: tiny, small or omnigen-v1."),
    init: Optional[Path] = typer.Option(None, "--init", help="Start from this checkpoint folder (ours, official or diffusers layout)."),
    lora_rank: Optional[int] = typer.Option(None, "--lora-rank", min=0, help="Train LoRA adapters of this rank on qkv/o projections (0: full fine-tuning)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Training config YAML (keys of TrainConfig; see docs/training.md)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run folder (checkpoints, logs, final model). Default: runs/<mix name>."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Optimizer steps."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="Rows per batch per process."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate."),
    workers: Optional[int] = typer.Option(None, "--workers", min=0, help="Loader worker processes per training process."),
    device: Optional[str] = typer.Option(None, "--device", help="cuda, cuda:1, cpu (default: cuda when available)."),
    precision: Optional[str] = typer.Option(None, "--precision", help="auto, bf16 or fp32."),
    strategy: Optional[str] = typer.Option(None, "--strategy", help="auto, none, ddp or fsdp (ddp/fsdp under torchrun)."),
    checkpointing: Optional[bool] = typer.Option(None, "--gradient-checkpointing/--no-gradient-checkpointing", help="Recompute decoder activations in backward."),
    overrides: list[str] = typer.Option([], "--set", help="Override any config key: --set optim.warmup_steps=50 (repeatable)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its latest checkpoint."),
    precompute_latents: bool = typer.Option(False, "--precompute-latents", help="Fill loader.latent_cache with one pass over the mix before training."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Train the reference OmniGen model straight off built datasets (a mix of manifests)."""
    from x2i.model.training.config import resolve_train_config

    options = {"model.preset": model, "model.init": str(init) if init else None, "lora.rank": lora_rank,
               "steps": steps, "loader.batch_size": batch_size, "optim.lr": lr, "loader.num_workers": workers,
               "device": device, "precision": precision, "dist.strategy": strategy,
               "model.gradient_checkpointing": checkpointing}
    resolved = resolve_train_config(mix, config, options, overrides, run_dir=out,
                                    progress=False if quiet else None)
    summary = _train(resolved, resume, precompute_latents)
    if summary is not None:
        typer.echo(_report(summary, resolved))


def _train(resolved, resume: bool, precompute_latents: bool) -> dict | None:
    """Load the mix, (fill the latent cache,) train, and always release the process group. The main process
    prints as it goes and gets the summary; other ranks get None."""
    from x2i.model.training.loop import Trainer, TrainingStopped
    from x2i.model.training.mix import load_mix

    mix_obj = load_mix(resolved.mix)
    trainer = Trainer(resolved, resume=resume, mix=mix_obj)
    if trainer.info.is_main:
        typer.echo(mix_obj.report())
        typer.echo(f"run folder: {resolved.run_dir}" + (f" (resuming at step {trainer.step})" if resume else ""))
    if precompute_latents:
        done = trainer.precompute_latents()
        if trainer.info.is_main:
            typer.echo(f"latent cache: {done} samples encoded into {resolved.loader.latent_cache}")
    finished = False
    try:
        summary = trainer.train()
        finished = True
    except TrainingStopped as exc:
        fail(str(exc), code=1)
    except KeyboardInterrupt:
        typer.echo(f"x2i: interrupted; continue from the last checkpoint with: x2i train ... --out "
                   f"{resolved.run_dir} --resume", err=True)
        raise typer.Exit(130) from None
    finally:
        from x2i.model.training.dist import cleanup

        cleanup(finished)
    return summary if trainer.info.is_main else None


def _report(summary: dict, resolved) -> str:
    """What a finished run printed: loss, samples per stream, where the model and logs are."""
    if summary.get("already_complete"):
        # A resumed run with no steps left trains nothing: its "loss" is the last one the log recorded.
        loss = summary["loss"]
        recorded = "no loss recorded in log.jsonl" if math.isnan(loss) else f"last recorded loss {loss:.4f}"
        head = (f"training is already complete: step {summary['step']} of {resolved.steps}, nothing to train "
                f"({recorded}); raise --steps to train further")
    else:
        head = f"done: step {summary['step']}, loss {summary['loss']:.4f}"
    lines = [head, "samples per stream (target -> actual):"]
    for name, r in summary["mix"].items():
        lines.append(f"  {name:40s} {r['target']:.3f} -> {r['actual']:.3f}  ({r['samples']} samples)")
    run = Path(resolved.run_dir)
    lines.append(f"model: {run / 'final'}" + (f", EMA: {run / 'final-ema'}" if resolved.ema.decay > 0 else ""))
    lines.append(f"logs: {run / 'log.jsonl'}"
                 + (f", tensorboard --logdir {run / 'tb'}" if resolved.tensorboard else ""))
    return "\n".join(lines)


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
