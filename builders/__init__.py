"""Builders: named lists of steps that turn source samples into X2I task samples.

A builder declares the source formats it reads, its parameter dataclass (recipe `params`, strict keys) and
its steps. Extra steps named in a recipe's `steps:` list (curation, filters) come from `STEPS`. Builders never
import Ray: the executor runs the same steps in-process or in Ray tasks.
"""
from __future__ import annotations

import importlib
from typing import Any

from x2i.core.config import ConfigError, from_dict
from x2i.core.errors import X2IError
from x2i.engine.recipe import Recipe
from x2i.engine.steps import Step

# builder name -> "module:Class" (imported on use)
BUILDERS: dict[str, str] = {
    "subject_driven": "x2i.builders.subject_driven:SubjectDrivenBuilder",
    "omnigen_import": "x2i.builders.omnigen_import:OmniGenImportBuilder",
    "text_to_image": "x2i.builders.text_to_image:TextToImageBuilder",
    "image_edit": "x2i.builders.image_edit:ImageEditBuilder",
    "vision": "x2i.builders.vision_control:VisionBuilder",
    "control": "x2i.builders.vision_control:ControlBuilder",
    "referring_segmentation": "x2i.builders.referring_segmentation:ReferringSegmentationBuilder",
    "layout": "x2i.builders.layout:LayoutBuilder",
    "few_shot": "x2i.builders.few_shot:FewShotBuilder",
    "in_context": "x2i.builders.in_context:InContextBuilder",
    "shapes_proof": "x2i.builders.shapes_proof:ShapesProofBuilder",
}

# recipe step name -> "module:Class"; each class has a `Params` dataclass and takes it in __init__
STEPS: dict[str, str] = {
    "aesthetic": "x2i.curation.scores:AestheticStep",
    "clip_score": "x2i.curation.scores:ClipScoreStep",
    "dedup": "x2i.curation.dedup:DedupStep",
    "meta_threshold": "x2i.curation.filters:MetaThresholdStep",
    "size_filter": "x2i.curation.filters:SizeFilterStep",
    "caption_clean": "x2i.curation.filters:CaptionCleanStep",
    "copy_paste": "x2i.curation.copy_paste:CopyPasteStep",
}


def _load(target: str) -> Any:
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


class Builder:
    """Base class. Subclasses set `name`, `source_formats`, `Params` and implement `steps`."""

    name = ""
    source_formats: tuple[str, ...] = ()
    Params: type = object

    def __init__(self, recipe: Recipe):
        self.recipe = recipe
        if recipe.source.format not in self.source_formats:
            raise X2IError(f"builder {self.name} reads {list(self.source_formats)}, not source format "
                           f"{recipe.source.format!r}")
        self.params = from_dict(self.Params, recipe.params, "params")

    def steps(self) -> list[Step]:
        raise NotImplementedError

    def notes(self) -> list[str]:
        """One-line remarks for the user, recorded in the manifest and printed by `x2i build`
        (e.g. which annotators were skipped for missing weights and why)."""
        return []


def make_builder(recipe: Recipe) -> Builder:
    target = BUILDERS.get(recipe.builder)
    if target is None:
        raise X2IError(f"unknown builder {recipe.builder!r}; known: {sorted(BUILDERS)}")
    return _load(target)(recipe)


def make_steps(configs: list[dict[str, Any]]) -> list[Step]:
    """The extra steps a recipe lists: `[{name: dedup, by: sha256}, ...]`."""
    steps = []
    for i, cfg in enumerate(configs):
        cfg = dict(cfg)
        name = cfg.pop("name", None)
        if name not in STEPS:
            raise ConfigError(f"steps[{i}]: unknown step {name!r}; known: {sorted(STEPS)}")
        cls = _load(STEPS[name])
        steps.append(cls(from_dict(cls.Params, cfg, f"steps[{i}]")))
    return steps
