"""Depth annotators: MiDaS DPT-Hybrid (controlnet_aux checkpoint) and DPT / Depth Anything (transformers).

Output: a single-channel ("L") relative depth map at the input's size, near = bright (MiDaS inverse depth),
min-max normalised per image as ControlNet's depth annotator does. A flat prediction (max == min) gives reason
"depth_flat" rather than a black image passed off as depth.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from x2i.engine.registry import register_annotator

from .base import Annotation, Annotator, bucketed, import_controlnet_aux, resize_short
from .edges import ANNOTATORS_REPO
from .weights import ResolvedWeights, WeightSpec

# What a transformers model repo holds; processors written by transformers 5 are named processor_config.json.
TRANSFORMERS_FILES = ("config.json", ("model.safetensors", "pytorch_model.bin"),
                      ("preprocessor_config.json", "processor_config.json"))


def load_transformers(weights: list[ResolvedWeights], model_class: str, processor_class: str, dtype: str,
                      device: str) -> tuple[Any, Any]:
    """(processor, model in eval mode on `device`) from a resolved transformers repo folder, with no per-load
    progress bars in build logs."""
    import torch
    import transformers
    from transformers.utils import logging

    logging.disable_progress_bar()
    folder = str(weights[0].directory)
    model = getattr(transformers, model_class).from_pretrained(folder, dtype=getattr(torch, dtype))
    return getattr(transformers, processor_class).from_pretrained(folder), model.to(device).eval()


def _normalise(depth: np.ndarray, size: tuple[int, int]) -> Annotation:
    """Float depth (h, w) -> 8-bit L image at `size`, per-image min-max."""
    import cv2

    depth = depth.astype(np.float32)
    if (depth.shape[1], depth.shape[0]) != size:
        depth = cv2.resize(depth, size, interpolation=cv2.INTER_LINEAR)
    lo, hi = float(depth.min()), float(depth.max())
    if not np.isfinite([lo, hi]).all() or hi - lo <= 1e-12:
        return Annotation(reason="depth_flat", detail=f"predicted depth is constant ({lo:.4g})")
    arr = ((depth - lo) / (hi - lo) * 255.0).clip(0, 255).astype(np.uint8)
    return Annotation(Image.fromarray(arr, "L"), info={"depth_range": [round(lo, 6), round(hi, 6)]})


@dataclass
class MidasOptions:
    detect_resolution: int = 384  # DPT-Hybrid was trained at 384


class MidasDepth(Annotator):
    kind = "depth"
    library = "controlnet_aux"
    uses_torch = True
    Options = MidasOptions
    description = "MiDaS DPT-Hybrid depth (controlnet_aux, lllyasviel/Annotators checkpoint)"

    def weight_specs(self) -> list[WeightSpec]:
        return [WeightSpec(ANNOTATORS_REPO, ("dpt_hybrid-midas-501f0c75.pt",), "MIT")]

    def _load(self, weights: list[ResolvedWeights]) -> Any:
        import_controlnet_aux()
        from controlnet_aux import MidasDetector

        return MidasDetector.from_pretrained(str(weights[0].directory)).to(self.device).model

    def _forward(self, batch: np.ndarray) -> list[np.ndarray]:
        import torch

        with torch.no_grad():
            x = torch.from_numpy(batch).to(self.device).float().permute(0, 3, 1, 2) / 127.5 - 1.0
            return list(self._model(x).float().cpu().numpy())

    def _annotate(self, images: list[Image.Image]) -> list[Annotation]:
        arrays = [resize_short(np.asarray(im), self.options.detect_resolution, 64) for im in images]
        depths = bucketed(arrays, self.batch_size, self._forward)
        return [_normalise(d, im.size) for d, im in zip(depths, images)]


@dataclass
class TransformersDepthOptions:
    repo: str = "depth-anything/Depth-Anything-V2-Small-hf"  # the Hugging Face repo the weights come from
    dtype: str = "float32"  # float16 / bfloat16 on GPU for throughput


class TransformersDepth(Annotator):
    kind = "depth"
    library = "transformers"
    uses_torch = True
    Options = TransformersDepthOptions
    description = "DPT / Depth Anything depth estimation (transformers AutoModelForDepthEstimation)"

    def weight_specs(self) -> list[WeightSpec]:
        return [WeightSpec(self.options.repo, TRANSFORMERS_FILES)]

    def _load(self, weights: list[ResolvedWeights]) -> Any:
        return load_transformers(weights, "AutoModelForDepthEstimation", "AutoImageProcessor", self.options.dtype,
                                 self.device)

    def _annotate(self, images: list[Image.Image]) -> list[Annotation]:
        import torch

        processor, model = self._model
        arrays = [np.asarray(im) for im in images]

        def run(batch: np.ndarray) -> list[np.ndarray]:
            inputs = processor(images=list(batch), return_tensors="pt")
            pixels = inputs["pixel_values"].to(self.device, dtype=model.dtype)
            with torch.no_grad():
                return list(model(pixel_values=pixels).predicted_depth.float().cpu().numpy())

        # The processor keeps the aspect ratio, so only same-size images can share a batch.
        depths = bucketed(arrays, self.batch_size, run)
        return [_normalise(d, im.size) for d, im in zip(depths, images)]


# The names this module serves (x2i/engine/registry.py); a preset is the options a name stands for.
register_annotator("depth_midas", MidasDepth)
register_annotator("depth_dpt", TransformersDepth, {"repo": "Intel/dpt-large"})
register_annotator("depth_anything", TransformersDepth, {"repo": "depth-anything/Depth-Anything-V2-Small-hf"})
