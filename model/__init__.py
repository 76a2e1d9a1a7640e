"""The reference OmniGen model (installed as x2i.model).

Sub-packages:
    modeling    OmniGenConfig and presets, the Phi-3 decoder, OmniGen itself, checkpoint layouts and conversion
    inference   tokenizer, processor, the flow-matching Euler scheduler, OmniGenPipeline
    codecs      image codecs (SDXL-style VAE, pixel, patch-PCA) and the one loader that reads a codec folder
    training    `x2i train`: configuration, mixes and the loader, the loss, the loop, checkpoints, LoRA, DDP/FSDP
    testing     random tiny models and the shapes-world checker, for tests and benchmarks only

Training without the pipeline:
    cond = processor(instructions, images_per_sample)                  # Condition with pixels
    cond = encode_condition_images(cond, codec)                        # + latents
    loss = flow_matching_loss(model, cond, target_latents).mean()      # model(cond, x_t, t) -> velocity

Names below import lazily so `import x2i.model` stays cheap.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "OmniGenConfig": "modeling.config", "preset": "modeling.config",
    "OmniGen": "modeling.transformer", "Condition": "modeling.transformer", "ConditionCache": "modeling.transformer",
    "load_model": "modeling.checkpoint", "save_model": "modeling.checkpoint",
    "resolve_model_dir": "modeling.checkpoint",
    "Processor": "inference.processor", "CFGBatch": "inference.processor",
    "TextTokenizer": "inference.tokenizer", "build_tiny_tokenizer": "inference.tokenizer",
    "FlowMatchEulerScheduler": "inference.scheduler", "guide": "inference.scheduler",
    "OmniGenPipeline": "inference.pipeline", "encode_condition_images": "inference.pipeline",
    "load_trained": "inference.pipeline",
    "DiffusersVAE": "codecs.vae", "PixelCodec": "codecs.pixel", "PatchPCACodec": "codecs.patch_pca",
    "load_codec": "codecs.io",
    "flow_matching_loss": "training.loss",
    "make_tiny_checkpoint": "testing.tiny", "random_model": "testing.tiny",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
