"""Training OmniGen straight off built datasets (`x2i train`).

    config          TrainConfig and its sections; load_train_config, resolve_train_config
    mix             mixes of built datasets and their sampling ratios
    buckets         resolution buckets, change masks on the latent grid
    sampler         one loader consumer's deterministic walk through the mix
    loader          MixLoader (batches from Parquet shards, resumable), the latent cache
    loss            the rectified-flow training loss
    loop            Trainer: setup, the optimisation loop, logging, export
    state           training checkpoints (exact resume) and the EMA
    export          the trained model folder a pipeline loads; the run's codec
    lora            LoRA adapters through peft
    dist            process groups, DDP / FSDP2 wrapping
    fit_tokenizer   a BPE tokenizer fitted to a mix's instructions
"""
