"""Helpers for builder tests: recipes with overrides, running a builder in-process, shapes-world lookups."""
from __future__ import annotations

from x2i.builders import make_builder
from x2i.engine.recipe import Recipe, load_recipe
from x2i.sources import make_source
from x2i.engine.steps import Context, run_steps


def recipe(recipe_name: str, **params) -> Recipe:
    data = load_recipe(recipe_name).to_dict()
    data["params"].update(params)
    return Recipe.from_dict(data)


def shapes_scene(sample_or_key):
    """The shapes-world scene a sample came from (embedded GRIT ids are 1_000_000 * (seed + 1) + index)."""
    from x2i.shapes.world import make_scene

    key = int(getattr(sample_or_key, "source_key", sample_or_key))
    if key >= 9_000_000:
        return None  # a package photo
    return make_scene(key - 1_000_000, 0, 512, 512)




def run_builder(r: Recipe, limit: int | None = None, partition: int = 0, strict: bool = True):
    """The samples a builder makes from one partition of the embedded source (and the context's counters)."""
    source = make_source(r.source)
    ctx = Context(seed=r.seed, partition=partition, strict=strict)
    part = source.partitions()[partition]
    samples = list(run_steps(make_builder(r).steps(), source.read(part, ctx, limit), ctx))
    return samples, ctx
