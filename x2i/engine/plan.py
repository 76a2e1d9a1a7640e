"""A recipe compiled once into what a build runs: `compile_plan(recipe) -> Plan`.

Compiling resolves every name through the registry (x2i/engine/registry.py: source format, builder, recipe
steps), checks the builder's params and each step's params against their dataclasses, resolves weights (when a
step is made) and checks the optional modules every step imports (`Step.needs`), before any work. So a missing
extra or a typo stops the build at once, with one line, and never once per partition.

The driver compiles the plan once; partitions receive it inside their PartitionJob. In-process it is the same
object; a process pool or Ray pickles it, and since steps may hold loaded models, a Plan pickles as its recipe
and is compiled again at most once per worker process (`__reduce__` -> `_worker_plan`, cached).
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from x2i.core.config import from_dict
from x2i.core.errors import BuildStopped, X2IError, describe_stop, require_modules
from x2i.core.prompt import problems
from x2i.core.sample import SOURCE_TASK, Sample
from x2i.engine.holdout import HoldoutStep
from x2i.engine.recipe import Recipe, SourceConfig
from x2i.engine.registry import BUILDERS, SOURCES, STEPS
from x2i.engine.steps import Context, Step


class FinalizeStep(Step):
    """Last line of defence before a row is written: a malformed sample is a counted reject, not a bad row."""

    name = "finalize"

    def run(self, samples: Iterable[Sample], ctx: Context) -> Iterator[Sample]:
        for s in samples:
            found = []
            if s.task in ("", SOURCE_TASK):
                found.append(f"task is {s.task!r}")
            if s.output_image is None:
                found.append("no output image")
            if not s.id:
                found.append("no id")
            found += problems(s.instruction, len(s.input_images))
            if found:
                ctx.reject(s, "invalid_sample", self.name, "; ".join(found))
                continue
            yield s


def make_source(config: SourceConfig) -> Any:
    """The reader of `config.format` (a registered x2i.sources.Source subclass; also x2i.sources.make_source)."""
    return SOURCES.get(config.format)(config)


def make_builder(recipe: Recipe) -> Any:
    """The recipe's builder: its class checks the source format and loads `params` into its Params dataclass."""
    return BUILDERS.get(recipe.builder)(recipe)


def make_steps(configs: list[dict[str, Any]]) -> list[Step]:
    """The extra steps a recipe lists: `[{name: dedup, by: sha256}, ...]`, each with its Params checked."""
    steps = []
    for i, cfg in enumerate(configs):
        cfg = dict(cfg)
        name = cfg.pop("name", None)
        cls = STEPS.get(name, f"steps[{i}]")
        steps.append(cls(from_dict(cls.Params, cfg, f"steps[{i}]")))
    return steps


@dataclass(eq=False)
class Plan:
    """What one build runs, made once. `steps` is the whole per-partition chain (builder steps, the recipe's
    steps, FinalizeStep); `post_build` the recipe steps with an `after_build(out, records)` hook, run on the
    driver once every partition is done."""

    recipe: Recipe
    source: Any  # x2i.sources.Source
    builder: Any  # a registered builder: .params (its typed Params), .steps(), .notes()
    steps: list[Step]
    post_build: list[Step] = field(default_factory=list)

    @property
    def params(self) -> Any:
        """The builder's typed parameters (the recipe's `params`, loaded into the builder's Params dataclass)."""
        return self.builder.params

    def notes(self) -> list[str]:
        """The builder's remarks for the user (recorded in the manifest), e.g. annotators skipped and why."""
        return self.builder.notes()

    def __reduce__(self):
        # Steps may hold loaded models, open files or locks: ship the recipe and compile it on the other side.
        return _worker_plan, (self.recipe.to_dict(),)


def compile_plan(recipe: Recipe) -> Plan:
    """Resolve and check everything a build of `recipe` needs; raises BuildStopped (a missing module or extra),
    X2IError or ConfigError (unknown names, bad params, missing weights, unreadable source settings)."""
    try:
        builder = make_builder(recipe)
        own = builder.steps()
        extra = make_steps(recipe.steps)
        steps = own + extra
        source = make_source(recipe.source)
        source.pixels = builder.pixels
    except ImportError as exc:
        raise BuildStopped(describe_stop(exc, f"recipe {recipe.name}")) from None
    for step in steps:
        require_modules(f"recipe {recipe.name} (step {step.name})", step.needs())
    hooks = [s for s in extra if getattr(s, "after_build", None) is not None]
    recipe.output.jpeg  # checked here for every builder (some read it only per sample), a ConfigError if bad
    holdout = recipe.output.holdout
    if not 0.0 <= holdout < 1.0:
        raise X2IError(f"output.holdout must be in [0, 1), got {holdout}")
    tail = [FinalizeStep()] + ([HoldoutStep(holdout)] if holdout > 0 else [])
    return Plan(recipe, source, builder, steps + tail, hooks)


_WORKER_PLANS: dict[str, Plan] = {}
_WORKER_CACHE_SIZE = 4  # a long-lived Ray worker may see a few builds; each plan may hold a loaded model


def _worker_plan(recipe: dict[str, Any]) -> Plan:
    """The plan of `recipe` in this process, compiled on first use (unpickling a Plan lands here)."""
    key = json.dumps(recipe, sort_keys=True, default=str)
    plan = _WORKER_PLANS.get(key)
    if plan is None:
        if len(_WORKER_PLANS) >= _WORKER_CACHE_SIZE:
            _WORKER_PLANS.pop(next(iter(_WORKER_PLANS)))
        plan = _WORKER_PLANS[key] = compile_plan(Recipe.from_dict(recipe))
    return plan


__all__ = ["FinalizeStep", "Plan", "compile_plan", "make_builder", "make_source", "make_steps"]
