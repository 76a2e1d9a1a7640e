"""Text-to-image from LAION-Aesthetics (OmniGen's X2I text-to-image recipe).

Each LAION row becomes `instruction = caption`, `output_image = the image` (fitted to the output size policy),
after X2I's filters, all exclusive and configurable (null disables one):
    shorter side of the original image > min_side (384), aesthetic > min_aesthetic (4.75),
    pwatermark < max_pwatermark (0.5), punsafe < max_punsafe (0.5).
The original size is img2dataset's original_width/original_height when recorded (img2dataset may have resized
the download), else the decoded image's size. A NaN score is rejected as `<column>_nan`, a missing one as
`<column>_missing`. The source's aesthetic score and CLIP similarity fill the `aesthetic` / `clip_score`
columns (with their provenance in meta) until a curation step recomputes them.
"""
from __future__ import annotations

from dataclasses import dataclass

from x2i.builders import Builder
from x2i.curation.filters import json_safe, threshold_reason
from x2i.core.imageio import fit
from x2i.core.sample import RejectSample, Sample
from x2i.engine.registry import register_builder
from x2i.engine.steps import Context, MapStep, Step

TASK = "text_to_image"


@dataclass
class TextToImageParams:
    min_side: int | None = 384  # keep originals whose shorter side is > min_side px
    min_aesthetic: float | None = 4.75  # keep LAION aesthetic (v1 aesthetic / v2 AESTHETIC_SCORE) > this
    max_pwatermark: float | None = 0.5  # keep watermark probability < this
    max_punsafe: float | None = 0.5  # keep NSFW probability < this


class TextToImageStep(MapStep):
    name = TASK

    def __init__(self, params: TextToImageParams, max_side: int, multiple: int, quality: int):
        self.p = params
        self.max_side, self.multiple, self.quality = max_side, multiple, quality

    def _check(self, sample: Sample) -> tuple[int, int]:
        m = sample.meta
        checks = (("aesthetic", self.p.min_aesthetic, None), ("pwatermark", None, self.p.max_pwatermark),
                  ("punsafe", None, self.p.max_punsafe))
        for column, lo, hi in checks:
            if lo is None and hi is None:
                continue
            why = threshold_reason(column, m.get(column), lo, hi)
            if why:
                raise RejectSample(*why)
        ow, oh = m.get("original_width"), m.get("original_height")
        if not (isinstance(ow, int) and isinstance(oh, int) and ow > 0 and oh > 0):
            ow, oh = sample.output_image.size
        if self.p.min_side is not None and not min(ow, oh) > self.p.min_side:
            raise RejectSample("too_small", f"original {ow}x{oh}: shorter side <= {self.p.min_side}")
        return ow, oh

    def process(self, sample: Sample, ctx: Context) -> Sample:
        source_size = self._check(sample)
        output, t = fit(sample.output_image, self.max_side, self.multiple, self.quality)
        meta = json_safe(dict(sample.meta))
        meta.update(source_size=list(source_size),
                    output_transform={"scale": t.scale, "crop_left": t.crop_left, "crop_top": t.crop_top})
        version = meta.get("laion_version")
        out = Sample(TASK, meta["caption"].strip(), output, [], sample.source, sample.source_key, meta)
        if meta.get("aesthetic") is not None:
            out.aesthetic = float(meta["aesthetic"])
            meta["aesthetic_source"] = f"LAION-Aesthetics v{version} column " + \
                ("AESTHETIC_SCORE" if version == 2 else "aesthetic")
        if meta.get("similarity") is not None:
            out.clip_score = float(meta["similarity"])
            meta["clip_score_source"] = "LAION similarity column (CLIP ViT-B/32 image-text cosine)"
        return out.with_id()


@register_builder("text_to_image")
class TextToImageBuilder(Builder):
    name = TASK
    source_formats = ("laion",)
    Params = TextToImageParams

    def steps(self) -> list[Step]:
        o = self.recipe.output
        return [TextToImageStep(self.params, o.max_side, o.multiple, o.jpeg_quality)]
