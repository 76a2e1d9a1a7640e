"""Layout-grounded generation (GLIGEN's grounding data, in OmniGen's format): phrases + boxes -> image.

Boxes are stored as GLIGEN stores them: xyxy normalised to [0, 1] in the output image, boxes whose area is under
`min_box_area` (GLIGEN's min_box_size, 0.01) dropped, the largest `max_boxes` (30) kept, sorted by area, one phrase
each (`meta.grounding = {"boxes": [...], "phrases": [...]}`). OmniGen takes images rather than box tokens, so
the layout is also rendered as an input image: each box outlined in its own colour and labelled with its phrase.

`Generate an image following this layout <img><|image_1|></img>: <caption>` -> the photo.
"""
from __future__ import annotations

import colorsys
from dataclasses import dataclass
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

from x2i.builders import Builder
from x2i.builders.referring_segmentation import fitted_box, referent
from x2i.builders.vision_control import condition_size, png
from x2i.core.imageio import fit
from x2i.core.prompt import placeholder
from x2i.core.sample import RejectSample, Sample
from x2i.engine.registry import register_builder
from x2i.engine.steps import Context, MapStep, Step

TASK = "layout"
TEMPLATES = (
    "Generate an image following this layout {image}: {caption}",
    "{caption} The objects are placed as in the layout {image}.",
    "Following the layout {image}, where {grounding}, generate: {caption}",
    "Generate an image where each labelled box of {image} holds its object. {caption}",
)


@dataclass
class LayoutParams:
    min_confidence: float = 0.5
    min_box_area: float = 0.01  # GLIGEN min_box_size: box area as a fraction of the image
    max_boxes: int = 30  # GLIGEN keeps the largest 30
    max_box_area: float = 1.0  # 1.0 keeps full-frame boxes (GLIGEN does); lower it to drop them
    background: list[int] | None = None  # layout canvas colour (None: black)


def box_colors(n: int) -> list[tuple[int, int, int]]:
    """n well separated, saturated colours (golden-ratio hues)."""
    out = []
    for i in range(n):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.85, 1.0)
        out.append((int(r * 255), int(g * 255), int(b * 255)))
    return out


@lru_cache(maxsize=8)
def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def render_layout(size: tuple[int, int], boxes: list[list[float]], phrases: list[str],
                  background: tuple[int, int, int] = (0, 0, 0)) -> Image.Image:
    """Normalised boxes drawn largest first (small ones stay visible on top), each outlined and labelled."""
    w, h = size
    im = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(im)
    font = _font(max(10, min(w, h) // 32))
    width = max(2, min(w, h) // 160)
    for (x0, y0, x1, y1), phrase, color in zip(boxes, phrases, box_colors(len(boxes))):
        rect = [x0 * w, y0 * h, max(x0 * w, x1 * w - 1), max(y0 * h, y1 * h - 1)]
        draw.rectangle(rect, outline=color, width=width)
        tx, ty = rect[0] + width + 1, rect[1] + width + 1
        bbox = draw.textbbox((tx, ty), phrase, font=font)
        draw.rectangle([bbox[0] - 1, bbox[1] - 1, bbox[2] + 1, bbox[3] + 1], fill=color)
        draw.text((tx, ty), phrase, fill=(0, 0, 0), font=font)
    return im


class LayoutStep(MapStep):
    name = "layout"

    def __init__(self, p: LayoutParams, output):
        self.p, self.o = p, output

    def process(self, sample: Sample, ctx: Context) -> Sample:
        from x2i.builders.referring_segmentation import usable_entities

        if not sample.meta.get("entities"):
            raise RejectSample("no_entities", "the row has no valid noun chunk")
        # Area is checked after fitting (the crop can shrink a box), so only confidence filters here.
        ents = usable_entities(sample, ctx, self.name, TASK, self.p.min_confidence, 0.0, self.p.max_box_area)
        o = self.o
        output, t = fit(sample.output_image, o.max_side, o.multiple, o.jpeg)
        src_w, src_h = sample.output_image.width, sample.output_image.height
        kept = []
        for ent in ents:
            x0, y0, x1, y1 = fitted_box(ent["box"], src_w, src_h, t)
            box = [x0 / t.width, y0 / t.height, x1 / t.width, y1 / t.height]
            area = (box[2] - box[0]) * (box[3] - box[1])
            if area < self.p.min_box_area:
                ctx.reject(None, "box_too_small", self.name, f"{ent['phrase']!r} area {area:.4f} in the output",
                           source=sample.source, source_key=f"{sample.source_key}#chunk{ent.get('chunk_index')}",
                           task=TASK)
                continue
            kept.append((area, ent, box))
        if not kept:
            raise RejectSample("no_boxes", f"none of {len(sample.meta['entities'])} chunk(s) gives a usable box")
        kept.sort(key=lambda x: (-x[0], x[1].get("chunk_index", 0)))  # GLIGEN: largest first
        for _, ent, _ in kept[self.p.max_boxes:]:
            ctx.reject(None, "box_over_limit", self.name, f"more than {self.p.max_boxes} boxes",
                       source=sample.source, source_key=f"{sample.source_key}#chunk{ent.get('chunk_index')}", task=TASK)
        kept = kept[: self.p.max_boxes]
        boxes = [[round(v, 6) for v in b] for _, _, b in kept]
        phrases = [e["phrase"] for _, e, _ in kept]
        size = condition_size(t, o.max_input_side, o.multiple)
        layout = png(render_layout(size, boxes, phrases, tuple(self.p.background or (0, 0, 0))))
        rng = ctx.rng(sample.source, sample.source_key, TASK, "template")
        template = int(rng.integers(len(TEMPLATES)))
        grounding = "; ".join(f"{referent(p)} is at [{b[0]:.2f}, {b[1]:.2f}, {b[2]:.2f}, {b[3]:.2f}]"
                              for p, b in zip(phrases, boxes))
        caption = (sample.meta.get("caption") or sample.instruction).strip()
        instruction = TEMPLATES[template].format(image=placeholder(1), caption=caption, grounding=grounding)
        meta = {k: v for k, v in sample.meta.items() if k not in ("entities", "ref_exps")}
        meta.update(grounding={"boxes": boxes, "phrases": phrases}, spans=[e["span"] for _, e, _ in kept],
                    chunks=[e.get("chunk_index") for _, e, _ in kept], template=template, layout_size=list(size),
                    source_size=[src_w, src_h],
                    output_transform={"scale": t.scale, "crop_left": t.crop_left, "crop_top": t.crop_top})
        sample.output_image.release()
        out = Sample(TASK, instruction, output, [layout], sample.source, sample.source_key, meta)
        return out.with_id({"min_box_area": self.p.min_box_area, "max_boxes": self.p.max_boxes,
                            "min_confidence": self.p.min_confidence, "max_box_area": self.p.max_box_area})


@register_builder("layout")
class LayoutBuilder(Builder):
    name = TASK
    source_formats = ("grit",)
    Params = LayoutParams

    def steps(self) -> list[Step]:
        return [LayoutStep(self.params, self.recipe.output)]
