"""Subject-driven generation from GRIT (OmniGen's GRIT-Entity recipe).

For each usable noun chunk, the entity is cropped (box + a seeded margin) and becomes the input image; the
full image is the output: `The cat is in <img><|image_1|></img>. A cat sleeps on a sofa.` When a caption names
2-3 distinct, separate entities, one multi-entity sample uses them all as inputs, numbered in caption order.

Usable chunk: confidence >= min_confidence, box area within [min_box_area, max_box_area] of the image (an
entity filling the frame teaches nothing about the subject), crop sides >= min_crop_side px in the source,
crop aspect <= max_aspect. Every rejected chunk is counted with its reason.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from x2i.imageio import FitTransform, encode, fit, fit_pil
from x2i.prompt import placeholder
from x2i.sample import RejectSample, Sample
from x2i.builders import Builder
from x2i.steps import Context, MapStep, Step
from x2i.boxes import iou

TASK = "subject_driven"

# {clauses}: "The cat is in <img><|image_1|></img>." once per entity; {inline}: the placeholder follows each
# entity's phrase in the caption ("The woman in <img><|image_1|></img> waves ...", OmniGen's own examples).
TEMPLATES = ("{clauses} {caption}", "{caption} {clauses}", "{inline}")
_DETERMINERS = {"a", "an", "the", "this", "that", "these", "those", "some", "one", "his", "her", "their",
                "its", "my", "our", "your"}


@dataclass
class SubjectDrivenParams:
    min_confidence: float = 0.5
    min_box_area: float = 0.01
    max_box_area: float = 0.8
    min_crop_side: int = 64
    max_aspect: float = 4.0
    margin: list[float] = field(default_factory=lambda: [0.05, 0.15])  # per-side, fraction of the box size
    multi_entity: bool = True
    max_entities: int = 3
    max_multi_overlap: float = 0.3  # IoU above which two entities are too entangled to crop apart
    max_single_per_image: int | None = None  # cap single-entity samples per source image (None: all)


def entity_name(phrase: str) -> tuple[str, str]:
    """('The small red circle', 'is') from 'A small red circle'; capitalised phrases (names) stay as written."""
    words = phrase.split()
    if words[0].lower() in _DETERMINERS and len(words) > 1:
        name = "The " + " ".join(words[1:])
    elif phrase[:1].isupper():
        name = phrase
    else:
        name = "The " + phrase
    last = re.sub(r"[^a-z]", "", words[-1].lower())
    be = "are" if last.endswith("s") and not last.endswith(("ss", "us", "is")) else "is"
    return name, be


class SubjectDrivenStep(MapStep):
    name = "subject_driven"

    def __init__(self, params: SubjectDrivenParams, max_side: int, max_input_side: int, multiple: int,
                 quality: int):
        self.p = params
        self.max_side, self.max_input_side, self.multiple, self.quality = max_side, max_input_side, multiple, quality

    def _usable(self, sample: Sample, ctx: Context) -> list[dict[str, Any]]:
        width, height = sample.output_image.width, sample.output_image.height
        usable = []
        for ent in sample.meta.get("entities", []):
            x0, y0, x1, y1 = ent["box"]
            area = (x1 - x0) * (y1 - y0)
            if ent.get("confidence") is not None and ent["confidence"] < self.p.min_confidence:
                why = "entity_low_confidence"
            elif area < self.p.min_box_area:
                why = "entity_too_small"
            elif area > self.p.max_box_area:
                why = "entity_fills_image"
            else:
                why = ""
            if not why:
                w_px, h_px = (x1 - x0) * width, (y1 - y0) * height
                if min(w_px, h_px) < self.p.min_crop_side:
                    why = "entity_crop_too_small"
                elif max(w_px, h_px) / min(w_px, h_px) > self.p.max_aspect:
                    why = "entity_aspect"
            if why:
                ctx.reject(None, why, self.name, f"{ent['phrase']!r} box {ent['box']}", source=sample.source,
                           source_key=f"{sample.source_key}#chunk{ent.get('chunk_index')}", task=TASK)
            else:
                usable.append(ent)
        return usable

    def _crop(self, sample: Sample, ent: dict[str, Any], margin: float) -> tuple[Any, dict[str, Any]]:
        """The entity crop as an input image, and its record for meta."""
        image = sample.output_image
        width, height = image.width, image.height
        x0, y0, x1, y1 = ent["box"][0] * width, ent["box"][1] * height, ent["box"][2] * width, ent["box"][3] * height
        mx, my = (x1 - x0) * margin, (y1 - y0) * margin
        crop = [max(0, int(round(x0 - mx))), max(0, int(round(y0 - my))),
                min(width, int(round(x1 + mx))), min(height, int(round(y1 + my)))]
        pixels, _ = fit_pil(image.pil(), self.max_input_side, self.multiple, region=tuple(crop))
        fitted = encode(pixels, "JPEG", self.quality)
        return fitted, {"crop_px": crop, "margin": margin, "input_size": [fitted.width, fitted.height]}

    def _record(self, ent: dict[str, Any], crop_info: dict[str, Any], t: FitTransform, width: int,
                height: int) -> dict[str, Any]:
        x0, y0, x1, y1 = t.box((ent["box"][0] * width, ent["box"][1] * height, ent["box"][2] * width,
                                ent["box"][3] * height))
        return {"phrase": ent["phrase"], "span": ent["span"], "confidence": ent.get("confidence"),
                "chunk_index": ent.get("chunk_index"), "source_box": ent["box"],
                "box": [round(x0 / t.width, 6), round(y0 / t.height, 6), round(x1 / t.width, 6), round(y1 / t.height, 6)],
                **crop_info}

    @staticmethod
    def _instruction(caption: str, ents: list[dict[str, Any]], template: str) -> str:
        """ents are in caption order, so image numbers follow order of appearance in every template."""
        if template == "{inline}":
            out, pos = [], 0
            for k, e in enumerate(ents, 1):
                out += [caption[pos:e["span"][1]], f" in {placeholder(k)}"]
                pos = e["span"][1]
            return ("".join(out) + caption[pos:]).strip()
        names = [entity_name(e["phrase"]) for e in ents]
        clauses = " ".join(f"{name} {be} in {placeholder(k)}." for k, (name, be) in enumerate(names, 1))
        return template.format(clauses=clauses, caption=caption.strip())

    def _make(self, sample: Sample, ents: list[dict[str, Any]], output, t: FitTransform, rng, kind: str,
              margins: dict[int, float], crops: dict[int, tuple[Any, dict[str, Any]]]) -> Sample:
        ents = sorted(ents, key=lambda e: (e["span"][0], e.get("chunk_index", 0)))
        # Inline placement needs distinct, non-overlapping spans.
        spans_ok = all(a["span"][1] <= b["span"][0] for a, b in zip(ents, ents[1:]))
        choices = [i for i, tpl in enumerate(TEMPLATES) if spans_ok or tpl != "{inline}"]
        template_index = int(choices[rng.integers(len(choices))])
        inputs, records = [], []
        width, height = sample.output_image.width, sample.output_image.height
        for ent in ents:
            # An entity's crop depends only on the entity and its margin, so the single and the
            # multi-entity sample share one encoded crop.
            key = id(ent)
            if key not in crops:
                crops[key] = self._crop(sample, ent, margins[key])
            crop, info = crops[key]
            inputs.append(crop)
            records.append(self._record(ent, info, t, width, height))
        caption = sample.meta["caption"]
        instruction = self._instruction(caption, ents, TEMPLATES[template_index])
        meta = {k: v for k, v in sample.meta.items() if k not in ("entities", "ref_exps")}
        meta.update(entities=records, template=template_index, kind=kind, source_size=[width, height],
                    output_transform={"scale": t.scale, "crop_left": t.crop_left, "crop_top": t.crop_top})
        out = Sample(TASK, instruction, output, inputs, sample.source, sample.source_key, meta)
        return out.with_id({"kind": kind, "chunks": [e.get("chunk_index") for e in ents]})

    def process(self, sample: Sample, ctx: Context) -> list[Sample]:
        if not sample.meta.get("entities"):
            raise RejectSample("no_entities", "the row has no valid noun chunk")
        usable = self._usable(sample, ctx)
        if not usable:
            raise RejectSample("no_usable_entity", f"{len(sample.meta['entities'])} chunk(s), none usable")
        output, t = fit(sample.output_image, self.max_side, self.multiple, self.quality)
        # One generator per source row, drawn in a fixed order (margins, singles, group, templates): the row
        # alone decides every choice, and the generator is built once per row rather than once per draw.
        rng = ctx.rng(sample.source, sample.source_key, TASK)
        lo, hi = self.p.margin
        margins = {id(e): float(rng.uniform(lo, hi)) if hi > lo else lo for e in usable}
        singles = usable
        if self.p.max_single_per_image is not None and len(usable) > self.p.max_single_per_image:
            keep = sorted(rng.choice(len(usable), self.p.max_single_per_image, replace=False))
            singles = [usable[i] for i in keep]
        group = self._multi_group(usable, rng) if self.p.multi_entity and self.p.max_entities >= 2 else []
        crops: dict[int, tuple[Any, dict[str, Any]]] = {}  # shared by the single and multi samples
        out = [self._make(sample, [e], output, t, rng, "single", margins, crops) for e in singles]
        if group:
            out.append(self._make(sample, group, output, t, rng, "multi", margins, crops))
        sample.output_image.release()
        return out

    def _multi_group(self, usable: list[dict[str, Any]], rng) -> list[dict[str, Any]]:
        """2-3 entities with distinct phrases and separate regions, chosen with the row's generator."""
        order = [usable[i] for i in rng.permutation(len(usable))]
        want = int(rng.integers(2, min(self.p.max_entities, len(usable)) + 1)) if len(usable) >= 2 else 0
        group: list[dict[str, Any]] = []
        for ent in order:
            if len(group) == want:
                break
            if any(ent["phrase"].lower() == g["phrase"].lower() or iou(ent["box"], g["box"]) > self.p.max_multi_overlap
                   or not (ent["span"][1] <= g["span"][0] or g["span"][1] <= ent["span"][0]) for g in group):
                continue
            group.append(ent)
        return group if len(group) >= 2 else []


class SubjectDrivenBuilder(Builder):
    name = TASK
    source_formats = ("grit",)
    Params = SubjectDrivenParams

    def steps(self) -> list[Step]:
        o = self.recipe.output
        return [SubjectDrivenStep(self.params, o.max_side, o.max_input_side, o.multiple, o.jpeg_quality)]
