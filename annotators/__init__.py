"""Annotators: images in, condition images out (edges, depth, pose, segmentation) behind one interface.

`ANNOTATORS` maps a name to its class ("module:Class", imported on use so `x2i --help` never imports torch)
and a preset of options; one class can serve several names (e.g. the transformers depth estimators).
`get(name, ...)` builds an annotator once per process and configuration, so several partitions in one worker
share one loaded model. See docs/annotators.md.
"""
from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from typing import Any

from .base import Annotation, Annotator, AnnotatorError
from .weights import ENV_DIR, MissingWeights, ResolvedWeights, WeightSpec, fetch, resolve


@dataclass(frozen=True)
class Entry:
    target: str  # "module:Class"
    preset: dict[str, Any] = field(default_factory=dict)


ANNOTATORS: dict[str, Entry] = {
    # edges
    "canny": Entry("x2i.annotators.edges:Canny"),
    "lineart_standard": Entry("x2i.annotators.edges:LineartStandard"),
    "hed": Entry("x2i.annotators.edges:HED"),
    "lineart": Entry("x2i.annotators.edges:Lineart"),
    # depth
    "depth_midas": Entry("x2i.annotators.depth:MidasDepth"),
    "depth_dpt": Entry("x2i.annotators.depth:TransformersDepth", {"repo": "Intel/dpt-large"}),
    "depth_anything": Entry("x2i.annotators.depth:TransformersDepth",
                            {"repo": "depth-anything/Depth-Anything-V2-Small-hf"}),
    # pose
    "openpose": Entry("x2i.annotators.pose:OpenPose"),
    "openpose_full": Entry("x2i.annotators.pose:OpenPose", {"include_hand": True, "include_face": True}),
    # segmentation
    "seg_upernet": Entry("x2i.annotators.segmentation:SemanticSegmentation"),
    "sam": Entry("x2i.annotators.segmentation:SamBoxMasks"),
    "grabcut": Entry("x2i.annotators.subjects:GrabCutBoxMasks"),
    # open-vocabulary detection
    "grounding_dino": Entry("x2i.annotators.subjects:GroundingDinoDetector"),
}

_CACHE: dict[str, Annotator] = {}


def annotator_class(name: str) -> type[Annotator]:
    if name not in ANNOTATORS:
        raise AnnotatorError(f"unknown annotator {name!r}; known: {', '.join(sorted(ANNOTATORS))}")
    module, cls = ANNOTATORS[name].target.split(":")
    return getattr(importlib.import_module(module), cls)


def create(name: str, options: dict[str, Any] | None = None, device: str = "cpu", weights: str | None = None,
           batch_size: int | None = None) -> Annotator:
    """A new annotator (weights are resolved and loaded lazily, on first use)."""
    return annotator_class(name)(name, options, device, weights, ANNOTATORS[name].preset, batch_size)


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
