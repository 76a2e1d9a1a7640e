"""Shapes-world learning-proof sets (bench/bench_learning.py --proof): clean supervision for three X2I skills.

Each embedded LAION-format shapes row only drives the build: its scene number seeds one proof sample drawn from
the shapes world (x2i.shapes), so the set is deterministic, sized by `source.options.embedded.scenes`, and
carries its ground truth in `meta.proof` for the checker. Rows that are not numbered scenes (the source's
mirrors, re-encodings and failed downloads) are rejected as `not_a_scene`.

- `text`: one shape; the caption names size, colour, shape, where (the world's 3 x 3 place names) and background:
  "A large red star in the top left corner on a checkered background." Naming the place makes the target
  nearly one image per prompt, so a small model learns the outline instead of averaging positions into a blob.
- `reference`: the same scene, but colour and shape only in the input image (the object alone, centred on a
  neutral grey square): "Draw the object in <img><|image_1|></img>, large, in the top left corner, on a
  checkered background." The output must copy the input's colour and outline.
- `edit`: a 1-3 shape scene and one recolour or remove edit of it (x2i.shapes.edits.make_edit, instructions such
  as "Make the red circle blue." / "Remove the star.", the input image after them: "Remove the star in
  <img><|image_1|></img>."), the exact change mask in `meta.change_mask` as image_edit rows have it (so training
  weights the changed latents the same way), and the output's shapes in `meta.proof.shapes` for the checker.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from PIL import Image

from x2i.builders import Builder
from x2i.engine.registry import register_builder
from x2i.core.imageio import encode
from x2i.core.masks import encode_mask
from x2i.core.prompt import placeholder
from x2i.core.sample import RejectSample, Sample
from x2i.engine.steps import Context, MapStep, Step
from x2i.shapes.edits import change_mask, location, make_edit
from x2i.shapes.world import BACKGROUNDS, COLORS, SHAPES, SIZES, Background, Scene, Shape, make_scene

PROOFS = ("text", "reference", "edit")
TASKS = {"text": "text_to_image", "reference": "subject_driven", "edit": "image_edit"}
NEUTRAL = (200, 200, 200)  # the reference input's backdrop: grey, below the checker's saturation threshold
REFERENCE_TEMPLATES = (
    "Draw the object in {img}, {size}, {where}, on {bg}.",
    "Place the shape shown in {img} {where} on {bg}, {size}.",
    "A {size} copy of the object in {img} {where} on {bg}.",
)
_SCENE_URL = re.compile(r"/laion/v1/s\d+/(\d{6})\.jpg$")


@dataclass
class ShapesProofParams:
    proof: str = "text"  # text | reference | edit
    size: int = 64  # output side in pixels
    input_size: int = 32  # reference: side of the input image
    world_seed: int = 0  # seeds the proof samples (held-out evaluation uses another)
    jitter: float = 0.05  # placement noise around the place's centre, as a fraction of the free range
    # edit: where the input image goes in the instruction. "last" ("Make the red circle blue in <img>.") lets the
    # image's tokens see the instruction (OmniGen's mask is causal over the condition) and keeps the distance
    # from each input token to its output token the same in every sample; "first" ("<img> Make ...") was the
    # original form (see edit_instruction).
    edit_image: str = "last"  # first | last
    # edit: shapes per scene, drawn from min_shapes..max_shapes (the world may fit fewer: such scenes are redrawn
    # when below min_shapes). The held-out samples keep the defaults (1-3); a training set with at least two
    # shapes has no scene where "do it to every shape" is right, and more shapes the edit must leave alone.
    min_shapes: int = 1
    max_shapes: int = 3


def pastel(rng: np.random.Generator) -> tuple[int, int, int]:
    grey = rng.uniform(150, 235)
    return tuple(int(np.clip(grey + t, 0, 255)) for t in rng.uniform(-18, 18, size=3))


def placed_scene(rng: np.random.Generator, size: int, jitter: float, kind: str | None = None,
                 color: str | None = None) -> Scene:
    """One shape at one of the 3 x 3 places: left / centre / right of the range that keeps it whole."""
    kind = kind or SHAPES[int(rng.integers(len(SHAPES)))]
    color = color or list(COLORS)[int(rng.integers(len(COLORS)))]
    size_name = list(SIZES)[int(rng.integers(len(SIZES)))]
    radius = SIZES[size_name] * size
    free = size - 2 * radius
    col, row = int(rng.integers(3)), int(rng.integers(3))
    cx = float(np.clip(radius + free * (col / 2 + rng.uniform(-jitter, jitter)), radius, size - radius))
    cy = float(np.clip(radius + free * (row / 2 + rng.uniform(-jitter, jitter)), radius, size - radius))
    angle = 0.0 if kind == "circle" else float(rng.uniform(-20, 20))
    bg = Background(BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))], pastel(rng), pastel(rng),
                    int(rng.integers(16, 48)), int(rng.integers(2**31)))  # the world's stripe periods
    return Scene(size, size, bg, (Shape(kind, color, size_name, cx, cy, radius, angle),))


def reference_input(shape: Shape, side: int) -> Image.Image:
    """The object alone, centred on neutral grey, at 0.35 of the side (its outline spans several tokens)."""
    alone = Shape(shape.kind, shape.color, shape.size, side / 2, side / 2, 0.35 * side, shape.angle)
    return Scene(side, side, Background("plain", NEUTRAL, NEUTRAL), (alone,)).render()


def describe(scene: Scene) -> dict:
    s = scene.shapes[0]
    return {"color": s.color, "shape": s.kind, "size": s.size, "where": location(scene, s),
            "background": scene.background.phrase, "cx": round(s.cx, 2), "cy": round(s.cy, 2),
            "angle": round(s.angle, 2)}


def proof_sample(proof: str, index: int, p: ShapesProofParams, template: int | None = None):
    """(instruction, input images, output image, meta) of proof sample `index` of world `p.world_seed`."""
    rng = np.random.default_rng([p.world_seed, index, PROOFS.index(proof), 31])
    if proof in ("text", "reference"):
        scene = placed_scene(rng, p.size, p.jitter)
        d = describe(scene)
        if proof == "text":
            article = "An" if d["size"][0] in "aeiou" else "A"
            text = f"{article} {d['size']} {d['color']} {d['shape']} {d['where']} on {d['background']}."
            return text, [], scene.render(), {"proof": d}
        k = int(rng.integers(len(REFERENCE_TEMPLATES))) if template is None else template
        text = REFERENCE_TEMPLATES[k].format(img=placeholder(1), size=d["size"], where=d["where"],
                                             bg=d["background"])
        return text, [reference_input(scene.shapes[0], p.input_size)], scene.render(), {"proof": d}
    for attempt in range(20):  # scenes with no valid recolour / remove (nothing nameable) are redrawn
        scene = make_scene(index * 20 + attempt, p.world_seed, p.size, p.size, max_shapes=p.max_shapes)
        if len(scene.shapes) < p.min_shapes:
            continue
        edit = make_edit(scene, rng, kinds=("recolour", "remove"))
        if edit is not None:
            break
    else:
        raise RejectSample("no_edit", "no recolour or remove edit in 20 scenes")
    before, after = edit.before.render(), edit.after.render()
    mask = change_mask(np.asarray(before), np.asarray(after))
    changed = [i for i, (a, b) in enumerate(zip(edit.before.shapes, edit.after.shapes)) if a != b] \
        if edit.kind == "recolour" else []
    target = edit.after.shapes[changed[0]] if changed else None
    # The output's shapes in drawing order, `kept` = left alone by the edit: the checker's "was the rest kept"
    # test (shapes_check.shapes_kept; the order tells it which parts of a shape a later one covers).
    shapes = [{"kind": s.kind, "color": s.color, "size": s.size, "cx": s.cx, "cy": s.cy, "radius": s.radius,
               "angle": s.angle, "kept": s is not target} for s in edit.after.shapes]
    meta = {"proof": {"kind": edit.kind, "color": target.color if target else None,
                      "shape": target.kind if target else None, "size": target.size if target else None,
                      "shapes": shapes},
            "change_mask": encode_mask(mask, "rendered"), "edit_kind": edit.kind}
    return edit_instruction(edit.instruction, p.edit_image), [before], after, meta


def edit_instruction(instruction: str, where: str = "last") -> str:
    """The edit instruction with the input image's placeholder first or last.

    "first": "<img><|image_1|></img> Make the red circle blue." The condition is causal, so the image's tokens
    then never see the instruction, and the rotary distance from an input token to the output token at the same
    place changes with the instruction's length. "last": "Make the red circle blue in <img><|image_1|></img>."
    Every input token sees the whole instruction, and that distance is the same in every sample (only the fixed
    template suffix and the time token lie between the image and the output)."""
    if where == "first":
        return f"{placeholder(1)} {instruction}"
    if where != "last":
        raise ValueError(f"edit_image must be 'first' or 'last', got {where!r}")
    return f"{instruction.rstrip('.')} in {placeholder(1)}."


class ShapesProofStep(MapStep):
    name = "shapes_proof"

    def __init__(self, params: ShapesProofParams):
        if params.proof not in PROOFS:
            raise ValueError(f"params.proof must be one of {PROOFS}, got {params.proof!r}")
        if not 1 <= params.min_shapes <= params.max_shapes:
            raise ValueError(f"need 1 <= params.min_shapes <= params.max_shapes, got {params.min_shapes}, "
                             f"{params.max_shapes}")
        if params.edit_image not in ("first", "last"):
            raise ValueError(f"params.edit_image must be 'first' or 'last', got {params.edit_image!r}")
        self.p = params

    def process(self, sample: Sample, ctx: Context) -> Sample:
        m = _SCENE_URL.search(str(sample.meta.get("url") or ""))
        if m is None:
            raise RejectSample("not_a_scene", str(sample.meta.get("url")))
        text, inputs, output, meta = proof_sample(self.p.proof, int(m.group(1)), self.p)
        out = Sample(TASKS[self.p.proof], text, encode(output, "PNG"), [encode(im, "PNG") for im in inputs],
                     sample.source, sample.source_key, meta)
        return out.with_id({"proof": self.p.proof, "world_seed": self.p.world_seed, "size": self.p.size})


@register_builder("shapes_proof")
class ShapesProofBuilder(Builder):
    name = "shapes_proof"
    source_formats = ("laion",)
    Params = ShapesProofParams

    def steps(self) -> list[Step]:
        return [ShapesProofStep(self.params)]
