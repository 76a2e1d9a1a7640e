"""Instruction editing (OmniGen's image-edit task): `<img><|image_1|></img> <instruction>` -> the edited image.

Reads any edit source (InstructPix2Pix, MagicBrush incl. chains, UltraEdit, HQ-Edit incl. inverse edits,
SEED-Data-Edit). For each pair:
- source and edited image must have the same size (`size_mismatch` otherwise: a misaligned pair teaches the
  model to move pixels around); both are fitted with the same transform, the output size policy, so they stay
  pixel-aligned (edit inputs use `output.max_side`, not `max_input_side`);
- the pair must visibly change: the share of pixels differing by more than `diff_threshold` must exceed
  `min_change` (`no_change` otherwise); optionally at most `max_change` (`change_everywhere`);
- the change mask is recorded in `meta.change_mask` (x2i.core.masks): the dataset's own mask when it has one and
  `mask` is auto/dataset, else the pixel difference (opened to drop compression speckle, dilated to cover soft
  edges). Training can weight the loss on it, as OmniGen intended.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from x2i.builders import Builder
from x2i.curation.filters import json_safe
from x2i.core.errors import X2IError
from x2i.core.imageio import FitTransform, JpegSettings, fit
from x2i.core.masks import changed_fraction, diff_mask, encode_mask, mask_from_image
from x2i.core.prompt import placeholder
from x2i.core.sample import RejectSample, Sample
from x2i.engine.registry import register_builder
from x2i.engine.steps import Context, MapStep, Step

TASK = "image_edit"
EDIT_FORMATS = ("instructpix2pix", "magicbrush", "ultraedit", "hq_edit", "seed_data_edit")


@dataclass
class ImageEditParams:
    mask: str = "auto"  # auto: the dataset's mask when present, else the pixel difference | dataset | diff
    diff_threshold: int = 32  # a pixel changed when a channel differs by more than this (above JPEG noise)
    min_change: float = 0.001  # share of changed pixels a pair needs (below: no visible change)
    max_change: float | None = None  # reject pairs changing more than this share (None: no limit)
    mask_open: int = 1  # px, opening radius that removes isolated speckle from diff masks
    mask_dilate: int = 2  # px, dilation that covers soft edges of diff masks

    def __post_init__(self):  # checked when the recipe is read, before any work
        if self.mask not in ("auto", "dataset", "diff"):
            raise X2IError(f"params.mask must be auto, dataset or diff, got {self.mask!r}")
        if not 0 <= self.diff_threshold < 255 or self.mask_open < 0 or self.mask_dilate < 0:
            raise X2IError("params: diff_threshold must be in 0..254, mask_open and mask_dilate >= 0")


def fit_mask(mask: np.ndarray, t: FitTransform) -> np.ndarray:
    """Apply an image's FitTransform to its mask (nearest neighbour: masks stay binary)."""
    im = Image.fromarray(mask.astype(np.uint8) * 255, "L")
    if t.scale != 1.0:
        im = im.resize((max(1, round(im.width * t.scale)), max(1, round(im.height * t.scale))), Image.Resampling.NEAREST)
    im = im.crop((t.crop_left, t.crop_top, t.crop_left + t.width, t.crop_top + t.height))
    return np.asarray(im) > 127


class ImageEditStep(MapStep):
    name = TASK

    def __init__(self, params: ImageEditParams, max_side: int, multiple: int, quality: JpegSettings):
        self.p = params
        self.max_side, self.multiple, self.quality = max_side, multiple, quality

    def _mask(self, dataset_mask, source_size, t: FitTransform, inp, out) -> tuple[np.ndarray, dict]:
        mode = self.p.mask
        if dataset_mask is not None and mode in ("auto", "dataset"):
            if dataset_mask.size == source_size:
                mask, how = mask_from_image(dataset_mask.pil())
                return fit_mask(mask, t), {"source": "dataset", "dataset_convention": how}
            if mode == "dataset":
                raise RejectSample("mask_size_mismatch", f"mask {dataset_mask.size} vs image {source_size}")
        elif mode == "dataset":
            raise RejectSample("mask_missing", "mask: dataset, but the row has no mask")
        mask = diff_mask(inp.pil(), out.pil(), self.p.diff_threshold, self.p.mask_open, self.p.mask_dilate)
        extra = {"source": "diff", "diff_threshold": self.p.diff_threshold}
        if dataset_mask is not None:
            extra["note"] = f"dataset mask {dataset_mask.size} does not match the image {source_size}"
        return mask, extra

    def process(self, sample: Sample, ctx: Context) -> Sample:
        meta = dict(sample.meta)
        dataset_mask = meta.pop("_mask", None)
        if len(sample.input_images) != 1:
            raise RejectSample("not_an_edit_pair", f"{len(sample.input_images)} input images")
        src, dst = sample.input_images[0], sample.output_image
        if src.size != dst.size:
            raise RejectSample("size_mismatch", f"source {src.width}x{src.height}, edited {dst.width}x{dst.height}")
        out, t = fit(dst, self.max_side, self.multiple, self.quality)
        inp, _ = fit(src, self.max_side, self.multiple, self.quality)
        fraction = changed_fraction(inp.pil(), out.pil(), self.p.diff_threshold)
        if not fraction > self.p.min_change:
            raise RejectSample("no_change", f"{fraction:.5f} of pixels changed (<= {self.p.min_change})")
        if self.p.max_change is not None and not fraction < self.p.max_change:
            raise RejectSample("change_everywhere", f"{fraction:.3f} of pixels changed (>= {self.p.max_change})")
        mask, extra = self._mask(dataset_mask, src.size, t, inp, out)
        if not mask.any():
            raise RejectSample("empty_mask", f"the {extra['source']} mask marks no pixel")
        meta = json_safe(meta)
        meta.update(change_mask=encode_mask(mask, **extra), change_fraction=round(fraction, 6),
                    source_size=[src.width, src.height],
                    output_transform={"scale": t.scale, "crop_left": t.crop_left, "crop_top": t.crop_top})
        text = sample.instruction.strip()
        if not text:
            raise RejectSample("instruction_missing", "empty edit instruction")
        edited = Sample(TASK, f"{placeholder(1)} {text}", out, [inp], sample.source, sample.source_key, meta)
        return edited.with_id({"kind": meta.get("edit_kind")})


@register_builder("image_edit")
class ImageEditBuilder(Builder):
    name = TASK
    source_formats = EDIT_FORMATS
    Params = ImageEditParams

    def steps(self) -> list[Step]:
        o = self.recipe.output
        return [ImageEditStep(self.params, o.max_side, o.multiple, o.jpeg)]
