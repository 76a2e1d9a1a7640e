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
from functools import lru_cache
from math import gcd
from typing import Any

import numpy as np
from PIL import Image

from x2i.builders import Builder
from x2i.core.errors import X2IError
from x2i.core.imageio import EncodedImage, FitTransform, JpegSettings, encode, fit_size
from x2i.core.prompt import placeholder
from x2i.core.sample import Sample
from x2i.engine.registry import register_builder
from x2i.engine.steps import Context, Step, batched, is_environment_error

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
    min_signal: dict[str, float] = field(default_factory=dict)  # annotator -> minimum of its SIGNAL measure
    min_coverage: float | None = None  # legacy single rule (share of non-black pixels); 0 turns the check off

    def __post_init__(self):
        unknown = sorted(set(self.min_signal) - set(self.annotators))
        if unknown:
            raise X2IError(f"params.min_signal names annotator(s) not in params.annotators: {unknown}")


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


# The condition's long side may shrink to this share of max_input_side to find an output crop that shares its
# aspect exactly. Over 2,000 random sizes (64-4000 px, aspect 1:3-3:1; max_side 1024, max_input_side 512) the
# output keeps >= 82.1% of the area plain fitting keeps (5th percentile 94.1%, median 100%) and the condition's
# long side is >= 84.4% of what it could be (5th percentile and median 100%).
MIN_CONDITION_SIDE = 0.75


@lru_cache(maxsize=8192)
def _aligned_units(a0: int, b0: int, limit: int) -> tuple[int, int, int, int]:
    """Output (A, B) <= (a0, b0) and condition (a, b) in units of `multiple` with a/b == A/B exactly and
    max(a, b) <= limit, maximising output area x condition side (both keep resolution). (A, B) = (g*p, g*q) with p, q
    coprime; the condition is (k*p, k*q) for k <= g, i.e. the output scaled by exactly k/g."""
    best, best_key = (a0, b0, a0, b0), None
    for ow in range(1, a0 + 1):
        for oh in range(1, b0 + 1):
            g = gcd(ow, oh)
            p, q = ow // g, oh // g
            k = min(g, limit // max(p, q))
            if k < 1 or max(p, q) * k < MIN_CONDITION_SIDE * min(limit, max(ow, oh)):
                continue
            key = (ow * oh * k * max(p, q), ow * oh)  # resolution kept in both images
            if best_key is None or key > best_key:
                best, best_key = (ow, oh, k * p, k * q), key
    return best


def aligned_fit(width: int, height: int, max_side: int, max_input_side: int, multiple: int
                ) -> tuple[FitTransform, tuple[int, int]]:
    """The output's transform (the size policy, with a slightly deeper centre crop where needed) and the
    condition size, such that the condition is the output scaled by one factor: both sides multiples of
    `multiple`, the same aspect ratio exactly. Rounding each side of a fitted output to multiples of 16 on its
    own (592x400 -> 512x352) stretched conditions by up to 8 px per side against their photo."""
    t = fit_size(width, height, max_side, multiple)
    scale = t.scale
    sw, sh = (width, height) if scale == 1.0 else (max(1, round(width * scale)), max(1, round(height * scale)))
    a0, b0, limit = t.width // multiple, t.height // multiple, max_input_side // multiple
    if max(t.width, t.height) <= max_input_side:
        return t, (t.width, t.height)
    ou, hu, a, b = _aligned_units(a0, b0, max(1, limit))
    ow, oh = ou * multiple, hu * multiple
    t = FitTransform(scale, (sw - ow) // 2, (sh - oh) // 2, ow, oh)
    return t, (a * multiple, b * multiple)


def fit_aligned(image: EncodedImage, t: FitTransform, quality: JpegSettings) -> EncodedImage:
    """Apply a FitTransform (scale, then crop) to an image; the bytes pass through when nothing changes."""
    if t.identity and (t.width, t.height) == image.size:
        return image
    im, s = image.pil(), t.scale
    box = (t.crop_left / s, t.crop_top / s, (t.crop_left + t.width) / s, (t.crop_top + t.height) / s)
    if s == 1.0:
        out = im.crop(tuple(int(v) for v in box))
    else:
        out = im.resize((t.width, t.height), Image.Resampling.LANCZOS, box=box, reducing_gap=3.0)
    return encode(out, "PNG" if image.format == "PNG" else "JPEG", quality=quality, path=image.path)


def work_images(sample: Sample, max_side: int, max_input_side: int, multiple: int, quality: JpegSettings
                ) -> tuple[EncodedImage, FitTransform, EncodedImage]:
    """(output photo, its fit transform, the same photo at condition size): what annotators and inputs use.
    The condition size is the output's scaled by one exact factor (aligned_fit)."""
    src = sample.output_image
    t, size = aligned_fit(src.width, src.height, max_side, max_input_side, multiple)
    out = fit_aligned(src, t, quality)
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


@dataclass(frozen=True)
class SignalTest:
    """How to tell a condition that carries signal from an empty one (docs/annotators.md, "Empty conditions").

    measure: `edge_density` (lit pixels / sqrt(w*h): line length in image sides, so the same drawing measures
    the same at any size), `lit_share` (share of lit pixels), `depth_range` (1st..99th percentile spread of
    the grey levels, 0-1: depth maps are min-max normalised, so a few outliers can stretch a flat map), or
    `non_dominant` (share of pixels not in the most frequent colour: a one-class segmentation is no layout).
    level: grey level (0-255) a pixel must exceed to be lit (edge and pose maps).
    """

    measure: str
    level: int
    minimum: float


# Calibrated on the embedded default (docs/annotators.md has the distributions these come from).
SIGNAL: dict[str, SignalTest] = {
    # binary 0/255; the sparsest real map measured (one small triangle on a flat background) is 0.51 sides
    "canny": SignalTest("edge_density", 127, 0.1),
    # soft DoG response: values <= 64 are mostly background texture (lit pixels > 64 lie within 3 px of a Canny
    # edge 97.7% of the time); maps that miss every shape measure <= 0.03 sides, those that draw one >= 0.13
    "lineart_standard": SignalTest("edge_density", 64, 0.08),
}
SIGNAL_BY_KIND: dict[str, SignalTest] = {  # not calibrated on real outputs (weights needed): see the docs
    "edge": SignalTest("edge_density", 64, 0.08),
    "pose": SignalTest("lit_share", 0, 0.0005),
    "depth": SignalTest("depth_range", 0, 0.1),
    "segmentation": SignalTest("non_dominant", 0, 0.005),
}


def signal_test(name: str, kind: str, p: AnnotatorParams) -> SignalTest | None:
    """The test for an annotator's conditions (None: no check)."""
    if p.min_coverage is not None:  # the legacy rule, kept for recipes that set it
        return SignalTest("lit_share", 0, p.min_coverage) if p.min_coverage > 0 and kind != "depth" else None
    test = SIGNAL.get(name) or SIGNAL_BY_KIND[kind]
    if name in p.min_signal:
        test = SignalTest(test.measure, test.level, float(p.min_signal[name]))
    return test


def signal(im: Image.Image, test: SignalTest) -> float:
    """The condition's value of `test.measure`."""
    arr = np.asarray(im)
    if test.measure == "non_dominant":
        flat = arr.reshape(-1, arr.shape[2]) if arr.ndim == 3 else arr.reshape(-1, 1)
        _, counts = np.unique(flat, axis=0, return_counts=True)
        return float(1.0 - counts.max() / flat.shape[0])
    grey = arr.max(axis=2) if arr.ndim == 3 else arr
    if test.measure == "depth_range":
        lo, hi = np.percentile(grey, [1, 99])
        return float(hi - lo) / 255.0
    lit = int((grey > test.level).sum())
    if test.measure == "edge_density":
        return lit / float(np.sqrt(grey.shape[0] * grey.shape[1]))
    return lit / grey.size


class ConditionStep(Step):
    """Annotate batches of source samples with every selected annotator; emit one sample per (image, annotator)."""

    def __init__(self, direction: str, annotators: list, p: AnnotatorParams, output):
        self.direction, self.annotators, self.p, self.o = direction, annotators, p, output
        self.name = direction
        self.batch_size = max([a.batch_size for a in annotators] + [1])
        self._described: dict[str, dict] = {}
        self._tests = {a.name: signal_test(a.name, a.kind, p) for a in annotators}

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
            from x2i.core.sample import RejectSample

            raise RejectSample("image_too_small", f"{sample.output_image.width}x{sample.output_image.height} "
                                                  f"< min_side {self.p.min_side}")
        o = self.o
        return (sample, *work_images(sample, o.max_side, o.max_input_side, o.multiple, o.jpeg))

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
                test, sig = self._tests[ann.name], None
                if res.ok and test is not None:
                    value = signal(res.image, test)
                    sig = {"measure": test.measure, "level": test.level, "value": round(value, 5)}
                    if value < test.minimum:
                        res = Annotation(reason="empty_condition", detail=f"{test.measure} {value:.4g} < "
                                         f"{test.minimum:g} (level {test.level}); {cover:.5f} of pixels non-black")
                if not res.ok:
                    ctx.reject(None, res.reason, f"{self.name}:{ann.name}", res.detail, source=sample.source,
                               source_key=sample.source_key, task=task, meta={"url": sample.meta.get("url")})
                    continue
                out = self._guard(sample, ctx, lambda: self._make(item, ann, res, cover, sig, ctx))
                if out is not None:
                    yield out
        for s in batch:
            s.output_image.release()

    def _make(self, item, ann, res, cover: float, sig: dict | None, ctx: Context) -> Sample:
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
                    condition_coverage=round(cover, 5), condition_signal=sig,
                    condition_size=[work.width, work.height],
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


@register_builder("vision")
class VisionBuilder(_ConditionBuilder):
    name = "vision"
    direction = "vision"


@register_builder("control")
class ControlBuilder(_ConditionBuilder):
    name = "control"
    direction = "control"
