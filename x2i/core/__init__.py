"""The schema core: one Sample type, the Parquet schema, the prompt format, image IO, boxes and masks, typed
configs, errors and the small helpers every layer uses (safe paths, optional extras, weight lookup)."""
