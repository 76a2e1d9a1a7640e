"""Builders: named lists of steps that turn source samples into X2I task samples.

A builder declares the source formats it reads, its parameter dataclass (recipe `params`, strict keys) and
its steps, and registers its name where it is defined (`@register_builder("layout")`, x2i/engine/registry.py).
Importing this package imports every builder module, which is how the registry finds them: pyproject.toml names
this package as an `x2i.plugins` entry point. Extra steps named in a recipe's `steps:` list (curation, filters)
are registered by their own modules (`@register_step`). Builders never import Ray: the executor runs the same
steps in-process or in Ray tasks.
"""
from __future__ import annotations

from x2i.core.config import from_dict
from x2i.core.errors import X2IError
from x2i.engine.plan import make_builder, make_steps  # noqa: F401  (the registry's factories, for callers here)
from x2i.engine.recipe import Recipe
from x2i.engine.steps import Step


class Builder:
    """Base class. Subclasses set `name`, `source_formats`, `Params` and implement `steps`."""

    name = ""
    source_formats: tuple[str, ...] = ()
    Params: type = object
    # How the builder uses source images (x2i.sources.Source.pixels): "array" only when it crops, resamples and
    # encodes them through x2i.core.imageio's array functions and never asks for `pil()` (a copy).
    pixels = "pil"

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


# Last, since each builder subclasses Builder: importing them registers their names.
from x2i.builders import (few_shot, image_edit, in_context, layout, omnigen_import,  # noqa: E402,F401
                          referring_segmentation, shapes_proof, subject_driven, text_to_image, vision_control)
