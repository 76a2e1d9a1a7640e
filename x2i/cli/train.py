"""Training command: x2i train."""
from __future__ import annotations

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
    from x2i.model.mix import find_mix_file, load_mix
    from x2i.model.train import TrainingStopped, Trainer
    from x2i.model.train_config import load_train_config

    base: dict = {}
    if mix is not None:
        base["mix"] = mix
    cli_sets = []
    for key, value in (("model.preset", model), ("model.init", str(init) if init else None),
                       ("lora.rank", lora_rank), ("steps", steps), ("loader.batch_size", batch_size),
                       ("optim.lr", lr), ("loader.num_workers", workers), ("device", device),
                       ("precision", precision), ("dist.strategy", strategy),
                       ("model.gradient_checkpointing", checkpointing)):
        if value is not None:
            cli_sets.append((key, value))
    # Precedence: the mix's own `train:` settings < --config file < explicit options < --set.
    from x2i.config import read_yaml, set_dotted
    from x2i.model.mix import load_mix_config
    from x2i.model.train_config import deep_merge

    data = read_yaml(config) if config is not None else {}
    data.update(base)
    if "mix" in data:
        data = deep_merge(load_mix_config(data["mix"]).train, data)
    for key, value in cli_sets:
        set_dotted(data, key, value)
    if "mix" not in data:
        fail("give --mix (or `mix:` in --config)")
    if out is not None:
        data["run_dir"] = str(out)
    elif "run_dir" not in data:
        data["run_dir"] = str(Path("runs") / find_mix_file(data["mix"]).stem.removeprefix("mix_"))
    if quiet:
        data["progress"] = False
    resolved = load_train_config(None, base=data, overrides=overrides)
    mix_obj = load_mix(resolved.mix)
    trainer = Trainer(resolved, resume=resume, mix=mix_obj)
    if trainer.info.is_main:
        typer.echo(mix_obj.report())
        typer.echo(f"run folder: {resolved.run_dir}" + (f" (resuming at step {trainer.step})" if resume else ""))
    if precompute_latents:
        done = trainer.precompute_latents()
        if trainer.info.is_main:
            typer.echo(f"latent cache: {done} samples encoded into {resolved.loader.latent_cache}")
    try:
        summary = trainer.train()
    except TrainingStopped as exc:
        fail(str(exc), code=1)
    except KeyboardInterrupt:
        typer.echo(f"x2i: interrupted; continue from the last checkpoint with: x2i train ... --out "
                   f"{resolved.run_dir} --resume", err=True)
        raise typer.Exit(130) from None
    finally:
        from x2i.model.dist import cleanup

        cleanup()
    if trainer.info.is_main:
        typer.echo(f"done: step {summary['step']}, loss {summary['loss']:.4f}")
        typer.echo("samples per stream (target -> actual):")
        for name, r in summary["mix"].items():
            typer.echo(f"  {name:40s} {r['target']:.3f} -> {r['actual']:.3f}  ({r['samples']} samples)")
        run = Path(resolved.run_dir)
        typer.echo(f"model: {run / 'final'}" + (f", EMA: {run / 'final-ema'}" if resolved.ema.decay > 0 else ""))
        typer.echo(f"logs: {run / 'log.jsonl'}" + (f", tensorboard --logdir {run / 'tb'}" if resolved.tensorboard else ""))


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
