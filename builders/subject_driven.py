"""Subject-driven generation from GRIT (OmniGen's GRIT-Entity recipe).

For each usable noun chunk, the entity is cropped (box + a seeded margin) and becomes the input image; the
full image is the output: `The cat is in <img><|image_1|></img>. A cat sleeps on a sofa.` When a caption names
2-3 distinct, separate entities, one multi-entity sample uses them all as inputs, numbered in caption order.

Usable chunk: confidence >= min_confidence, box area within [min_box_area, max_box_area] of the image (an
entity filling the frame teaches nothing about the subject), crop sides >= min_crop_side px in the source,
crop aspect <= max_aspect. Every rejected chunk is counted with its reason.

`subject_input: crop` (default) gives the plain crop; `mask` cuts the subject out with a box-prompted masker
(`masker: grabcut`, weight-free, or `sam` when its weights are present) onto a neutral background, so the input
no longer appears verbatim in the output (plain crops do: see docs/in_context.md). `augment` adds
identity-preserving changes (flip, small rotation, scale, background colour) drawn from a separate generator,
recorded in `meta.entities[k].augment`; with the defaults nothing is drawn and rows stay byte-identical.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from x2i.core.errors import X2IError
from x2i.core.imageio import FitTransform, JpegSettings, encode, fit, fit_pil, fit_region
from x2i.core.prompt import placeholder
from x2i.core.sample import RejectSample, Sample
from x2i.builders import Builder
from x2i.engine.registry import register_builder
from x2i.engine.steps import Context, MapStep, Step
from x2i.core.boxes import iou

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
    subject_input: str = "crop"  # crop | mask (the subject cut out onto `background`)
    masker: str = "grabcut"  # box_mask annotator for subject_input mask: grabcut (no weights) or sam
    masker_weights: str | None = None
    masker_options: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    skip_missing: bool = True  # masker weights missing: fall back to grabcut with a note instead of failing
    background: list[int] = field(default_factory=lambda: [255, 255, 255])  # neutral background of masked subjects
    augment: dict[str, Any] = field(default_factory=dict)  # {flip: p, rotate: deg, scale: [lo, hi], backgrounds: [[r,g,b], ...]}


AUGMENT_KEYS = {"flip", "rotate", "scale", "backgrounds"}


def segmented_subject(rgb: Image.Image, mask: np.ndarray, background: tuple[int, int, int], pad: float,
                      max_side: int, multiple: int) -> tuple[Image.Image, dict[str, Any]]:
    """The masked subject on a plain background: cut to the mask's bounding box plus `pad`, padded (never
    cropped: the subject must stay whole) to multiples of `multiple`, downscaled to `max_side`."""
    ys, xs = np.nonzero(mask)
    x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    px, py = int((x1 - x0) * pad) + 1, int((y1 - y0) * pad) + 1
    x0, y0, x1, y1 = max(0, x0 - px), max(0, y0 - py), min(rgb.width, x1 + px), min(rgb.height, y1 + py)
    arr = np.asarray(rgb, dtype=np.uint8)[y0:y1, x0:x1]
    m = mask[y0:y1, x0:x1, None]
    cut = np.where(m, arr, np.array(background, np.uint8)[None, None]).astype(np.uint8)
    im = Image.fromarray(cut, "RGB")
    scale = min(1.0, max_side / max(im.size))
    if scale < 1.0:
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.Resampling.LANCZOS)
    w, h = (-(-max(im.width, multiple) // multiple) * multiple, -(-max(im.height, multiple) // multiple) * multiple)
    if max(w, h) > max_side:  # padding up must not break the size policy: shrink so the padded side fits
        k = (max_side - multiple) / max(im.size)
        im = im.resize((max(1, int(im.width * k)), max(1, int(im.height * k))), Image.Resampling.LANCZOS)
        w, h = (-(-im.width // multiple) * multiple, -(-im.height // multiple) * multiple)
    canvas = Image.new("RGB", (w, h), tuple(background))
    canvas.paste(im, ((w - im.width) // 2, (h - im.height) // 2))
    return canvas, {"cut_px": [x0, y0, x1, y1], "mask_fill": round(float(m.mean()), 4), "scale": round(scale, 6)}


def augment_subject(im: Image.Image, mask_bg: tuple[int, int, int], spec: dict[str, Any], rng
                    ) -> tuple[Image.Image, dict[str, Any]]:
    """Identity-preserving changes of a masked subject image (the subject stays the same object)."""
    done: dict[str, Any] = {}
    arr = np.asarray(im)
    fg = np.abs(arr.astype(np.int16) - np.array(mask_bg, np.int16)).max(axis=2) > 8
    bg = tuple(mask_bg)
    if spec.get("backgrounds"):
        bg = tuple(int(v) for v in spec["backgrounds"][int(rng.integers(len(spec["backgrounds"])))])
        arr = np.where(fg[..., None], arr, np.array(bg, np.uint8)).astype(np.uint8)
        done["background"] = list(bg)
    im = Image.fromarray(arr, "RGB")
    if spec.get("flip") and rng.random() < float(spec["flip"]):
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        done["flip"] = True
    if spec.get("rotate"):
        angle = float(rng.uniform(-spec["rotate"], spec["rotate"]))
        im = im.rotate(angle, Image.Resampling.BICUBIC, expand=False, fillcolor=bg)
        done["rotate"] = round(angle, 3)
    if spec.get("scale"):
        lo, hi = spec["scale"]
        k = float(rng.uniform(lo, hi))
        small = im.resize((max(1, round(im.width * k)), max(1, round(im.height * k))), Image.Resampling.LANCZOS)
        canvas = Image.new("RGB", im.size, bg)
        canvas.paste(small, ((im.width - small.width) // 2, (im.height - small.height) // 2))
        im = canvas if k <= 1 else small.crop(((small.width - im.width) // 2, (small.height - im.height) // 2,
                                              (small.width - im.width) // 2 + im.width,
                                              (small.height - im.height) // 2 + im.height))
        done["scale"] = round(k, 4)
    return im, done


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
                 quality: JpegSettings, masker=None):
        self.p = params
        self.masker = masker
        self.max_side, self.max_input_side, self.multiple, self.quality = max_side, max_input_side, multiple, quality

    def needs(self) -> list[tuple[str, str]]:
        return masker_needs(self.masker)

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
        if self.p.subject_input == "mask" or self.p.augment:
            return self._subject(image.pil(), ent, crop, margin, (x0, y0, x1, y1))
        pixels, _ = fit_region(image, self.max_input_side, self.multiple, tuple(crop))
        fitted = encode(pixels, "JPEG", self.quality)
        return fitted, {"crop_px": crop, "margin": margin, "input_size": [fitted.width, fitted.height]}

    def _subject(self, pil: Image.Image, ent: dict[str, Any], crop: list[int], margin: float, box: tuple
                 ) -> tuple[Any, dict[str, Any]]:
        """The masked (and/or augmented) subject input; its own generator keeps the row's other draws intact."""
        info: dict[str, Any] = {"crop_px": crop, "margin": margin, "subject_input": self.p.subject_input}
        bg = tuple(self.p.background)
        if self.p.subject_input == "mask":
            (masks, scores), = self.masker.masks([pil], [[box]])
            mask = masks[0]
            info.update(mask_source=self.masker.name if scores[0] > 0 else "box", mask_score=scores[0])
            im, cut = segmented_subject(pil, mask, bg, margin, self.max_input_side, self.multiple)
            info.update(cut)
        else:
            im, _ = fit_pil(pil, self.max_input_side, self.multiple, region=tuple(crop))
        if self.p.augment:
            im, info["augment"] = augment_subject(im, bg, self.p.augment, self._aug_rng)
        fitted = encode(im, "JPEG", self.quality)
        info["input_size"] = [fitted.width, fitted.height]
        return fitted, info

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
        params: dict[str, Any] = {"kind": kind, "chunks": [e.get("chunk_index") for e in ents]}
        if self.p.subject_input != "crop" or self.p.augment:  # crop-mode ids stay as they always were
            params.update(subject_input=self.p.subject_input, augment=self.p.augment)
        meta["subject_input"] = self.p.subject_input if self.p.subject_input != "crop" else meta.get("subject_input")
        if meta["subject_input"] is None:
            del meta["subject_input"]
        else:
            meta["background"] = list(self.p.background)
        return out.with_id(params)

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
        if self.p.augment:  # a generator of its own: augmenting never shifts the row's other draws
            self._aug_rng = ctx.rng(sample.source, sample.source_key, TASK, "augment")
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


@register_builder("subject_driven")
class SubjectDrivenBuilder(Builder):
    name = TASK
    source_formats = ("grit",)
    Params = SubjectDrivenParams

    def __init__(self, recipe):
        super().__init__(recipe)
        p = self.params
        if p.subject_input not in ("crop", "mask"):
            raise X2IError(f"params.subject_input: {p.subject_input!r}; choose crop or mask")
        unknown = sorted(set(p.augment) - AUGMENT_KEYS)
        if unknown:
            raise X2IError(f"params.augment: unknown key(s) {unknown}; allowed: {sorted(AUGMENT_KEYS)}")
        self.masker, self._notes = None, []
        if p.subject_input == "mask":
            self.masker, self._notes = make_masker(p.masker, p.masker_options, p.device, p.masker_weights,
                                                   p.skip_missing)

    @property
    def pixels(self) -> str:
        """Crops are cut, fitted and encoded as arrays; masks and augmentation draw on PIL images."""
        return "array" if self.params.subject_input == "crop" and not self.params.augment else "pil"

    def steps(self) -> list[Step]:
        o = self.recipe.output
        return [SubjectDrivenStep(self.params, o.max_side, o.max_input_side, o.multiple, o.jpeg,
                                  self.masker)]

    def notes(self) -> list[str]:
        return self._notes


def make_masker(name: str, options: dict[str, Any], device: str, weights: str | None, skip_missing: bool):
    """(box-prompted masker, notes): `name` when usable, else GrabCut with a note (or MissingWeights)."""
    from x2i.annotators import MissingWeights, get

    masker = get(name, options, device, weights)
    if masker.kind != "box_mask":
        raise X2IError(f"params.masker: {name} is a {masker.kind} annotator, not a box masker")
    try:
        masker.resolve_weights()
        return masker, []
    except MissingWeights as exc:
        if not skip_missing:
            raise
        return get("grabcut"), [f"masker {name} skipped (missing {', '.join(exc.files)}): using grabcut "
                                "(meta.entities[k].mask_source); see `x2i annotators list`"]


def masker_needs(masker) -> list[tuple[str, str]]:
    """The optional modules a model-based masker imports (GrabCut needs only OpenCV, a core dependency)."""
    return [(m, "annotators") for m in masker.modules()] if masker is not None else []
