"""Holdout split: whole source items go to the `test` split by a hash of their key.

A *source item* is what one source record shows: a GRIT image, a clip, a MagicBrush session (all its turns
and the chain built from them), one InstructPix2Pix/UltraEdit/HQ-Edit row. Every sample made from an item goes
to the same split, so no source image is in both splits — also across task families and builds, because the
choice depends only on (source format, item key) and the fraction, never on the recipe's seed or the builder.

A sample that draws on several items (a few-shot query and its examples) goes to `test` only when all of them
are held out and to `train` only when none is; a mixed one would leak, so it is rejected (`holdout_mixed`).
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from typing import Any

from x2i.core.sample import Sample
from x2i.engine.steps import Context, Step

TRAIN, TEST = "train", "test"
SPLITS = (TRAIN, TEST)


def item_key(source: str, source_key: str, meta: dict[str, Any] | None = None) -> str:
    """The source item a record belongs to: MagicBrush turns `<session>#<turn>` (and SEED-Data-Edit chains)
    share their session; everything else is its own item."""
    meta = meta or {}
    if meta.get("img_id") is not None:  # MagicBrush: the session id
        return str(meta["img_id"])
    return source_key.split("#", 1)[0]


def held_out(source: str, item: str, fraction: float) -> bool:
    """Deterministic and uniform: the first 8 bytes of sha256(source, item) as a number in [0, 1)."""
    if fraction <= 0.0:
        return False
    digest = hashlib.sha256(f"{source}\0{item}".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < fraction


def items_of(sample: Sample) -> list[tuple[str, str]]:
    """Every (source, item) a sample shows: its own, and its few-shot examples'."""
    items = [(sample.source, item_key(sample.source, sample.source_key, sample.meta))]
    for ex in sample.meta.get("examples") or []:
        if isinstance(ex, dict) and "source_key" in ex:
            items.append((ex.get("source", sample.source), item_key(ex.get("source", ""), str(ex["source_key"]))))
    return items


def split_of(sample: Sample, fraction: float) -> str | None:
    """TRAIN, TEST, or None when the sample mixes held-out and training items."""
    flags = {held_out(source, item, fraction) for source, item in items_of(sample)}
    if flags == {True}:
        return TEST
    if flags == {False}:
        return TRAIN
    return None


class HoldoutStep(Step):
    """Sets `sample.split`; runs last, after every builder step, so it sees the finished sample."""

    name = "holdout"

    def __init__(self, fraction: float):
        self.fraction = fraction

    def run(self, samples: Iterable[Sample], ctx: Context) -> Iterator[Sample]:
        for sample in samples:
            split = split_of(sample, self.fraction)
            if split is None:
                ctx.reject(sample, "holdout_mixed", self.name, "its examples come from both splits' source items")
                continue
            sample.split = split
            yield sample
