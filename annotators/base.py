"""The annotator interface: a name, a version, a batched call, a device, lazy loading and declared weights.

An annotator maps a list of images to a list of `Annotation`s, one per image, in order: the condition image
(edges, depth, pose skeleton, segmentation map) or a countable reason why there is none ("no_person_found").
Box-prompted maskers (`kind = "box_mask"`) instead map (image, boxes) to one boolean mask per box.

Inputs may be any PIL mode (grayscale, RGBA, 16-bit): they are normalised to 8-bit RGB first. Outputs always
have the input's size, so a condition lines up pixel for pixel with the image it came from.

Devices: "cpu", "cuda[:N]" or "auto" (CUDA when available, else CPU). Asking for CUDA where there is none is an
error (`AnnotatorError`) raised when the annotator is created, before any work. OpenCV annotators run on the CPU
whatever the device. Models load on first use (`load()`), once per process (see `annotators.get`).
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from x2i.core.config import from_dict
from x2i.core.errors import X2IError
from x2i.core.imageio import to_rgb

from .weights import ResolvedWeights, WeightSpec, resolve


class AnnotatorError(X2IError):
    """A user-facing annotator problem: unknown name, bad options, unavailable device."""


@dataclass
class Annotation:
    """One image's result: `image` (the condition, same size as the input) or a countable `reason` why not."""

    image: Image.Image | None = None
    reason: str = ""
    detail: str = ""
    info: dict[str, Any] = field(default_factory=dict)  # small facts worth keeping in meta (people found, labels)

    @property
    def ok(self) -> bool:
        return self.image is not None


@dataclass
class NoOptions:
    pass


def import_controlnet_aux() -> None:
    """Import controlnet_aux once, quietly: its package init imports every detector and warns about optional
    extras we never use (mediapipe, mmpose) and about timm/torch deprecations."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import controlnet_aux  # noqa: F401


@functools.lru_cache(maxsize=None)
def library_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def resolve_device(requested: str) -> str:
    """'cpu', 'auto' (CUDA if present, else CPU) or 'cuda[:N]' (an error when CUDA is not available)."""
    if requested == "cpu":
        return "cpu"
    if requested == "auto" or requested.startswith("cuda"):
        try:
            import torch

            available = torch.cuda.is_available()
            count = torch.cuda.device_count() if available else 0
        except ImportError:
            available, count = False, 0
        if requested == "auto":
            return "cuda" if available else "cpu"
        index = int(requested.split(":")[1]) if ":" in requested else 0
        if not available or index >= count:
            raise AnnotatorError(f"device {requested!r} requested but torch sees {count} CUDA device(s); "
                                 "use device: cpu, or device: auto to fall back to the CPU")
        return requested
    raise AnnotatorError(f"unknown device {requested!r}; use cpu, cuda, cuda:N or auto")


class Annotator:
    """Base class. Subclasses set the class attributes and implement `_load` and `_annotate`."""

    kind: ClassVar[str] = "edge"  # edge | depth | pose | segmentation | box_mask
    version: ClassVar[str] = "1"  # our implementation's version: bump when outputs change for the same inputs
    library: ClassVar[str] = "opencv-python-headless"  # the distribution whose code does the work
    uses_torch: ClassVar[bool] = False
    default_batch_size: ClassVar[int] = 8
    min_side: ClassVar[int] = 16  # smaller inputs get reason "image_too_small"
    Options: ClassVar[type] = NoOptions
    description: ClassVar[str] = ""

    def __init__(self, name: str, options: dict[str, Any] | None = None, device: str = "cpu",
                 weights: str | None = None, preset: dict[str, Any] | None = None, batch_size: int | None = None):
        self.name = name
        self.batch_size = batch_size or self.default_batch_size
        self.options = from_dict(self.Options, {**(preset or {}), **(options or {})}, f"annotator {name} options")
        self.device = resolve_device(device) if self.uses_torch else "cpu"
        self.weights_path = weights
        self._model: Any = None
        self._resolved: list[ResolvedWeights] | None = None

    def modules(self) -> tuple[str, ...]:
        """The optional modules this annotator imports (checked before a build starts)."""
        library = {"controlnet_aux": ("controlnet_aux",), "transformers": ("transformers",)}.get(self.library, ())
        return (("torch",) if self.uses_torch else ()) + library

    # -- weights -------------------------------------------------------------------------------------------
    def weight_specs(self) -> list[WeightSpec]:
        """The weight files this annotator needs with its current options (empty: weight-free)."""
        return []

    def resolve_weights(self) -> list[ResolvedWeights]:
        """Find the weight files on disk (MissingWeights otherwise); cached."""
        if self._resolved is None:
            self._resolved = [resolve(self.name, spec, self.weights_path) for spec in self.weight_specs()]
        return self._resolved

    # -- identity ------------------------------------------------------------------------------------------
    @property
    def full_version(self) -> str:
        """`<name>-<version> (<library>==<version>)`: recorded in every sample made with this annotator."""
        return f"{self.name}-{self.version} ({self.library}=={library_version(self.library)})"

    def describe(self) -> dict[str, Any]:
        """What went into an annotation, for sample meta."""
        out: dict[str, Any] = {"name": self.name, "version": self.full_version,
                               "options": dataclasses.asdict(self.options)}
        if self.weight_specs():
            out["weights"] = [{"repo": s.repo_id, "files": list(r.files), "from": r.where}
                              for s, r in zip(self.weight_specs(), self.resolve_weights())]
        return out

    # -- running -------------------------------------------------------------------------------------------
    def load(self) -> None:
        if self._model is None:
            import warnings

            weights = self.resolve_weights()
            with warnings.catch_warnings():  # library deprecation chatter (timm, torch.load) while building models
                warnings.simplefilter("ignore")
                try:
                    self._model = self._load(weights)
                except (ImportError, MemoryError):
                    raise
                except Exception as exc:  # noqa: BLE001 - any failure to load weights is about the files, not a row
                    files = ", ".join(str(r.path(f)) for r in weights for f in r.files) or "(none)"
                    raise AnnotatorError(
                        f"annotator {self.name!r} could not load its weights ({files}): {type(exc).__name__}: "
                        f"{str(exc)[:200]}; replace them with the published files (`x2i annotators fetch "
                        f"{self.name}`)") from exc

    def _load(self, weights: list[ResolvedWeights]) -> Any:
        return True

    def __call__(self, images: Sequence[Image.Image]) -> list[Annotation]:
        """Annotate a batch; one Annotation per input image, in order."""
        rgb = [to_rgb(im) for im in images]
        results: list[Annotation | None] = [None] * len(rgb)
        todo = []
        for i, im in enumerate(rgb):
            if min(im.size) < self.min_side:
                results[i] = Annotation(reason="image_too_small",
                                        detail=f"{im.width}x{im.height} < {self.min_side} px for {self.name}")
            else:
                todo.append(i)
        if todo:
            self.load()
            for i, ann in zip(todo, self._annotate([rgb[i] for i in todo])):
                results[i] = ann
        return [r for r in results if r is not None]

    def _annotate(self, images: list[Image.Image]) -> list[Annotation]:
        raise NotImplementedError


def resize_short(im: np.ndarray, short: int, multiple: int) -> np.ndarray:
    """Resize so the shorter side is about `short`, both sides multiples of `multiple` (detect resolution)."""
    import cv2

    h, w = im.shape[:2]
    k = short / min(h, w)
    nh, nw = max(multiple, int(round(h * k / multiple)) * multiple), max(multiple, int(round(w * k / multiple)) * multiple)
    if (nh, nw) == (h, w):
        return im
    return cv2.resize(im, (nw, nh), interpolation=cv2.INTER_AREA if k < 1 else cv2.INTER_CUBIC)


def bucketed(items: list[np.ndarray], batch_size: int, run: Callable[[np.ndarray], list[Any]]) -> list[Any]:
    """Run `run` on stacks of same-shape arrays (at most batch_size each); results back in input order.

    Models need one size per batch; images of one source often share a size, so grouping by shape batches
    them without distorting any image."""
    out: list[Any] = [None] * len(items)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, a in enumerate(items):
        groups.setdefault(a.shape, []).append(i)
    for idx in groups.values():
        for start in range(0, len(idx), batch_size):
            chunk = idx[start:start + batch_size]
            for i, r in zip(chunk, run(np.stack([items[i] for i in chunk]))):
                out[i] = r
    return out


def options_dict(options: Any) -> dict[str, Any]:
    return dataclasses.asdict(options) if dataclasses.is_dataclass(options) else {}


__all__ = ["Annotator", "Annotation", "AnnotatorError", "NoOptions", "resolve_device", "resize_short",
           "bucketed", "from_dict"]
