"""Vision (image -> condition) and control (condition -> image) samples from any captioned source.

One annotation of each source image serves both directions, OmniGen-style:
- `vision/<annotator>`: `Generate the depth map of <img><|image_1|></img>.` -> the depth map;
- `control/<annotator>`: `Generate an image following this depth map <img><|image_1|></img>: <caption>` -> the photo.

Sizes: the output photo follows the size policy (`output.max_side`, multiples of 16); the annotator sees that same
image scaled (never cropped again) to at most `output.max_input_side`, so a condition lines up pixel for pixel
with the photo it came from. Conditions are PNG (lossless), photos JPEG.

Annotators whose weights are missing are skipped with one note (`skip_missing`), so the default recipes run
anywhere; with none left the build stops with the full "missing weights" message.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from x2i.builders import Builder
from x2i.errors import X2IError
from x2i.imageio import EncodedImage, FitTransform, encode, fit
from x2i.prompt import placeholder
from x2i.sample import Sample
from x2i.steps import Context, Step, batched, is_environment_error

CONDITION_KINDS = ("edge", "depth", "pose", "segmentation")

# What each condition is called in instructions.
WHAT = {"canny": "canny edge map", "lineart_standard": "line art", "lineart": "line art", "hed": "soft edge map",
        "depth_midas": "depth map", "depth_dpt": "depth map", "depth_anything": "depth map",
        "openpose": "human pose skeleton", "openpose_full": "human pose skeleton",
        "seg_upernet": "segmentation map"}
WHAT_BY_KIND = {"edge": "edge map", "depth": "depth map", "pose": "human pose skeleton",
                "segmentation": "segmentation map"}

VISION_TEMPLATES = (
    "Generate the {what} of {image}.",
    "Detect the {what} in this image: {image}",
    "{image} Extract the {what} of this image.",
    "Produce the {what} for the picture {image}.",
)
VISION_POSE_TEMPLATES = ("Detect the skeleton of human in this image: {image}",
                         "Generate the human pose skeleton of the people in {image}.")
CONTROL_TEMPLATES = (
    "Generate an image following this {what} {image}: {caption}",
    "Following the {what} {image}, generate: {caption}",
    "{caption} Use {image} as the {what}.",
    "Generate a picture according to the {what} of {image}. {caption}",
)


@dataclass
class AnnotatorParams:
    annotators: list[str] = field(default_factory=lambda: ["canny", "lineart_standard"])
    skip_missing: bool = False  # true: skip annotators whose weights are absent (one note) instead of stopping
    device: str = "cpu"  # cpu | cuda | cuda:N | auto (CUDA if present, else CPU)
    batch_size: int | None = None  # images per annotator call (None: the annotator's default)
    weights: dict[str, str] = field(default_factory=dict)  # annotator -> folder holding its weight files
    options: dict[str, dict[str, Any]] = field(default_factory=dict)  # annotator -> its options
    min_side: int = 64  # source images with a shorter side are rejected (image_too_small)
    min_coverage: float = 0.0005  # conditions with fewer non-black pixels are rejected (empty_condition)


def select_annotators(p: AnnotatorParams, kinds: tuple[str, ...] = CONDITION_KINDS) -> tuple[list, list[str]]:
    """The usable annotators (created, weights resolved, not loaded) and a note on the ones skipped."""
    from x2i.annotators import MissingWeights, get

    if not p.annotators:
        raise X2IError("params.annotators is empty: name at least one (see `x2i annotators list`)")
    unknown = sorted(set(p.options) - set(p.annotators)) + sorted(set(p.weights) - set(p.annotators))
    if unknown:
        raise X2IError(f"params.options/params.weights name annotator(s) not in params.annotators: {unknown}")
    usable, skipped, first_error = [], [], None
    for name in dict.fromkeys(p.annotators):
        ann = get(name, p.options.get(name), p.device, p.weights.get(name), p.batch_size)
        if ann.kind not in kinds:
            raise X2IError(f"annotator {name} makes {ann.kind} output; this task needs one of {list(kinds)}")
        try:
            ann.resolve_weights()
        except MissingWeights as exc:
            if not p.skip_missing:
                raise
            first_error = first_error or exc
            skipped.append(f"{name} (missing {', '.join(exc.files)})")
            continue
        usable.append(ann)
    if not usable:
        raise X2IError(f"no usable annotator among {p.annotators}: {first_error}")
    notes = [f"skipped annotators without weights: {'; '.join(skipped)}; see `x2i annotators list`"] if skipped else []
    return usable, notes


def condition_size(t: FitTransform, max_input_side: int, multiple: int) -> tuple[int, int]:
    """The fitted output's size scaled (not cropped) to at most max_input_side, sides multiples of `multiple`."""
    scale = min(1.0, max_input_side / max(t.width, t.height))
    if scale == 1.0:
        return t.width, t.height
    return (max(multiple, int(round(t.width * scale / multiple)) * multiple),
            max(multiple, int(round(t.height * scale / multiple)) * multiple))


def work_images(sample: Sample, max_side: int, max_input_side: int, multiple: int, quality: int
                ) -> tuple[EncodedImage, FitTransform, EncodedImage]:
    """(output photo, its fit transform, the same photo at condition size): what annotators and inputs use."""
    out, t = fit(sample.output_image, max_side, multiple, quality)
    size = condition_size(t, max_input_side, multiple)
    if size == (out.width, out.height):
        return out, t, out
    small = out.pil().resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    return out, t, encode(small, "JPEG", quality)


def png(im: Image.Image) -> EncodedImage:
    """A lossless condition image; dropping the cached pixels makes later `.pil()` calls decode to RGB."""
    enc = encode(im, "PNG")
    enc.release()
    return enc


def coverage(im: Image.Image) -> float:
    arr = np.asarray(im)
    nonzero = arr.any(axis=2) if arr.ndim == 3 else arr > 0
    return float(nonzero.mean())


class ConditionStep(Step):
    """Annotate batches of source samples with every selected annotator; emit one sample per (image, annotator)."""

    def __init__(self, direction: str, annotators: list, p: AnnotatorParams, output):
        self.direction, self.annotators, self.p, self.o = direction, annotators, p, output
        self.name = direction
        self.batch_size = max([a.batch_size for a in annotators] + [1])
        self._described: dict[str, dict] = {}

    def needs(self) -> list[tuple[str, str]]:
        return [(m, "annotators") for ann in self.annotators for m in ann.modules()]

    def _describe(self, ann) -> dict:
        """Annotator name, version, options, weights: the same for every sample, so looked up once."""
        if ann.name not in self._described:
            self._described[ann.name] = ann.describe()
        return dict(self._described[ann.name])

    def run(self, samples: Iterable[Sample], ctx: Context) -> Iterator[Sample]:
        for batch in batched(samples, self.batch_size):
            yield from self._flush(batch, ctx)

    def _prepare(self, sample: Sample) -> tuple[Sample, EncodedImage, FitTransform, EncodedImage]:
        if min(sample.output_image.size) < self.p.min_side:
            from x2i.sample import RejectSample

            raise RejectSample("image_too_small", f"{sample.output_image.width}x{sample.output_image.height} "
                                                  f"< min_side {self.p.min_side}")
        o = self.o
        return (sample, *work_images(sample, o.max_side, o.max_input_side, o.multiple, o.jpeg_quality))

    def _annotate(self, ann, items: list, ctx: Context) -> list:
        """Annotations for the batch; when the batch call fails, each image alone (one bad image, one reject;
        None where an undeclared error was counted under an error budget)."""
        try:
            return ann([w.pil() for _, _, _, w in items])
        except Exception as exc:  # noqa: BLE001 - retried one by one below, where each failure is classified
            if ctx.strict or is_environment_error(exc):
                raise
        results = []
        for item in items:
            try:
                results.append(ann([item[3].pil()])[0])
            except Exception as exc:  # noqa: BLE001 - stops the build unless an error budget was given
                ctx.unexpected(exc, f"{self.name}:{ann.name}", source=item[0].source,
                               source_key=item[0].source_key, task=f"{self.direction}/{ann.name}")
                results.append(None)  # counted by ctx.unexpected
        return results

    def _flush(self, batch: list[Sample], ctx: Context) -> Iterator[Sample]:
        from x2i.annotators import Annotation

        items = [x for x in (self._guard(s, ctx, lambda s=s: self._prepare(s)) for s in batch) if x is not None]
        for ann in self.annotators:
            task = f"{self.direction}/{ann.name}"
            for item, res in zip(items, self._annotate(ann, items, ctx)):
                if res is None:
                    continue
                sample = item[0]
                cover = coverage(res.image) if res.ok else 0.0
                if res.ok and ann.kind != "depth" and cover < self.p.min_coverage:
                    res = Annotation(reason="empty_condition", detail=f"{cover:.5f} of pixels set")
                if not res.ok:
                    ctx.reject(None, res.reason, f"{self.name}:{ann.name}", res.detail, source=sample.source,
                               source_key=sample.source_key, task=task, meta={"url": sample.meta.get("url")})
                    continue
                out = self._guard(sample, ctx, lambda: self._make(item, ann, res, cover, ctx))
                if out is not None:
                    yield out
        for s in batch:
            s.output_image.release()

    def _make(self, item, ann, res, cover: float, ctx: Context) -> Sample:
        sample, output, t, work = item
        task = f"{self.direction}/{ann.name}"
        what = WHAT.get(ann.name, WHAT_BY_KIND[ann.kind])
        rng = ctx.rng(sample.source, sample.source_key, task, "template")
        caption = sample.meta.get("caption") or sample.instruction
        condition = png(res.image)
        if self.direction == "vision":
            bank = VISION_POSE_TEMPLATES if ann.kind == "pose" else VISION_TEMPLATES
            template = int(rng.integers(len(bank)))
            instruction = bank[template].format(what=what, image=placeholder(1))
            inputs, target = [work], condition
        else:
            template = int(rng.integers(len(CONTROL_TEMPLATES)))
            instruction = CONTROL_TEMPLATES[template].format(what=what, image=placeholder(1), caption=caption.strip())
            inputs, target = [condition], output
        meta = {k: v for k, v in sample.meta.items() if k not in ("entities", "ref_exps")}
        meta.update(annotator=self._describe(ann), annotation=res.info, template=template, condition=what,
                    condition_coverage=round(cover, 5), condition_size=[work.width, work.height],
                    source_size=[sample.output_image.width, sample.output_image.height],
                    output_transform={"scale": t.scale, "crop_left": t.crop_left, "crop_top": t.crop_top})
        out = Sample(task, instruction, target, inputs, sample.source, sample.source_key, meta)
        return out.with_id({"annotator": ann.full_version, "options": meta["annotator"]["options"]})


class _ConditionBuilder(Builder):
    source_formats = ("grit",)  # any source whose samples carry an image and a caption; GRIT is the embedded one
    Params = AnnotatorParams
    direction = ""

    def __init__(self, recipe):
        super().__init__(recipe)
        self.annotators, self._notes = select_annotators(self.params)

    def steps(self) -> list[Step]:
        return [ConditionStep(self.direction, self.annotators, self.params, self.recipe.output)]

    def notes(self) -> list[str]:
        return self._notes


class VisionBuilder(_ConditionBuilder):
    name = "vision"
    direction = "vision"


class ControlBuilder(_ConditionBuilder):
    name = "control"
    direction = "control"
