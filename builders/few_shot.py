"""Few-shot (in-context) samples: 1-2 solved examples of a task, then the query, in one interleaved prompt.

The base task's builder runs first: any registered builder by name (image_edit, subject_driven, vision, control,
referring_segmentation, layout, in_context once registered, ...) except text_to_image (no input image to show)
and few_shot itself; the recipe's source must be one that builder reads. Its samples are gathered in pools of
`pool_size` in stream order, and each sample of a pool becomes a query whose examples are drawn, with the
query's own seeded generator, from the other samples of the same task that do not share its source item (see
`source_item`: a MagicBrush session, an HQ-Edit row and its inverse, a GRIT image) nor any image bytes. Partitions
are processed independently and identically by every executor, so the result depends only on the recipe and the
partition, not on the executor or worker count.

Images are numbered in order of appearance: example 1's inputs, example 1's output, example 2's ..., the query's
inputs (`x2i.core.prompt.renumber`). The total input images per sample is capped (`max_input_images`, default 5):
examples are dropped from the end until it fits.

    Example 1: Generate the depth map of <img><|image_1|></img>. Answer: <img><|image_2|></img>
    Now: Generate the depth map of <img><|image_3|></img>.
"""
from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from x2i.builders import Builder
from x2i.core.config import from_dict
from x2i.core.errors import X2IError
from x2i.core.prompt import check, placeholder, renumber
from x2i.engine.recipe import Recipe
from x2i.core.sample import Sample
from x2i.engine.registry import BUILDERS, register_builder
from x2i.engine.steps import Context, Step

# (example format, query format): {n} example number, {instruction}, {output} placeholder; {query}.
TEMPLATES = (
    ("Example {n}: {instruction} Answer: {output}", "Now: {query}"),
    ("Here is an example. Instruction: {instruction} Result: {output}", "Following the example, {query}"),
    ("Task example {n}. {instruction} -> {output}", "Your turn. {query}"),
)
# Builders few-shot cannot take: text_to_image has no input image to show as an example, few_shot would nest.
NOT_BASE = ("text_to_image", "few_shot")
# Key suffixes that name another sample of the same source item: inverse edits, chains, turns of a session.
_DERIVED = re.compile(r"#(inverse|chain\d+-\d+)$")
_TURN = re.compile(r"^(.*#\d+)#\d+$")  # SEED-Data-Edit multi-turn: <file>#<line>#<turn>


@dataclass
class FewShotParams:
    task: str = "vision"  # the base builder (any registered one but NOT_BASE) whose samples become examples
    task_params: dict[str, Any] = field(default_factory=dict)  # that builder's params (checked by it)
    annotators: list[str] | None = None  # shortcut for task_params.annotators (what `--annotators` sets)
    examples: list[int] = field(default_factory=lambda: [1, 2])  # [min, max] examples per query
    max_input_images: int = 5
    pool_size: int = 32  # samples gathered before composing (memory bound: pool_size samples with images)


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:] if text[:1].isupper() and not text[1:2].isupper() else text


def compose(examples: list[Sample], query: Sample, template: int) -> tuple[str, list]:
    """The interleaved instruction and input images of examples + query."""
    ex_fmt, query_fmt = TEMPLATES[template]
    parts, images = [], []
    for n, ex in enumerate(examples, 1):
        instruction = renumber(ex.instruction, len(images))
        images += ex.input_images
        images.append(ex.output_image)
        parts.append(ex_fmt.format(n=n, instruction=instruction, output=placeholder(len(images))))
    query_text = renumber(query.instruction, len(images))
    if query_fmt.startswith("Following"):
        query_text = _lower_first(query_text)
    parts.append(query_fmt.format(query=query_text))
    images += query.input_images
    instruction = "\n".join(parts)
    check(instruction, len(images))
    return instruction, images


class FewShotStep(Step):
    name = "few_shot"

    def __init__(self, p: FewShotParams):
        self.p = p

    def run(self, samples: Iterable[Sample], ctx: Context) -> Iterator[Sample]:
        pool: list[Sample] = []
        for sample in samples:
            pool.append(sample)
            if len(pool) >= self.p.pool_size:
                yield from self._compose_pool(pool, ctx)
                pool = []
        if pool:
            yield from self._compose_pool(pool, ctx)

    def _compose_pool(self, pool: list[Sample], ctx: Context) -> Iterator[Sample]:
        by_task: dict[str, list[Sample]] = {}
        for s in pool:
            by_task.setdefault(s.task, []).append(s)
        items = {id(s): (source_item(s), image_digests(s)) for s in pool}
        for query in pool:
            out = self._guard(query, ctx, lambda q=query: self._compose(q, by_task[q.task], items, ctx))
            if out is not None:
                yield out

    def _compose(self, query: Sample, same_task: list[Sample], items: dict, ctx: Context) -> Sample | None:
        task = f"few_shot/{query.task}"
        item, digests = items[id(query)]
        candidates = [s for s in same_task if s.id != query.id and items[id(s)][0] != item
                      and not digests & items[id(s)][1]]

        def reject(reason: str, detail: str) -> None:
            ctx.reject(None, reason, self.name, detail, source=query.source, source_key=query.source_key, task=task)

        if not candidates:
            reject("few_shot_no_example", f"no other {query.task} sample from another source item in the pool")
            return None
        rng = ctx.rng("few_shot", query.id)
        lo, hi = self.p.examples
        want = min(int(rng.integers(lo, hi + 1)), len(candidates))
        chosen = [candidates[i] for i in rng.choice(len(candidates), want, replace=False)]
        template = int(rng.integers(len(TEMPLATES)))
        while chosen and (sum(len(e.input_images) + 1 for e in chosen) + len(query.input_images)
                          > self.p.max_input_images):
            chosen.pop()
        if not chosen:
            reject("few_shot_too_many_images", f"query has {len(query.input_images)} input image(s); one example "
                                               f"would exceed max_input_images={self.p.max_input_images}")
            return None
        instruction, images = compose(chosen, query, template)
        meta = dict(query.meta)
        meta["few_shot"] = {"query_id": query.id, "query_task": query.task, "template": template,
                            "examples": [{"id": e.id, "source": e.source, "source_key": e.source_key}
                                         for e in chosen]}
        out = Sample(task, instruction, query.output_image, images, query.source, query.source_key, meta)
        return out.with_id({"query": query.id, "examples": [e.id for e in chosen], "template": template})


def source_item(sample: Sample) -> tuple[str, str]:
    """The source item a sample was made from: samples of one item must not serve as each other's examples (the
    answer would be in the prompt). GRIT builders keep the image's key; MagicBrush turns and chains share meta
    img_id; HQ-Edit / SEED-Data-Edit inverse edits, chains and turns extend their row's key with a suffix."""
    img_id = sample.meta.get("img_id")
    if img_id is not None:
        return sample.source, f"img_id:{img_id}"
    key = sample.source_key
    while _DERIVED.search(key):
        key = _DERIVED.sub("", key)
    turn = _TURN.match(key)
    return sample.source, turn.group(1) if turn else key


def image_digests(sample: Sample) -> frozenset[bytes]:
    """Digests of a sample's image bytes: a candidate sharing any image with the query shares its source."""
    return frozenset(hashlib.blake2b(im.data, digest_size=16).digest()
                     for im in [*sample.input_images, sample.output_image])


@register_builder("few_shot")
class FewShotBuilder(Builder):
    name = "few_shot"
    source_formats = ("grit",)  # replaced by the base builder's formats
    Params = FewShotParams

    def __init__(self, recipe: Recipe):
        # The source check belongs to the base builder (image_edit reads edit sets, the rest GRIT), so the
        # base is made first and Builder.__init__'s fixed-format check is not used.
        self.recipe = recipe
        self.params = p = from_dict(self.Params, recipe.params, "params")
        if p.task in NOT_BASE or p.task not in BUILDERS:
            raise X2IError(f"params.task: {p.task!r} is not a few-shot base task; choose from "
                           f"{sorted(t for t in BUILDERS if t not in NOT_BASE)}")
        if len(p.examples) != 2 or not 1 <= p.examples[0] <= p.examples[1]:
            raise X2IError(f"params.examples: expected [min, max] with 1 <= min <= max, got {p.examples}")
        if p.max_input_images < 1 or p.pool_size < 2:
            raise X2IError("params.max_input_images must be >= 1 and params.pool_size >= 2")
        base_cls = BUILDERS.get(p.task)
        if recipe.source.format not in base_cls.source_formats:
            hint = next((f for f in ("grit", "magicbrush") if f in base_cls.source_formats),  # embedded samples
                        base_cls.source_formats[0])
            raise X2IError(f"params.task {p.task} reads source formats {list(base_cls.source_formats)}, not "
                           f"{recipe.source.format!r}: add --format {hint}")
        task_params = dict(p.task_params)
        if p.annotators is not None:
            fields = {f.name for f in dataclasses.fields(base_cls.Params)} if dataclasses.is_dataclass(
                base_cls.Params) else set()
            if "annotators" not in fields:
                raise X2IError(f"params.annotators (--annotators) applies to annotator tasks (vision, control), "
                               f"not {p.task}")
            task_params["annotators"] = p.annotators
        base_recipe = Recipe(name=f"{recipe.name}/{p.task}", builder=p.task, source=recipe.source, seed=recipe.seed,
                             params=task_params, steps=[], output=recipe.output)
        self.base: Builder = base_cls(base_recipe)
        self.source_formats = self.base.source_formats

    def steps(self) -> list[Step]:
        return self.base.steps() + [FewShotStep(self.params)]

    def notes(self) -> list[str]:
        return self.base.notes()
