"""Where an annotator's weight files come from: explicit path, then `$X2I_ANNOTATOR_DIR/<repo_id>/`, then the
Hugging Face cache. The lookup is x2i.core.weights (shared with curation models and the OmniGen checkpoint); this module
only adds the annotator's name and the `x2i annotators fetch` hint to its messages, and keeps the names the
annotators, builders and CLI import.
"""
from __future__ import annotations

from pathlib import Path

from x2i.core.weights import ENV_VARS, MissingWeights, ResolvedWeights, WeightSpec, fetch
from x2i.core.weights import resolve as _resolve

ENV_DIR = ENV_VARS["annotator"]


def resolve(annotator: str, spec: WeightSpec, explicit: str | Path | None = None) -> ResolvedWeights:
    """The folder holding `spec`'s files, or MissingWeights naming every place looked."""
    hint = (f"Get them with `x2i annotators fetch {annotator}` on a machine with network access (into the "
            f"Hugging Face cache, or `--to DIR` then set {ENV_DIR}=DIR), or download {spec.repo_id} yourself "
            f"and pass the folder as params.weights.{annotator}")
    return _resolve(spec, explicit, who=f"annotator {annotator!r}", hint=hint)


__all__ = ["ENV_DIR", "MissingWeights", "ResolvedWeights", "WeightSpec", "fetch", "resolve"]
