"""Looking at a built dataset: validate, stats, the gallery, plots, QA notebooks and OmniGen JSONL export."""
