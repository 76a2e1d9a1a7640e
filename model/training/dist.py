"""Process groups and model wrapping for multi-GPU training with plain PyTorch (torchrun; no accelerate).

- ddp:  DistributedDataParallel over the whole model, fp32 master weights, bf16 autocast in the forward.
- fsdp: FSDP2 (`torch.distributed.fsdp.fully_shard`) per decoder layer, then the root; parameters, gradients
        and optimizer state sharded in fp32; `MixedPrecisionPolicy` gathers parameters in bf16 for compute and
        reduces gradients in fp32.
Both run on CPU with the gloo backend (tests) and on GPUs with NCCL.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from x2i.core.errors import X2IError

from .lora import base_omnigen


@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    strategy: str  # none | ddp | fsdp

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(strategy: str, backend: str | None, device: str | None) -> DistInfo:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if strategy == "auto":
        strategy = "ddp" if world > 1 else "none"
    if strategy in ("ddp", "fsdp") and "WORLD_SIZE" not in os.environ:
        raise X2IError(f"dist.strategy {strategy} needs torchrun: torchrun --nproc_per_node=N -m x2i.cli.main "
                       "train ... (or set dist.strategy=none for one process)")
    if strategy == "none" and world > 1:
        raise X2IError(f"{world} processes with dist.strategy none: use ddp or fsdp")
    if device is None:
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if dev.index is None:  # "cuda": this process's GPU (set_device refuses a device without an index)
            dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if strategy != "none" and not dist.is_initialized():
        dist.init_process_group(backend or ("nccl" if dev.type == "cuda" else "gloo"))
    return DistInfo(rank, world, local_rank, dev, strategy)


class TrainModule(nn.Module):
    """The model as the training step calls it. Rows without input images leave `input_x_embedder` unused; a
    zero-weighted term keeps every trainable parameter in every backward, so DDP needs no unused-parameter
    search and FSDP's gradient reduction has the same tensors on every rank."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, cond, x, t):
        out = self.model(cond, x, t)
        anchor = sum(p.sum() for p in base_omnigen(self.model).input_x_embedder.parameters() if p.requires_grad)
        if isinstance(anchor, torch.Tensor):
            out = out + 0.0 * anchor.to(out.dtype) if isinstance(out, torch.Tensor) else \
                [o + 0.0 * anchor.to(o.dtype) for o in out]
        return out


def wrap(module: TrainModule, info: DistInfo, bf16: bool) -> nn.Module:
    if info.strategy == "none":
        return module
    if info.strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [info.device.index] if info.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids)
    import warnings

    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    # A decoder layer also returns its keys and values (views) for the inference cache; training never writes
    # to them in place, which is what this warning is about.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else \
        MixedPrecisionPolicy()
    for layer in base_omnigen(module.model).llm.layers:
        fully_shard(layer, mp_policy=policy)
    fully_shard(module, mp_policy=policy)
    return module


def all_reduce(values: list[float], device: torch.device, op: str = "sum") -> list[float]:
    """Sum (or max) small lists of numbers over ranks (on `device`: NCCL reduces only GPU tensors)."""
    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return t.tolist()


def cleanup(finished: bool = False) -> None:
    """Tear the process group down. After a finished run (`finished`) every rank waits for the others first:
    rank 0 still saves the final model when the others are done, and a rank that tore its gloo group down while
    a peer still held the connection aborted once in CI ("terminate called without an active exception"). Not
    after a failure: the failed rank would never arrive (torchrun stops the others)."""
    if dist.is_available() and dist.is_initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()


def gather_objects(obj):
    """Every rank's `obj`, in rank order ([obj] when not distributed): resume state and per-rank counters."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
