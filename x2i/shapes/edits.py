"""Edits in the shapes world: recolour, move, add, remove or resize one shape, with the exact instruction.

`make_edit(scene, rng)` returns an `Edit` (before scene, after scene, instruction) or None when no valid edit of
the drawn kind exists. Instructions refer to shapes unambiguously ("the red circle", or "the small red circle"
when two red circles exist); moves are along one axis so "to the left" / "up" is exactly what happened; added
shapes are placed on free ground and their position named on a 3x3 grid. The exact change mask of an edit is
the set of pixels whose rendered value differs (`change_mask`), so it covers exactly the changed shapes.

`edit_chain(index, seed, ...)` makes 1..max_turns edits in a row on scene `index` (turn k's before is turn
k-1's after, and no turn undoes the one before): MagicBrush-style multi-turn sessions.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from x2i.core.boxes import iou
from x2i.shapes.world import COLORS, SHAPES, SIZES, Scene, Shape, make_scene, random_shape

EDIT_KINDS = ("recolour", "move", "add", "remove", "resize")
MAX_SHAPES = 5
MAX_OVERLAP = 0.15

_RECOLOUR = ("Make {ref} {color}.", "Change the color of {ref} to {color}.", "Turn {ref} {color}.",
             "Recolor {ref} {color}.")
_MOVE = ("Move {ref} {direction}.", "Shift {ref} {direction}.")
_ADD = ("Add {a} {phrase} {where}.", "Put {a} {phrase} {where}.", "Draw {a} {phrase} {where}.")
_REMOVE = ("Remove {ref}.", "Delete {ref}.", "Take away {ref}.", "Erase {ref}.")
_RESIZE = ("Make {ref} {comparative}.", "Make {ref} a bit {comparative}.")
_SIZE_ORDER = ("small", "medium", "large")


@dataclass(frozen=True)
class Edit:
    kind: str
    instruction: str
    before: Scene
    after: Scene


def reference(scene: Scene, i: int) -> str | None:
    """The shortest unambiguous name of shape i ("the red circle"), or None when none exists."""
    s = scene.shapes[i]
    if sum(o.color == s.color and o.kind == s.kind for o in scene.shapes) == 1:
        return f"the {s.color} {s.kind}"
    if sum(o.phrase == s.phrase for o in scene.shapes) == 1:
        return f"the {s.phrase}"
    return None


def location(scene: Scene, shape: Shape) -> str:
    col = min(2, int(3 * shape.cx / scene.width))
    row = min(2, int(3 * shape.cy / scene.height))
    return [["in the top left corner", "at the top", "in the top right corner"],
            ["on the left", "in the center", "on the right"],
            ["in the bottom left corner", "at the bottom", "in the bottom right corner"]][row][col]


def _fits(scene: Scene, shape: Shape, others: list[Shape]) -> bool:
    x0, y0, x1, y1 = (shape.cx - shape.radius, shape.cy - shape.radius, shape.cx + shape.radius,
                      shape.cy + shape.radius)
    if x0 < 0 or y0 < 0 or x1 > scene.width or y1 > scene.height:
        return False
    box = shape.box(scene.width, scene.height)
    return all(iou(box, o.box(scene.width, scene.height)) <= MAX_OVERLAP for o in others)


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def _edit_one(scene: Scene, kind: str, rng: np.random.Generator) -> Edit | None:
    shapes = list(scene.shapes)
    targets = [i for i in range(len(shapes)) if reference(scene, i)]
    if kind == "add":
        if len(shapes) >= MAX_SHAPES:
            return None
        for _ in range(30):
            new = random_shape(rng, scene.width, scene.height)
            if _fits(scene, new, shapes):
                a = "an" if new.phrase[0] in "aeiou" else "a"
                text = _pick(rng, _ADD).format(a=a, phrase=new.phrase, where=location(scene, new))
                return Edit(kind, text, scene, scene.with_shapes(shapes + [new]))
        return None
    if not targets:
        return None
    i = targets[int(rng.integers(len(targets)))]
    s, ref = shapes[i], reference(scene, i)
    others = shapes[:i] + shapes[i + 1:]
    if kind == "remove":
        return Edit(kind, _pick(rng, _REMOVE).format(ref=ref), scene, scene.with_shapes(others))
    if kind == "recolour":
        color = _pick(rng, tuple(c for c in COLORS if c != s.color))
        shapes[i] = replace(s, color=color)
        return Edit(kind, _pick(rng, _RECOLOUR).format(ref=ref, color=color), scene, scene.with_shapes(shapes))
    if kind == "move":
        for _ in range(20):
            horizontal = bool(rng.integers(2))
            side = scene.width if horizontal else scene.height
            step = float(rng.uniform(0.2, 0.4)) * side * (1 if rng.integers(2) else -1)
            moved = replace(s, cx=s.cx + step, cy=s.cy) if horizontal else replace(s, cx=s.cx, cy=s.cy + step)
            if _fits(scene, moved, others):
                direction = ("to the right" if step > 0 else "to the left") if horizontal else \
                    ("down" if step > 0 else "up")
                shapes[i] = moved
                text = _pick(rng, _MOVE).format(ref=ref, direction=direction)
                return Edit(kind, text, scene, scene.with_shapes(shapes))
        return None
    if kind == "resize":
        order = _SIZE_ORDER.index(s.size)
        choices = [k for k in range(len(_SIZE_ORDER)) if k != order]
        for k in [choices[j] for j in rng.permutation(len(choices))]:
            size = _SIZE_ORDER[k]
            resized = replace(s, size=size, radius=SIZES[size] * min(scene.width, scene.height))
            if _fits(scene, resized, others):
                shapes[i] = resized
                text = _pick(rng, _RESIZE).format(ref=ref, comparative="bigger" if k > order else "smaller")
                return Edit(kind, text, scene, scene.with_shapes(shapes))
        return None
    raise ValueError(f"unknown edit kind {kind!r}")


def make_edit(scene: Scene, rng: np.random.Generator, kinds: tuple[str, ...] = EDIT_KINDS) -> Edit | None:
    """One edit of a kind drawn from `kinds` (falling back to the other kinds when that one is impossible)."""
    for k in rng.permutation(len(kinds)):
        edit = _edit_one(scene, kinds[int(k)], rng)
        if edit is not None:
            return edit
    return None


def edit_chain(index: int, seed: int = 0, size: int = 512, max_turns: int = 3) -> list[Edit]:
    """1..max_turns successive edits of shapes-world scene `index` (always the same for the same arguments)."""
    rng = np.random.default_rng([seed, index, size, 11])
    scene = make_scene(index, seed, size, size)
    turns = int(rng.integers(1, max_turns + 1))
    chain: list[Edit] = []
    for _ in range(turns):
        for _attempt in range(5):  # a turn that undoes the previous one (add, then remove it) teaches nothing
            edit = make_edit(scene, rng)
            if edit is None or not chain or edit.after.shapes != chain[-1].before.shapes:
                break
        else:
            break
        if edit is None:
            break
        chain.append(edit)
        scene = edit.after
    return chain


def change_mask(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """Exact change mask of two renders (H x W x 3 uint8): True where any channel differs."""
    return np.any(before != after, axis=2)


__all__ = ["Edit", "EDIT_KINDS", "make_edit", "edit_chain", "change_mask", "reference", "location", "SHAPES"]
