"""Curation steps usable in any recipe (registered in x2i.builders.STEPS; see docs/curation.md):
filters.py (caption_clean, meta_threshold, size_filter), dedup.py (dedup, with its post-build pass),
scores.py (aesthetic, clip_score), models.py (weight lookup and loading), random_weights.py (test/bench models)."""
