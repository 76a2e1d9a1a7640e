"""Edge annotators: Canny and lineart-standard (no weights), HED soft edges and lineart (controlnet_aux weights).

All return a single-channel ("L") map at the input's size, white lines on black (ControlNet's convention).
The weight-based ones run their network on batches of same-size images (see `base.bucketed`); the post-processing
follows controlnet_aux's detectors so a batch gives what the library's one-image call gives.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from x2i.engine.registry import register_annotator

from .base import Annotation, Annotator, bucketed, import_controlnet_aux, resize_short
from .weights import ResolvedWeights, WeightSpec

ANNOTATORS_REPO = "lllyasviel/Annotators"  # ControlNet's annotator checkpoints, as controlnet_aux loads them


def _to_l(arr: np.ndarray, size: tuple[int, int]) -> Image.Image:
    import cv2

    if arr.ndim == 3:
        arr = arr[..., 0]
    if (arr.shape[1], arr.shape[0]) != size:
        arr = cv2.resize(arr, size, interpolation=cv2.INTER_LINEAR)
    return Image.fromarray(np.ascontiguousarray(arr), "L")


@dataclass
class CannyOptions:
    low_threshold: int = 100
    high_threshold: int = 200


class Canny(Annotator):
    kind = "edge"
    library = "opencv-python-headless"
    Options = CannyOptions
    description = "Canny edges (OpenCV), no weights"
    default_batch_size = 32

    def _annotate(self, images: list[Image.Image]) -> list[Annotation]:
        import cv2

        o = self.options
        # Canny on all three channels (the strongest gradient wins), as ControlNet's Canny annotator does.
        return [Annotation(Image.fromarray(cv2.Canny(np.asarray(im), o.low_threshold, o.high_threshold), "L"))
                for im in images]


@dataclass
class LineartStandardOptions:
    gaussian_sigma: float = 6.0
    intensity_threshold: int = 8
    detect_resolution: int = 512


class LineartStandard(Annotator):
    kind = "edge"
    library = "controlnet_aux"
    Options = LineartStandardOptions
    description = "lineart-standard (difference of Gaussians, controlnet_aux), no weights"
    default_batch_size = 32

    def _load(self, weights: list[ResolvedWeights]) -> Any:
        import_controlnet_aux()
        from controlnet_aux import LineartStandardDetector

        return LineartStandardDetector()

    def _annotate(self, images: list[Image.Image]) -> list[Annotation]:
        o = self.options
        out = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # median of an empty selection on flat images
            for im in images:
                arr = self._model(np.asarray(im), guassian_sigma=o.gaussian_sigma,
                                  intensity_threshold=o.intensity_threshold, detect_resolution=o.detect_resolution,
                                  output_type="np")
                out.append(Annotation(_to_l(arr, im.size)))
        return out


@dataclass
class NetEdgeOptions:
    detect_resolution: int = 512
    safe: bool = False  # HED only: quantise soft edges (controlnet_aux `safe`)
    coarse: bool = False  # lineart only: the coarse model


class _TorchEdges(Annotator):
    kind = "edge"
    library = "controlnet_aux"
    uses_torch = True
    default_batch_size = 8
    Options = NetEdgeOptions

    def _prepare(self, images: list[Image.Image]) -> list[np.ndarray]:
        return [resize_short(np.asarray(im), self.options.detect_resolution, 64) for im in images]

    def _annotate(self, images: list[Image.Image]) -> list[Annotation]:
        maps = bucketed(self._prepare(images), self.batch_size, self._forward)
        return [Annotation(_to_l(m, im.size)) for m, im in zip(maps, images)]

    def _forward(self, batch: np.ndarray) -> list[np.ndarray]:
        raise NotImplementedError


class HED(_TorchEdges):
    description = "HED soft edges (controlnet_aux ControlNetHED_Apache2)"

    def weight_specs(self) -> list[WeightSpec]:
        return [WeightSpec(ANNOTATORS_REPO, ("ControlNetHED.pth",), "Apache-2.0")]

    def _load(self, weights: list[ResolvedWeights]) -> Any:
        import_controlnet_aux()
        from controlnet_aux import HEDdetector

        return HEDdetector.from_pretrained(str(weights[0].directory)).to(self.device).netNetwork

    def _forward(self, batch: np.ndarray) -> list[np.ndarray]:
        import torch
        import torch.nn.functional as F

        with torch.no_grad():
            x = torch.from_numpy(batch).to(self.device).float().permute(0, 3, 1, 2)  # 0..255, RGB
            h, w = x.shape[2:]
            projections = [F.interpolate(p.float(), size=(h, w), mode="bilinear", align_corners=False)
                           for p in self._model(x)]
            edge = torch.sigmoid(torch.cat(projections, dim=1).mean(dim=1))
            if self.options.safe:  # controlnet_aux safe_step with step=2
                edge = torch.floor(edge * 3.0) / 2.0
            maps = (edge * 255.0).clamp(0, 255).to(torch.uint8).cpu().numpy()
        return list(maps)


class Lineart(_TorchEdges):
    description = "lineart (controlnet_aux informative-drawings generator)"

    def weight_specs(self) -> list[WeightSpec]:
        return [WeightSpec(ANNOTATORS_REPO, ("sk_model.pth", "sk_model2.pth"), "MIT")]

    def _load(self, weights: list[ResolvedWeights]) -> Any:
        import_controlnet_aux()
        from controlnet_aux import LineartDetector

        det = LineartDetector.from_pretrained(str(weights[0].directory)).to(self.device)
        return det.model_coarse if self.options.coarse else det.model

    def _forward(self, batch: np.ndarray) -> list[np.ndarray]:
        import torch

        with torch.no_grad():
            x = torch.from_numpy(batch).to(self.device).float().permute(0, 3, 1, 2) / 255.0
            line = self._model(x)[:, 0]
            maps = (line * 255.0).clamp(0, 255).to(torch.uint8).cpu().numpy()
        return [255 - m for m in maps]  # dark lines on white out of the net; ControlNet wants white on black


# The names this module serves (x2i/engine/registry.py); a preset is the options a name stands for.
register_annotator("canny", Canny)
register_annotator("lineart_standard", LineartStandard)
register_annotator("hed", HED)
register_annotator("lineart", Lineart)
