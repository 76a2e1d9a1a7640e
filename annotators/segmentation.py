"""Segmentation: semantic maps (UperNet through transformers) and box-prompted masks (SAM through transformers).

`SemanticSegmentation` returns an RGB map in the ADE20K palette (ControlNet's seg convention) at the input's size,
with the labels present recorded in `info`. `SamBoxMasks` is a `box_mask` annotator: `masks(images, boxes)` gives
one boolean mask per pixel box, used by referring segmentation to turn GRIT boxes into object masks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from x2i.engine.registry import register_annotator

from .base import Annotation, Annotator, AnnotatorError, bucketed, import_controlnet_aux
from .depth import TRANSFORMERS_FILES, load_transformers
from .weights import ResolvedWeights, WeightSpec


def palette(n: int) -> np.ndarray:
    """n RGB colours: ADE20K's for the first 150 labels (what ControlNet's seg models saw), then fixed random."""
    import_controlnet_aux()
    from controlnet_aux.util import ade_palette

    base = np.array(ade_palette(), dtype=np.uint8)
    if n <= len(base):
        return base[:n]
    extra = np.random.default_rng(150).integers(0, 256, size=(n - len(base), 3), dtype=np.uint8)
    return np.concatenate([base, extra])


@dataclass
class SegmentationOptions:
    repo: str = "openmmlab/upernet-convnext-small"  # UperNet + ConvNeXt, ADE20K (150 classes)
    dtype: str = "float32"
    max_labels_in_meta: int = 20


class SemanticSegmentation(Annotator):
    kind = "segmentation"
    library = "transformers"
    uses_torch = True
    Options = SegmentationOptions
    description = "semantic segmentation in the ADE20K palette (transformers AutoModelForSemanticSegmentation)"

    def weight_specs(self) -> list[WeightSpec]:
        return [WeightSpec(self.options.repo, TRANSFORMERS_FILES)]

    def modules(self) -> tuple[str, ...]:
        return super().modules() + ("controlnet_aux",)  # ADE20K palette

    def _load(self, weights: list[ResolvedWeights]) -> Any:
        return load_transformers(weights, "AutoModelForSemanticSegmentation", "AutoImageProcessor",
                                 self.options.dtype, self.device)

    def _annotate(self, images: list[Image.Image]) -> list[Annotation]:
        import torch

        processor, model = self._model
        colours = palette(model.config.num_labels)
        id2label = model.config.id2label

        def run(batch: np.ndarray) -> list[np.ndarray]:
            inputs = processor(images=list(batch), return_tensors="pt")
            pixels = inputs["pixel_values"].to(self.device, dtype=model.dtype)
            with torch.no_grad():
                logits = model(pixel_values=pixels).logits.float()
            size = batch.shape[1:3]
            logits = torch.nn.functional.interpolate(logits, size=size, mode="bilinear", align_corners=False)
            return list(logits.argmax(dim=1).cpu().numpy())

        labels = bucketed([np.asarray(im) for im in images], self.batch_size, run)
        out = []
        for lab in labels:
            ids, counts = np.unique(lab, return_counts=True)
            top = [int(i) for i in ids[np.argsort(-counts)][: self.options.max_labels_in_meta]]
            out.append(Annotation(Image.fromarray(colours[lab], "RGB"),
                                  info={"labels": [id2label.get(i, str(i)) for i in top]}))
        return out


@dataclass
class SamOptions:
    repo: str = "facebook/sam-vit-base"
    dtype: str = "float32"


class SamBoxMasks(Annotator):
    kind = "box_mask"
    library = "transformers"
    uses_torch = True
    default_batch_size = 1
    Options = SamOptions
    description = "box-prompted object masks (Segment Anything through transformers SamModel)"

    def weight_specs(self) -> list[WeightSpec]:
        return [WeightSpec(self.options.repo, TRANSFORMERS_FILES, "Apache-2.0")]

    def _load(self, weights: list[ResolvedWeights]) -> Any:
        return load_transformers(weights, "SamModel", "SamProcessor", self.options.dtype, self.device)

    def _annotate(self, images: list[Image.Image]) -> list[Annotation]:
        raise AnnotatorError(f"{self.name} is a box-prompted masker: call .masks(images, boxes)")

    def masks(self, images: list[Image.Image], boxes: list[list[tuple[float, float, float, float]]]
              ) -> list[tuple[list[np.ndarray], list[float]]]:
        """Per image: one boolean mask (H, W) per pixel box (x0, y0, x1, y1), and SAM's predicted IoU for each."""
        import torch

        from x2i.core.imageio import to_rgb

        self.load()
        processor, model = self._model
        out = []
        for im, bxs in zip(images, boxes):
            im = to_rgb(im)
            if not bxs:
                out.append(([], []))
                continue
            inputs = processor(images=im, input_boxes=[[list(map(float, b)) for b in bxs]], return_tensors="pt")
            with torch.no_grad():
                result = model(pixel_values=inputs["pixel_values"].to(self.device, dtype=model.dtype),
                               input_boxes=inputs["input_boxes"].to(self.device, dtype=model.dtype),
                               multimask_output=False)
            masks = processor.image_processor.post_process_masks(
                result.pred_masks.float().cpu(), inputs["original_sizes"].cpu(), inputs["reshaped_input_sizes"].cpu())[0]
            scores = result.iou_scores.float().cpu().numpy().reshape(len(bxs), -1)[:, 0]
            out.append(([m[0].numpy().astype(bool) for m in masks], [round(float(s), 4) for s in scores]))
        return out


# The names this module serves (x2i/engine/registry.py); a preset is the options a name stands for.
register_annotator("seg_upernet", SemanticSegmentation)
register_annotator("sam", SamBoxMasks)
