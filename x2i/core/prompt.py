"""Interleaved prompts: instructions that reference input images as `<img><|image_k|></img>`.

One module shared by builders (format), the validator (check) and the model's processor (split), so the
three can never disagree about what a well-formed instruction is.

Rules of a well-formed instruction with N input images (OmniGen's convention, made strict):
- placeholders are exactly `<img><|image_k|></img>`, k a positive decimal integer without leading zeros;
- each k in 1..N appears exactly once, numbered in order of first appearance (1, 2, ..., N): no gaps;
- no stray or unclosed fragments (`<img>`, `</img>`, `<|image_`) outside complete placeholders.
"""
from __future__ import annotations

import re

PLACEHOLDER_PATTERN = re.compile(r"<img><\|image_([1-9][0-9]*)\|></img>")
# Pieces of a placeholder that are left over once every complete placeholder is removed.
_STRAY_PATTERN = re.compile(r"<img>|</img>|<\|image_[^>]*")


class PromptError(ValueError):
    """An instruction whose placeholders do not agree with its input images."""


def placeholder(k: int) -> str:
    """The placeholder for the k-th input image (1-based)."""
    if k < 1:
        raise ValueError(f"image numbers start at 1, got {k}")
    return f"<img><|image_{k}|></img>"


def image_ids(text: str) -> list[int]:
    """Image numbers in order of appearance (repeats kept)."""
    return [int(m.group(1)) for m in PLACEHOLDER_PATTERN.finditer(text)]


def split(text: str) -> list[str | int]:
    """Split an instruction into text pieces and image numbers, in order.

    `"A <img><|image_1|></img> B"` -> `["A ", 1, " B"]`. Empty text pieces are dropped.
    """
    parts: list[str | int] = []
    pos = 0
    for m in PLACEHOLDER_PATTERN.finditer(text):
        if m.start() > pos:
            parts.append(text[pos:m.start()])
        parts.append(int(m.group(1)))
        pos = m.end()
    if pos < len(text):
        parts.append(text[pos:])
    return parts


def problems(text: str, n_images: int) -> list[str]:
    """Everything wrong with `text` as an instruction for `n_images` images (empty list: well formed)."""
    if not isinstance(text, str):
        return [f"instruction is {type(text).__name__}, not a string"]
    found: list[str] = []
    stray = _STRAY_PATTERN.findall(PLACEHOLDER_PATTERN.sub(" ", text))
    if stray:
        found.append(f"stray or malformed placeholder fragment(s): {sorted(set(stray))}")
    ids = image_ids(text)
    repeated = sorted({k for k in ids if ids.count(k) > 1})
    if repeated:
        found.append(f"image number(s) {repeated} appear more than once")
    first_seen = list(dict.fromkeys(ids))
    if first_seen != list(range(1, len(first_seen) + 1)):
        found.append(f"image numbers in order of appearance are {first_seen}, expected 1..{len(first_seen)}")
    if len(first_seen) != n_images:
        found.append(f"{len(first_seen)} placeholder(s) for {n_images} input image(s)")
    return found


def check(text: str, n_images: int) -> None:
    """Raise PromptError naming every problem of `text` for `n_images` images."""
    found = problems(text, n_images)
    if found:
        raise PromptError("; ".join(found))


def renumber(text: str, offset: int) -> str:
    """Shift every image number by `offset` (used to concatenate prompts, e.g. few-shot examples)."""
    return PLACEHOLDER_PATTERN.sub(lambda m: placeholder(int(m.group(1)) + offset), text)


def remove_placeholders(text: str) -> str:
    """The instruction with its placeholders removed and whitespace tidied (a text-only view of it)."""
    return re.sub(r"\s+", " ", PLACEHOLDER_PATTERN.sub(" ", text)).strip()
