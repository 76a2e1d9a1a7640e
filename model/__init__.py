"""The reference OmniGen model (installed as x2i.model).

Modules:
    config      OmniGenConfig, size presets ("tiny", "small", "omnigen-v1"), config.json readers
    layers      the Phi-3 decoder (RMSNorm, LongRoPE, fused-qkv attention, SwiGLU MLP)
    omnigen     OmniGen (embedders, sequence, mask, final layer), Condition, the condition KV cache
    processor   prompt template, placeholders, image preprocessing, CFG branches -> Condition batches
    tokenizer   the checkpoint's tokenizer.json; a tiny locally built tokenizer
    vae         image codecs (diffusers AutoencoderKL, a weight-free PixelCodec), latent scaling
    flow        rectified flow: training times and loss, sampling times, guidance
    checkpoint  finding, loading (ours / official / diffusers layouts) and saving weights, safetensors only
    pipeline    OmniGenPipeline: generation with guidance and the cache
    tiny        random-weight checkpoints for tests, benchmarks and CPU training

Training without the pipeline:
    cond = processor(instructions, images_per_sample)                  # Condition with pixels
    cond = encode_condition_images(cond, codec)                        # + latents
    loss = flow_matching_loss(model, cond, target_latents).mean()      # model(cond, x_t, t) -> velocity

Names below import lazily so `import x2i.model` stays cheap.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "OmniGenConfig": "config", "preset": "config",
    "OmniGen": "omnigen", "Condition": "omnigen", "ConditionCache": "omnigen",
    "Processor": "processor", "CFGBatch": "processor",
    "TextTokenizer": "tokenizer", "build_tiny_tokenizer": "tokenizer",
    "DiffusersVAE": "vae", "PixelCodec": "vae", "load_vae": "vae",
    "flow_matching_loss": "flow", "guide": "flow",
    "load_model": "checkpoint", "save_model": "checkpoint", "resolve_model_dir": "checkpoint",
    "OmniGenPipeline": "pipeline", "encode_condition_images": "pipeline",
    "make_tiny_checkpoint": "tiny", "random_model": "tiny",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
