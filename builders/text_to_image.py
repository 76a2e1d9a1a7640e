"""Text-to-image from LAION-Aesthetics (OmniGen's X2I text-to-image recipe).

Each LAION row becomes `instruction = caption`, `output_image = the image` (fitted to the output size policy),
after X2I's filters, all exclusive and configurable (null disables one):
    shorter side of the original image > min_side (384), aesthetic > min_aesthetic (4.75),
    pwatermark < max_pwatermark (0.5), punsafe < max_punsafe (0.5).
The original size is img2dataset's original_width/original_height when recorded (img2dataset may have resized
the download), else the decoded image's size. A NaN score is rejected as `<column>_nan`, a missing one as
`<column>_missing`. A filter that is on needs its column in every source file (else the build stops before any
work, naming the parameter that turns it off); one that is off (null) needs none, so a plain URL + caption list
builds with the three score filters set to null. In download mode the score filters and LAION's WIDTH/HEIGHT
(shorter side <= min_side) run on the metadata before the fetch: a row they reject is never downloaded.
The source's aesthetic score and CLIP similarity fill the `aesthetic` / `clip_score`
columns (with their provenance in meta) until a curation step recomputes them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from x2i.builders import Builder
from x2i.curation.filters import json_safe, threshold_reason
from x2i.core.imageio import JpegSettings, fit
from x2i.core.sample import RejectSample, Sample
from x2i.engine.registry import register_builder
from x2i.engine.steps import Context, FilterStep, MapStep, Step

TASK = "text_to_image"


@dataclass
class TextToImageParams:
    min_side: int | None = 384  # keep originals whose shorter side is > min_side px
    min_aesthetic: float | None = 4.75  # keep LAION aesthetic (v1 aesthetic / v2 AESTHETIC_SCORE) > this
    max_pwatermark: float | None = 0.5  # keep watermark probability < this
    max_punsafe: float | None = 0.5  # keep NSFW probability < this


# The score filters: (meta column, params field of its lower bound, of its upper bound).
SCORE_FILTERS = (("aesthetic", "min_aesthetic", None), ("pwatermark", None, "max_pwatermark"),
                 ("punsafe", None, "max_punsafe"))


def needed_columns(p: TextToImageParams) -> dict[str, str]:
    """column -> the parameter whose filter reads it, for the filters that are on."""
    return {column: f"params.{lo or hi}" for column, lo, hi in SCORE_FILTERS if getattr(p, lo or hi) is not None}


def score_reason(p: TextToImageParams, meta: dict[str, Any]) -> tuple[str, str] | None:
    for column, lo, hi in SCORE_FILTERS:
        low, high = (getattr(p, lo) if lo else None), (getattr(p, hi) if hi else None)
        if low is None and high is None:
            continue
        why = threshold_reason(column, meta.get(column), low, high)
        if why:
            return why
    return None


class MetadataFilterStep(FilterStep):
    """Download mode, before the fetch: the score filters, and min_side on LAION's WIDTH/HEIGHT when the row
    gives them (the decoded size is checked again after the download, as in every mode)."""

    name = TASK  # rejects carry the builder's step name, as when the same checks ran after the download

    def __init__(self, params: TextToImageParams):
        self.p = params

    def reason(self, sample: Sample, ctx: Context):
        why = score_reason(self.p, sample.meta)
        if why:
            return why
        w, h = sample.meta.get("laion_width"), sample.meta.get("laion_height")
        if self.p.min_side is not None and isinstance(w, int) and isinstance(h, int) and w > 0 and h > 0 \
                and not min(w, h) > self.p.min_side:
            return "too_small", f"LAION WIDTH x HEIGHT {w}x{h}: shorter side <= {self.p.min_side}"
        return None


class TextToImageStep(MapStep):
    name = TASK

    def __init__(self, params: TextToImageParams, max_side: int, multiple: int, quality: JpegSettings):
        self.p = params
        self.max_side, self.multiple, self.quality = max_side, multiple, quality

    def _check(self, sample: Sample) -> tuple[int, int]:
        m = sample.meta
        why = score_reason(self.p, m)
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
    pixels = "array"  # the image is only fitted (x2i.core.imageio.fit) and hashed: numpy from decode to encode

    def steps(self) -> list[Step]:
        from x2i.sources.laion import FetchStep, require_columns

        source = self.recipe.source
        require_columns(source, needed_columns(self.params))  # before any work (cached per process)
        o = self.recipe.output
        fit_step = TextToImageStep(self.params, o.max_side, o.multiple, o.jpeg)
        options = source.options or {}
        if options.get("download"):
            # fit_step only ever uses the fetched pixels fitted to max_side: FetchStep may decode them reduced.
            return [MetadataFilterStep(self.params), FetchStep(options.get("downloader") or {}, o.max_side), fit_step]
        return [fit_step]
