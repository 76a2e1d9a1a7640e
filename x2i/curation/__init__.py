"""Curation steps usable in any recipe (see docs/curation.md), each registered where it is defined
(`@register_step("dedup")`, x2i/engine/registry.py): filters.py (caption_clean, meta_threshold, size_filter),
dedup.py (dedup, with its post-build pass), scores.py (aesthetic, clip_score), copy_paste.py (copy_paste, with
its post-build rate), models.py (weight lookup and loading), random_weights.py (test/bench models).

Importing this package registers the steps; their heavy imports (torch, open_clip) happen when a step runs."""
from x2i.curation import copy_paste, dedup, filters, scores  # noqa: F401  (registers the steps)
