"""Model-free curation steps: thresholds on source columns (NSFW, watermark, ...), size/aspect, caption cleanup.

All thresholds are exclusive, the X2I convention ("aesthetic > 4.75", "pwatermark < 0.5"): `min` keeps values
> min, `max` keeps values < max. A value that is NaN is rejected as `<name>_nan` and a missing one as
`<name>_missing`: neither is ever compared and silently dropped or kept.
"""
from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass
from typing import Any

from x2i.core.errors import X2IError
from x2i.core.prompt import placeholder, split
from x2i.core.sample import RejectSample, Sample
from x2i.engine.registry import register_step
from x2i.engine.steps import Context, FilterStep, MapStep


def threshold_reason(name: str, value: Any, min: float | None = None, max: float | None = None,
                     nan: bool = False) -> tuple[str, str] | None:
    """Why `value` fails the (exclusive) bounds, or None when it passes. `nan`: the value was NaN at the source
    (builders store NaN as null in meta and list the field in `meta.nan_fields`)."""
    if nan or (isinstance(value, float) and math.isnan(value)):
        return f"{name}_nan", f"{name} is NaN"
    if value is None:
        return f"{name}_missing", f"{name} is missing"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{name}_invalid", f"{name} is {value!r}"
    if min is not None and not value > min:
        return f"{name}_below_min", f"{name} {value:g} <= {min:g}"
    if max is not None and not value < max:
        return f"{name}_above_max", f"{name} {value:g} >= {max:g}"
    return None


def json_safe(meta: dict[str, Any]) -> dict[str, Any]:
    """NaN/inf floats become null (JSON has no NaN) and are listed in `nan_fields`, so later steps still know."""
    out, bad = {}, []
    for k, v in meta.items():
        if isinstance(v, float) and not math.isfinite(v):
            bad.append(k)
            v = None
        out[k] = v
    if bad:
        out["nan_fields"] = sorted(set(out.get("nan_fields") or []) | set(bad))
    return out


def get_field(meta: dict[str, Any], dotted: str) -> tuple[bool, Any]:
    """(found, value) of a dotted path into meta."""
    node: Any = meta
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


@dataclass
class MetaThresholdParams:
    field: str  # dotted path into meta, e.g. pwatermark, punsafe, clip_sim_dir (or a score column: aesthetic)
    min: float | None = None  # keep values > min (null: no lower bound)
    max: float | None = None  # keep values < max (null: no upper bound; both null: the filter is off)
    missing: str = "reject"  # reject | keep: what to do when the field is absent or null
    name: str | None = None  # reason prefix (default: the field's last part)


@register_step("meta_threshold")
class MetaThresholdStep(FilterStep):
    """Bounds on a source column carried in meta: NSFW (punsafe), watermark (pwatermark), UltraEdit's clip_sim_*."""

    name = "meta_threshold"
    Params = MetaThresholdParams

    def __init__(self, params: MetaThresholdParams):
        if params.missing not in ("reject", "keep"):
            raise X2IError(f"meta_threshold: missing must be reject or keep, got {params.missing!r}")
        self.p = params
        self.label = params.name or params.field.split(".")[-1]

    def reason(self, sample: Sample, ctx: Context):
        if self.p.min is None and self.p.max is None:  # both bounds null: the filter is off and reads nothing
            return None
        if self.p.field in ("aesthetic", "clip_score") and self.p.field not in sample.meta:
            found, value = True, getattr(sample, self.p.field)
        else:
            found, value = get_field(sample.meta, self.p.field)
        nan = self.p.field in sample.meta.get("nan_fields", ())
        if (not found or value is None) and not nan and self.p.missing == "keep":
            return None
        return threshold_reason(self.label, value, self.p.min, self.p.max, nan)


@dataclass
class SizeFilterParams:
    min_side: int | None = None  # keep when the shorter side is > min_side px
    max_aspect: float | None = None  # keep when long side / short side is < max_aspect
    of: str = "source"  # source: the size before fitting (meta.source_size), else the output image's size


@register_step("size_filter")
class SizeFilterStep(FilterStep):
    name = "size_filter"
    Params = SizeFilterParams

    def __init__(self, params: SizeFilterParams):
        if params.of not in ("source", "output"):
            raise X2IError(f"size_filter: of must be source or output, got {params.of!r}")
        self.p = params

    def reason(self, sample: Sample, ctx: Context):
        size = sample.meta.get("source_size") if self.p.of == "source" else None
        w, h = size if isinstance(size, (list, tuple)) and len(size) == 2 else sample.output_image.size
        if self.p.min_side is not None and not min(w, h) > self.p.min_side:
            return "too_small", f"{w}x{h}: shorter side <= {self.p.min_side}"
        if self.p.max_aspect is not None and not max(w, h) / max(1, min(w, h)) < self.p.max_aspect:
            return "aspect_too_extreme", f"{w}x{h}: aspect >= {self.p.max_aspect}"
        return None


_URL = re.compile(r"(?:https?://|www\.)\S+", re.I)
_TAG = re.compile(r"<[^>]{1,200}>")
_SPACE = re.compile(r"\s+")


def clean_text(text: str, strip_urls: bool = True, strip_html: bool = True) -> str:
    if strip_html:
        text = _TAG.sub(" ", html.unescape(html.unescape(text)))
    if strip_urls:
        text = _URL.sub(" ", text)
    text = text.replace("\u200b", " ").replace("\ufeff", " ")
    return _SPACE.sub(" ", text).strip()


@dataclass
class CaptionCleanParams:
    strip_html: bool = True  # unescape entities (&amp;), drop tags
    strip_urls: bool = True
    min_words: int = 1  # reject instructions with fewer words of text (placeholders not counted)
    max_chars: int = 2000  # reject longer ones (LAION has pasted pages as captions)
    min_letter_ratio: float = 0.5  # reject text that is mostly digits / symbols (file names, SKUs)


@register_step("caption_clean")
class CaptionCleanStep(MapStep):
    """Clean the text of an instruction, leaving its image placeholders exactly as they are."""

    name = "caption_clean"
    Params = CaptionCleanParams

    def __init__(self, params: CaptionCleanParams):
        self.p = params

    def process(self, sample: Sample, ctx: Context) -> Sample:
        out, text_only = [], []
        for piece in split(sample.instruction):
            if isinstance(piece, int):
                out.append(placeholder(piece))
                continue
            inner = clean_text(piece, self.p.strip_urls, self.p.strip_html)
            # keep the single space that separated this text from a neighbouring placeholder
            lead = " " if piece[:1].isspace() else ""
            trail = " " if piece[-1:].isspace() else ""
            out.append(lead + inner + trail if inner else (" " if piece else ""))
            if inner:
                text_only.append(inner)
        cleaned = _SPACE.sub(" ", "".join(out)).strip()
        text = " ".join(text_only)
        words = len(re.findall(r"\w+", text))
        if words < self.p.min_words:
            raise RejectSample("caption_too_short", f"{words} word(s): {text[:80]!r}")
        if len(text) > self.p.max_chars:
            raise RejectSample("caption_too_long", f"{len(text)} chars")
        letters = sum(map(str.isalpha, text))  # in C: a generator costs a frame per character
        if letters < self.p.min_letter_ratio * max(1, len(text.replace(" ", ""))):
            raise RejectSample("caption_not_text", f"{text[:80]!r}")
        if cleaned != sample.instruction:
            sample.meta.setdefault("instruction_raw", sample.instruction)
            sample.instruction = cleaned
        return sample

