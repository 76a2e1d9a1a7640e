"""Training checkpoints with exact resume, and the EMA of the trained weights.

A checkpoint `<run>/checkpoints/step-NNNNNNN/` holds, all as safetensors + JSON (never pickle):
    model.safetensors + config.json   the trained weights in full precision (LoRA runs: only the trainable ones)
    ema.safetensors                   the EMA of the trained weights (when EMA is on)
    optimizer.safetensors             AdamW moments per parameter name; optimizer.json: param groups, step counts
    rng.safetensors                   every rank's torch RNG states (global CPU/CUDA and the loss noise generator)
    state.json                        step, every loader consumer's position, samples per stream, skipped rows
State dicts are gathered as full, CPU-offloaded tensors with torch.distributed.checkpoint.state_dict, so one
format serves single-process, DDP and FSDP runs, and a run may resume under another strategy with the same world
size (the loader positions are per rank and worker). Writing goes to a hidden folder renamed into place: a
checkpoint either exists whole or not at all, and a crash during a save leaves the previous one intact.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .dist import gather_objects

PREFIX = "step-"
# The trainer's wrapper module (dist.TrainModule) adds this to every name; files hold the model's own names, so
# a full fine-tuning checkpoint's model.safetensors + config.json load with x2i.model.modeling.checkpoint.load_model.
PARAM_PREFIX = "model."


class EMA:
    """fp32 exponential moving average of the trainable parameters (local shards under FSDP)."""

    def __init__(self, named_params: list[tuple[str, torch.Tensor]], decay: float):
        self.decay = decay
        self.names = [n for n, _ in named_params]
        self.shadow = [p.detach().float().clone() for _, p in named_params]

    @torch.no_grad()
    def update(self, params: list[torch.Tensor]) -> None:
        torch._foreach_lerp_(self.shadow, [p.detach().float() for p in params], 1.0 - self.decay)

    @torch.no_grad()
    def reset(self, params: list[torch.Tensor]) -> None:
        for s, p in zip(self.shadow, params):
            s.copy_(p.detach().float())

    def full_state(self) -> dict[str, torch.Tensor]:
        """Full tensors on CPU (a collective under FSDP: every rank must call it)."""
        out = {}
        for n, s in zip(self.names, self.shadow):
            full = s.full_tensor() if hasattr(s, "full_tensor") else s
            out[n] = full.detach().cpu().contiguous()
        return out

    @torch.no_grad()
    def load_full_state(self, state: dict[str, torch.Tensor]) -> None:
        missing = [n for n in self.names if n not in state]
        if missing:
            raise ValueError(f"EMA state lacks {missing[:5]}")
        for n, s in zip(self.names, self.shadow):
            full = state[n].to(torch.float32)
            if hasattr(s, "device_mesh"):  # DTensor shard: take this rank's piece of the full tensor
                from torch.distributed.tensor import distribute_tensor

                s.copy_(distribute_tensor(full.to(s.device), s.device_mesh, s.placements))
            else:
                s.copy_(full.to(s.device))


def _flatten_optimizer(osd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, scalars = {}, {}
    for name, entries in osd["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{name}::{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{name}::{key}"] = value
    return tensors, {"param_groups": osd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[str, dict[str, Any]] = {}
    for flat, value in list(tensors.items()) + list(meta["scalars"].items()):
        name, key = flat.rsplit("::", 1)
        state.setdefault(name, {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}




def rng_state(generator: torch.Generator) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state(), "generator": generator.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, torch.Tensor], generator: torch.Generator) -> None:
    torch.set_rng_state(state["cpu"])
    generator.set_state(state["generator"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_checkpoint(run_dir: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                    ema: EMA | None, generator: torch.Generator, state: dict[str, Any],
                    model_config: dict[str, Any], trainable_only: bool, rank: int, keep: int) -> Path:
    """Collective: every rank calls it; rank 0 writes. Returns the checkpoint folder."""
    from safetensors.torch import save_file
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = {k.removeprefix(PARAM_PREFIX): v for k, v in get_model_state_dict(model, options=options).items()}
    osd = get_optimizer_state_dict(model, optimizer, options=options)
    ema_state = ema.full_state() if ema is not None else None
    rngs = gather_objects(rng_state(generator))
    final = run_dir / "checkpoints" / f"{PREFIX}{step:07d}"
    if rank == 0:
        if trainable_only:
            trainable = {n.removeprefix(PARAM_PREFIX) for g in osd["param_groups"] for n in g["params"]}
            weights = {k: v for k, v in weights.items() if k in trainable}
        tmp = final.with_name(f".tmp-{final.name}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp / "model.safetensors"),
                  metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(model_config, indent=2))
        if ema_state is not None:
            save_file(ema_state, str(tmp / "ema.safetensors"))
        tensors, meta = _flatten_optimizer(osd)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        (tmp / "optimizer.json").write_text(json.dumps(meta))
        save_file({f"rank{r}/{k}": v.contiguous() for r, s in enumerate(rngs) for k, v in s.items()},
                  str(tmp / "rng.safetensors"))
        (tmp / "state.json").write_text(json.dumps(state))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def list_checkpoints(run_dir: Path) -> list[Path]:
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith(PREFIX)
                  and (p / "state.json").is_file())


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, ema: EMA | None,
                    generator: torch.Generator, rank: int, trainable_only: bool) -> dict[str, Any]:
    """Restore everything `save_checkpoint` wrote; returns state.json. Every rank reads the files."""
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                         set_optimizer_state_dict)

    options = StateDictOptions(full_state_dict=True, strict=not trainable_only)
    weights = {PARAM_PREFIX + k: v for k, v in load_file(str(path / "model.safetensors")).items()}
    set_model_state_dict(model, weights, options=options)
    osd = _unflatten_optimizer(load_file(str(path / "optimizer.safetensors")),
                               json.loads((path / "optimizer.json").read_text()))
    set_optimizer_state_dict(model, optimizer, osd, options=StateDictOptions(full_state_dict=True))
    if ema is not None:
        if not (path / "ema.safetensors").is_file():
            raise FileNotFoundError(f"{path} has no ema.safetensors but this run uses EMA")
        ema.load_full_state(load_file(str(path / "ema.safetensors")))
    rngs = load_file(str(path / "rng.safetensors"))
    mine = {k.split("/", 1)[1]: v for k, v in rngs.items() if k.startswith(f"rank{rank}/")}
    if mine:
        set_rng_state(mine, generator)
    return json.loads((path / "state.json").read_text())
