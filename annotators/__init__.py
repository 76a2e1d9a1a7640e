"""Annotators: images in, condition images out (edges, depth, pose, segmentation) behind one interface.

Each module registers the names it serves where its classes are defined (`register_annotator("depth_dpt",
TransformersDepth, {"repo": ...})`, x2i/engine/registry.py); one class can serve several names with different
preset options. Importing this package imports those modules, which registers them: pyproject.toml names this
package as an `x2i.plugins` entry point. The modules import torch and model libraries only when an annotator
runs, so listing them stays cheap. `ANNOTATORS` is the registry (iterate it for the names).
`get(name, ...)` builds an annotator once per process and configuration, so several partitions in one worker
share one loaded model. See docs/annotators.md.
"""
from __future__ import annotations

import json
from typing import Any

from x2i.engine.registry import ANNOTATORS

from .base import Annotation, Annotator, AnnotatorError
from .weights import ENV_DIR, MissingWeights, ResolvedWeights, WeightSpec, fetch, resolve

_CACHE: dict[str, Annotator] = {}


def annotator_class(name: str) -> type[Annotator]:
    if name not in ANNOTATORS:
        raise AnnotatorError(ANNOTATORS.unknown(name))
    return ANNOTATORS.get(name).cls


def create(name: str, options: dict[str, Any] | None = None, device: str = "cpu", weights: str | None = None,
           batch_size: int | None = None) -> Annotator:
    """A new annotator (weights are resolved and loaded lazily, on first use)."""
    return annotator_class(name)(name, options, device, weights, ANNOTATORS.get(name).preset, batch_size)


def get(name: str, options: dict[str, Any] | None = None, device: str = "cpu", weights: str | None = None,
        batch_size: int | None = None) -> Annotator:
    """Like `create`, but one instance (and one loaded model) per process and configuration."""
    ann = create(name, options, device, weights, batch_size)
    try:
        where = [str(r.directory) for r in ann.resolve_weights()]
    except MissingWeights:
        where = None  # not cached: the caller sees MissingWeights when it resolves
    key = json.dumps([name, options or {}, ann.device, weights, batch_size, where], sort_keys=True, default=str)
    if where is None:
        return ann
    return _CACHE.setdefault(key, ann)


def availability(name: str, weights: str | None = None) -> tuple[bool, str]:
    """(usable, why not) for an annotator with default options: weights present and libraries importable."""
    try:
        ann = create(name, weights=weights)
        ann.resolve_weights()
    except MissingWeights as exc:
        return False, "missing " + ", ".join(exc.files)
    except ImportError as exc:
        return False, f"cannot import {exc.name or exc}"
    return True, ""


__all__ = ["ANNOTATORS", "Annotation", "Annotator", "AnnotatorError", "ENV_DIR", "MissingWeights",
           "ResolvedWeights", "WeightSpec", "annotator_class", "availability", "create", "fetch", "get", "resolve"]


# Last, since the annotator modules import this package's base classes: importing them registers their names.
from . import depth, edges, pose, segmentation, subjects  # noqa: E402,F401
