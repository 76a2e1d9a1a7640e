"""LoRA through peft on the decoder's attention projections (the fused `qkv_proj` and `o_proj`).

An adapter is saved in peft's own format (adapter_config.json + adapter_model.safetensors), so peft and other
tools read it; `merge_lora` folds it into the base weights, giving a plain OmniGen that saves as a normal
checkpoint (`x2i.model.modeling.checkpoint.save_model`).
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from x2i.core.errors import X2IError

from ..modeling.transformer import OmniGen

DEFAULT_TARGETS = ("qkv_proj", "o_proj")


def add_lora(model: OmniGen, rank: int, alpha: float | None = None, dropout: float = 0.0,
             targets: tuple[str, ...] | list[str] = DEFAULT_TARGETS, extra_trainable: list[str] | None = None):
    """Wrap `model` in a peft model whose only trainable parameters are the LoRA matrices (plus the whole
    modules named in `extra_trainable`, e.g. `final_layer`). B starts at zero: the wrapped model computes
    exactly what the base model does until it trains."""
    from peft import LoraConfig, get_peft_model

    if rank < 1:
        raise X2IError(f"LoRA rank must be >= 1, got {rank}")
    config = LoraConfig(r=rank, lora_alpha=alpha if alpha is not None else rank, lora_dropout=dropout,
                        target_modules=list(targets), modules_to_save=list(extra_trainable or []) or None,
                        bias="none")
    return get_peft_model(model, config)


def is_lora(model: nn.Module) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def save_adapter(peft_model, directory: str | Path) -> Path:
    directory = Path(directory)
    peft_model.save_pretrained(str(directory), safe_serialization=True)
    return directory


def load_adapter(model: OmniGen, directory: str | Path, trainable: bool = False):
    """A base model with a saved adapter attached (frozen unless `trainable`)."""
    from peft import PeftModel

    directory = Path(directory)
    if not (directory / "adapter_config.json").is_file():
        raise X2IError(f"no LoRA adapter in {directory} (adapter_config.json not found)")
    return PeftModel.from_pretrained(model, str(directory), is_trainable=trainable)


def merge_lora(peft_model) -> OmniGen:
    """The base model with W + (alpha / r) B A folded into each adapted weight; the adapter is removed."""
    return peft_model.merge_and_unload()


def unwrap(model: nn.Module) -> nn.Module:
    """The module under DDP / torch.compile wrappers (a peft model stays a peft model)."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def base_omnigen(model: nn.Module) -> OmniGen:
    """The OmniGen under every wrapper, peft's included (its adapted layers stay in place)."""
    model = unwrap(model)
    if is_lora(model):
        model = model.get_base_model()
    if not isinstance(model, OmniGen):
        raise TypeError(f"expected an OmniGen model, got {type(model).__name__}")
    return model
