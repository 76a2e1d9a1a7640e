"""Generation: instructions and input images in, images out.

    tokenizer   the checkpoint's tokenizer.json; a tiny locally built tokenizer
    processor   prompt template, placeholders, image preprocessing, CFG branches -> Condition batches
    scheduler   the flow-matching Euler scheduler (diffusers-style set_timesteps / step) and guidance
    pipeline    OmniGenPipeline: the one way a checkpoint folder (downloaded or trained) becomes a generator
"""
