"""The OmniGen network and its checkpoints.

    config        OmniGenConfig, size presets, readers/writers of the three config.json flavours
    layers        the Phi-3 decoder (RMSNorm, LongRoPE, fused-qkv attention, SwiGLU MLP)
    transformer   OmniGen (embedders, sequence, mask, final layer), Condition, the condition KV cache
    checkpoint    checkpoint layouts (ours / official / diffusers), key conversion, loading and saving
"""
