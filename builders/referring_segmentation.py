"""Referring segmentation from GRIT phrases + boxes (OmniGen's X2I format).

`Find the small red circle in <img><|image_1|></img> and color it blue.` -> the same photo with that object
tinted blue. The object's region is a box-prompted mask from a masker annotator (`masker: sam`, clipped to its box) when
its weights are present, else the box itself; `meta.mask_source` says which ("sam" or "box"), so training can weight them.

A GRIT span detected several times (one chunk per instance) is one referent with several boxes: all are coloured.
Entities are filtered like subject-driven ones (confidence, box area) with every refusal counted.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from x2i.builders import Builder
from x2i.builders.vision_control import condition_size
from x2i.core.errors import X2IError
from x2i.core.imageio import FitTransform, encode, fit
from x2i.core.prompt import placeholder
from x2i.core.sample import RejectSample, Sample
from x2i.engine.registry import register_builder
from x2i.engine.steps import Context, MapStep, Step

TASK = "referring_segmentation"
COLORS = {"blue": (0, 0, 255), "red": (255, 0, 0), "green": (0, 200, 0), "yellow": (255, 255, 0),
          "purple": (160, 32, 240)}
TEMPLATES = (
    "Find {ref} in {image} and color it {color}.",
    "Find {ref} in the picture {image} and color it {color}.",
    "Color {ref} in {image} {color}.",
    "{image} Segment {ref} and mark it in {color}.",
    "Highlight {ref} in {image} with {color}.",
)
_DETERMINERS = {"a", "an", "the", "this", "that", "these", "those", "some", "one", "his", "her", "their", "its",
                "my", "our", "your"}


def referent(phrase: str) -> str:
    """How an instruction names the entity: 'the small red circle' for 'A small red circle'; names stay."""
    words = phrase.split()
    if words[0].lower() in _DETERMINERS and len(words) > 1:
        return "the " + " ".join(words[1:])
    if phrase[:1].isupper():
        return phrase
    return "the " + phrase


@dataclass
class ReferringParams:
    min_confidence: float = 0.5
    min_box_area: float = 0.005  # fraction of the image
    max_box_area: float = 0.8  # a referent filling the frame teaches nothing about localisation
    colors: list[str] = field(default_factory=lambda: ["blue"])  # drawn per sample with its seed
    alpha: float = 0.6  # tint strength inside the mask
    max_per_image: int | None = None  # referents per source image (None: all usable)
    masker: str | None = None  # a box_mask annotator (sam); None: box masks
    masker_weights: str | None = None
    masker_options: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    skip_missing: bool = True  # masker weights missing: box masks with a note, instead of failing


def box_mask(width: int, height: int, box_px: tuple[float, float, float, float]) -> np.ndarray:
    """Every pixel the box touches (so the whole object, anti-aliased edge included, is covered)."""
    x0, y0, x1, y1 = box_px
    cols = (np.arange(width) + 1 > x0) & (np.arange(width) < x1)
    rows = (np.arange(height) + 1 > y0) & (np.arange(height) < y1)
    return rows[:, None] & cols[None, :]


def tint(im: Image.Image, mask: np.ndarray, rgb: tuple[int, int, int], alpha: float) -> Image.Image:
    arr = np.asarray(im, dtype=np.float32)
    a = mask[..., None].astype(np.float32) * alpha
    out = arr * (1 - a) + np.array(rgb, np.float32) * a
    return Image.fromarray(out.round().clip(0, 255).astype(np.uint8), "RGB")


def usable_entities(sample: Sample, ctx: Context, step: str, task: str, min_confidence: float,
                    min_area: float, max_area: float) -> list[dict[str, Any]]:
    """Entities passing confidence and area checks; each refusal counted per chunk."""
    usable = []
    for ent in sample.meta.get("entities", []):
        x0, y0, x1, y1 = ent["box"]
        area = (x1 - x0) * (y1 - y0)
        why = ("entity_low_confidence" if ent.get("confidence") is not None and ent["confidence"] < min_confidence
               else "entity_too_small" if area < min_area else "entity_fills_image" if area > max_area else "")
        if why:
            ctx.reject(None, why, step, f"{ent['phrase']!r} box {ent['box']}", source=sample.source,
                       source_key=f"{sample.source_key}#chunk{ent.get('chunk_index')}", task=task)
        else:
            usable.append(ent)
    return usable


def fitted_box(box: list[float], src_w: int, src_h: int, t: FitTransform) -> tuple[float, float, float, float]:
    """A normalised source box in pixels of the fitted output."""
    return t.box((box[0] * src_w, box[1] * src_h, box[2] * src_w, box[3] * src_h))


class ReferringStep(MapStep):
    name = "referring_segmentation"

    def __init__(self, p: ReferringParams, masker, output):
        self.p, self.masker, self.o = p, masker, output

    def process(self, sample: Sample, ctx: Context) -> list[Sample]:
        if not sample.meta.get("entities"):
            raise RejectSample("no_entities", "the row has no valid noun chunk")
        usable = usable_entities(sample, ctx, self.name, TASK, self.p.min_confidence, self.p.min_box_area,
                                 self.p.max_box_area)
        if not usable:
            raise RejectSample("no_usable_entity", f"{len(sample.meta['entities'])} chunk(s), none usable")
        groups: dict[tuple[int, int], list[dict[str, Any]]] = {}
        for ent in usable:  # one referent per caption span, however many instances GRIT boxed
            groups.setdefault(tuple(ent["span"]), []).append(ent)
        referents = list(groups.values())
        if self.p.max_per_image is not None and len(referents) > self.p.max_per_image:
            rng = ctx.rng(sample.source, sample.source_key, "referents")
            keep = sorted(rng.choice(len(referents), self.p.max_per_image, replace=False))
            referents = [referents[i] for i in keep]
        o = self.o
        output, t = fit(sample.output_image, o.max_side, o.multiple, o.jpeg)
        src_w, src_h = sample.output_image.width, sample.output_image.height
        boxes = [[fitted_box(e["box"], src_w, src_h, t) for e in ents] for ents in referents]
        masks, mask_info = self._masks(output.pil(), boxes)
        size = condition_size(t, o.max_input_side, o.multiple)
        source_input = output if size == output.size else encode(
            output.pil().resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0), "JPEG", o.jpeg)
        out = [self._make(sample, ents, bxs, m, info, output, source_input, t, ctx)
               for ents, bxs, m, info in zip(referents, boxes, masks, mask_info)]
        sample.output_image.release()
        return out

    def _masks(self, im: Image.Image, boxes: list[list[tuple]]) -> tuple[list[np.ndarray], list[dict]]:
        box_masks = [np.logical_or.reduce([box_mask(im.width, im.height, b) for b in bxs]) for bxs in boxes]
        if self.masker is None:
            return box_masks, [{"mask_source": "box"} for _ in boxes]
        flat = [b for bxs in boxes for b in bxs]
        (sam_masks, scores), = self.masker.masks([im], [flat])
        masks, info, k = [], [], 0
        for bxs, fallback in zip(boxes, box_masks):
            # A box-prompted mask belongs inside its box: what leaks out is the masker's error, not the object.
            m = np.logical_or.reduce(sam_masks[k:k + len(bxs)]) & fallback
            s = scores[k:k + len(bxs)]
            k += len(bxs)
            if m.any():
                masks.append(m)
                info.append({"mask_source": self.masker.name, "masker": self.masker.describe(), "mask_scores": s})
            else:  # an empty predicted mask would colour nothing: keep the box, and say so
                masks.append(fallback)
                info.append({"mask_source": "box", "mask_fallback": f"{self.masker.name}_mask_empty"})
        return masks, info

    def _make(self, sample: Sample, ents, boxes_px, mask, info, output, source_input, t, ctx: Context) -> Sample:
        span = ents[0]["span"]
        rng = ctx.rng(sample.source, sample.source_key, TASK, tuple(span))
        color = self.p.colors[int(rng.integers(len(self.p.colors)))]
        template = int(rng.integers(len(TEMPLATES)))
        phrase = ents[0]["phrase"]
        instruction = TEMPLATES[template].format(ref=referent(phrase), image=placeholder(1), color=color)
        target = encode(tint(output.pil(), mask, COLORS[color], self.p.alpha), "JPEG", self.o.jpeg)
        w, h = output.width, output.height
        meta = {k: v for k, v in sample.meta.items() if k not in ("entities", "ref_exps")}
        meta.update(phrase=phrase, span=span, chunks=[e.get("chunk_index") for e in ents],
                    boxes_px=[[round(v, 3) for v in b] for b in boxes_px],
                    boxes=[[round(b[0] / w, 6), round(b[1] / h, 6), round(b[2] / w, 6), round(b[3] / h, 6)]
                           for b in boxes_px],
                    color=color, color_rgb=list(COLORS[color]), alpha=self.p.alpha,
                    mask_area=round(float(mask.mean()), 6), template=template,
                    source_size=[sample.output_image.width, sample.output_image.height],
                    output_transform={"scale": t.scale, "crop_left": t.crop_left, "crop_top": t.crop_top}, **info)
        out = Sample(TASK, instruction, target, [source_input], sample.source, sample.source_key, meta)
        return out.with_id({"span": span, "mask_source": info["mask_source"], "color": color})


@register_builder("referring_segmentation")
class ReferringSegmentationBuilder(Builder):
    name = TASK
    source_formats = ("grit",)
    Params = ReferringParams

    def __init__(self, recipe):
        super().__init__(recipe)
        unknown = sorted(set(self.params.colors) - set(COLORS))
        if unknown or not self.params.colors:
            raise X2IError(f"params.colors: {unknown or 'empty'}; choose from {sorted(COLORS)}")
        self.masker, self._notes = None, []
        if self.params.masker is not None:
            from x2i.annotators import MissingWeights, get

            masker = get(self.params.masker, self.params.masker_options, self.params.device,
                            self.params.masker_weights)
            if masker.kind != "box_mask":
                raise X2IError(f"params.masker: {self.params.masker} is a {masker.kind} annotator, not a box masker")
            try:
                masker.resolve_weights()
                self.masker = masker
            except MissingWeights as exc:
                if not self.params.skip_missing:
                    raise
                self._notes.append(f"masker {masker.name} skipped (missing {', '.join(exc.files)}): using box "
                                   "masks (meta.mask_source = box); see `x2i annotators list`")

    def steps(self) -> list[Step]:
        return [ReferringStep(self.params, self.masker, self.recipe.output)]

    def notes(self) -> list[str]:
        return self._notes
