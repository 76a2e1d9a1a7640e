"""Setting a run up: its folder (configuration checks, tokenizer), its model and codec, the learning-rate schedule.

Split from loop.py, which holds the Trainer: these functions decide what a run starts from; the loop, what it does.
"""
from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path
from typing import Any

import torch

from x2i.core.config import to_dict
from x2i.core.errors import X2IError

from ..inference.tokenizer import build_tiny_tokenizer
from ..modeling.checkpoint import detect_layout, load_model
from ..modeling.config import PRESETS, OmniGenConfig, build_config
from ..modeling.transformer import OmniGen
from . import dist as xdist
from .config import TrainConfig
from .dist import DistInfo
from .mix import Mix
from .state import list_checkpoints

# Settings a resumed run may change; anything else must match the run it continues.
RESUMABLE_CHANGES = {"steps", "log_every", "save_every", "keep_checkpoints", "tensorboard", "progress", "device",
                     "export"}


def lr_factor(step: int, c: TrainConfig) -> float:
    """Linear warmup from 0, then constant or cosine down to min_lr_ratio."""
    o = c.optim
    if step < o.warmup_steps:
        return (step + 1) / o.warmup_steps
    if o.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - o.warmup_steps) / max(1, c.steps - o.warmup_steps))
    return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def config_diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """The settings that differ (dotted paths), except those a resumed run may change."""
    out = []
    for key in sorted(set(old) | set(new)):
        path = f"{prefix}{key}"
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_diff(a, b, path + ".")
        elif a != b and path not in RESUMABLE_CHANGES:
            out.append(f"{path}: {a!r} -> {b!r}")
    return out


def prepare_run_dir(c: TrainConfig, mix: Mix, info: DistInfo, resume: bool) -> Path:
    """Check a run folder may be (re)used with this configuration; on rank 0 write config.yaml, mix.json and the
    tokenizer (copied, fitted or built). Returns the tokenizer folder. Collective: every rank calls it."""
    run_dir = Path(c.run_dir)
    existing = list_checkpoints(run_dir)
    if existing and not resume:
        raise X2IError(f"{run_dir} already holds checkpoints (latest {existing[-1].name}): pass --resume "
                       "to continue that run, or choose another run folder")
    if resume and not existing:
        raise X2IError(f"--resume: no checkpoint in {run_dir / 'checkpoints'}")
    new = to_dict(c)
    if resume and (run_dir / "config.yaml").is_file():
        import yaml

        old = yaml.safe_load((run_dir / "config.yaml").read_text())
        changed = config_diff(old, new)
        if changed:
            raise X2IError(f"--resume with a different configuration than {run_dir / 'config.yaml'}: "
                           + "; ".join(changed))
    tokenizer_dir = run_dir / "tokenizer"
    if info.is_main:
        import yaml

        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(new, sort_keys=False))
        (run_dir / "mix.json").write_text(json.dumps(
            {"name": mix.config.name, "streams": [{"name": s.name, "task": s.task, "rows": s.rows,
                                                   "target_ratio": s.weight, "group": s.group}
                                                  for s in mix.streams],
             "notes": mix.notes, "fingerprint": mix.fingerprint()}, indent=1))
        if not (tokenizer_dir / "tokenizer.json").is_file():
            source = c.model.tokenizer or (
                detect_layout(c.model.init).tokenizer_dir if c.model.init else None)
            if source == "fit":
                from .fit_tokenizer import fit_tokenizer, mix_instructions

                if c.model.init:
                    raise X2IError("model.tokenizer: fit is for fresh models; a checkpoint brings its own")
                vocab = c.model.overrides.get("vocab_size", PRESETS[c.model.preset].get("vocab_size"))
                fit_tokenizer(mix_instructions(mix), tokenizer_dir, int(vocab or 32064))
            elif source is not None:
                shutil.copytree(source, tokenizer_dir, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("*.safetensors", "*.bin", "vae", "transformer"))
            else:
                build_tiny_tokenizer(tokenizer_dir)
    xdist.all_reduce([0.0], info.device)  # everyone waits for the run folder
    return tokenizer_dir


def fit_pca_codec(c: TrainConfig, mix: Mix, info: DistInfo):
    """A patch-PCA codec for this run: fitted once on the mix by rank 0 into <run>/codec, loaded after."""
    from ..codecs.patch_pca import PatchPCACodec
    from .codec import sample_images

    folder = Path(c.run_dir) / "codec"
    pca = c.codec
    if info.is_main and not (folder / "codec.json").is_file():
        side = int(math.isqrt(c.loader.max_pixels)) // pca.pca_factor * pca.pca_factor
        images = sample_images(mix, (side, side), pca.pca_images, c.seed)
        PatchPCACodec.fit(images, pca.pca_factor, pca.pca_components, pca.pca_whiten).save(folder)
    xdist.all_reduce([0.0], info.device)
    return PatchPCACodec.load(folder)


def build_model(run: TrainConfig, codec) -> tuple[OmniGenConfig, OmniGen]:
    """The model to train: the `init` checkpoint in fp32, or a fresh preset (with overrides) fitted to the codec."""
    c = run.model
    if c.init:
        model = load_model(c.init, dtype=torch.float32)  # fp32 master weights whatever the file holds
        if model.config.in_channels != codec.latent_channels:
            raise X2IError(f"{c.init} expects {model.config.in_channels} latent channels, the codec gives "
                           f"{codec.latent_channels}")
        return model.config, model
    if c.preset not in PRESETS:
        raise X2IError(f"unknown model preset {c.preset!r}; known: {sorted(PRESETS)}")
    unknown = sorted(set(c.overrides) - {f.name for f in dataclasses.fields(OmniGenConfig)})
    if unknown:
        raise X2IError(f"model.overrides: {unknown} are not OmniGenConfig fields")
    # The preset builder makes stand-in LongRoPE factors for the (possibly overridden) head size.
    try:
        config = build_config(**{**PRESETS[c.preset], **c.overrides, "in_channels": codec.latent_channels})
    except (TypeError, ValueError) as exc:
        raise X2IError(f"model.overrides: {exc}") from None
    torch.manual_seed(run.seed)
    return config, OmniGen(config)
