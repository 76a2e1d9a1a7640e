"""Finding and cutting out subjects: an open-vocabulary detector and a weight-free box-prompted masker.

`GroundingDinoDetector` (kind `detector`, transformers' GroundingDinoForObjectDetection): `detect(images,
prompts)` gives, per image, boxes in pixels with the prompt phrase each box answers and its score. Used by the
in-context builder when a clip's sidecar carries no boxes.

`GrabCutBoxMasks` (kind `box_mask`, OpenCV GrabCut initialised from the box): the same `masks(images, boxes)`
interface as SAM (`sam`), with no weights, so subjects can be segmented onto a neutral background anywhere.
GrabCut models the box's outside as background and the inside as probable foreground; it works on the box plus
a margin so the colour models see real background. A mask that comes back (nearly) empty falls back to the box,
and the score says so (0.0).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from x2i.engine.registry import register_annotator

from .base import Annotation, Annotator, AnnotatorError
from .depth import TRANSFORMERS_FILES
from .weights import ResolvedWeights, WeightSpec


@dataclass
class GrabCutOptions:
    iterations: int = 4
    margin: float = 0.2  # context around the box given to GrabCut, as a fraction of the box size
    min_fill: float = 0.05  # a mask covering less of its box than this is a failure (box used instead)


class GrabCutBoxMasks(Annotator):
    kind = "box_mask"
    Options = GrabCutOptions
    description = "box-prompted object masks (OpenCV GrabCut initialised from the box; no weights)"

    def _annotate(self, images: list[Image.Image]) -> list[Annotation]:
        raise AnnotatorError(f"{self.name} is a box-prompted masker: call .masks(images, boxes)")

    def masks(self, images: list[Image.Image], boxes: list[list[tuple[float, float, float, float]]]
              ) -> list[tuple[list[np.ndarray], list[float]]]:
        """Per image: a boolean mask (H, W) per pixel box, and the share of the box it fills (0.0: fell back)."""
        from x2i.core.imageio import to_rgb

        out = []
        for im, bxs in zip(images, boxes):
            arr = np.asarray(to_rgb(im))
            masks, scores = [], []
            for box in bxs:
                m, ok = self.mask(arr, box)
                masks.append(m)
                scores.append(round(float(m.sum()) / max(1.0, _area(box)), 4) if ok else 0.0)
            out.append((masks, scores))
        return out

    def mask(self, rgb: np.ndarray, box: tuple[float, float, float, float]) -> tuple[np.ndarray, bool]:
        import cv2

        h, w = rgb.shape[:2]
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
        full = np.zeros((h, w), bool)
        if x1 - x0 < 4 or y1 - y0 < 4:
            full[y0:y1, x0:x1] = True
            return full, False
        mx, my = int((x1 - x0) * self.options.margin) + 2, int((y1 - y0) * self.options.margin) + 2
        rx0, ry0, rx1, ry1 = max(0, x0 - mx), max(0, y0 - my), min(w, x1 + mx), min(h, y1 + my)
        region = np.ascontiguousarray(rgb[ry0:ry1, rx0:rx1, ::-1])  # GrabCut wants BGR
        gc = np.zeros(region.shape[:2], np.uint8)
        # A box touching the image edge leaves GrabCut no outside on that side: inset the rectangle by 1 px.
        rect = (max(1, x0 - rx0), max(1, y0 - ry0), 0, 0)
        rect = (rect[0], rect[1], min(region.shape[1] - 1, x1 - rx0) - rect[0], min(region.shape[0] - 1, y1 - ry0) - rect[1])
        if rect[2] < 2 or rect[3] < 2:
            full[y0:y1, x0:x1] = True
            return full, False
        bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        cv2.setRNGSeed(0)  # GrabCut's GMM initialisation draws from OpenCV's global RNG: same input, same mask
        cv2.grabCut(region, gc, rect, bgd, fgd, self.options.iterations, cv2.GC_INIT_WITH_RECT)
        local = (gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)
        full[ry0:ry1, rx0:rx1] = local
        box_mask = np.zeros((h, w), bool)
        box_mask[y0:y1, x0:x1] = True
        full &= box_mask
        if full.sum() < self.options.min_fill * box_mask.sum():
            return box_mask, False
        return full, True


def _area(box: tuple[float, float, float, float]) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


# The published IDEA-Research repos hold the BERT tokenizer next to the model and image processor.
GROUNDING_DINO_FILES = TRANSFORMERS_FILES + (("tokenizer.json", "vocab.txt"), "tokenizer_config.json")


@dataclass
class GroundingDinoOptions:
    repo: str = "IDEA-Research/grounding-dino-tiny"
    box_threshold: float = 0.35
    text_threshold: float = 0.25
    max_boxes: int = 10
    dtype: str = "float32"


class GroundingDinoDetector(Annotator):
    kind = "detector"
    library = "transformers"
    uses_torch = True
    default_batch_size = 4
    Options = GroundingDinoOptions
    description = "open-vocabulary boxes for text phrases (Grounding DINO through transformers)"

    def weight_specs(self) -> list[WeightSpec]:
        return [WeightSpec(self.options.repo, GROUNDING_DINO_FILES, "Apache-2.0")]

    def _load(self, weights: list[ResolvedWeights]) -> Any:
        import torch
        import transformers
        from transformers.utils import logging

        logging.disable_progress_bar()
        folder = str(weights[0].directory)
        model = transformers.GroundingDinoForObjectDetection.from_pretrained(folder, dtype=getattr(torch, self.options.dtype))
        return transformers.GroundingDinoProcessor.from_pretrained(folder), model.to(self.device).eval()

    def _annotate(self, images: list[Image.Image]) -> list[Annotation]:
        raise AnnotatorError(f"{self.name} is a detector: call .detect(images, prompts)")

    @staticmethod
    def prompt(phrases: list[str]) -> str:
        """Grounding DINO's text format: lower-case phrases, each ending with a period."""
        return " ".join(p.strip().lower().rstrip(".") + "." for p in phrases if p.strip())

    def detect(self, images: list[Image.Image], prompts: list[str]) -> list[list[dict[str, Any]]]:
        """Per image: [{box: [x0, y0, x1, y1] px, phrase, score}] above the thresholds, best first."""
        import torch

        from x2i.core.imageio import to_rgb

        self.load()
        processor, model = self._model
        out = []
        for start in range(0, len(images), self.batch_size):
            ims = [to_rgb(im) for im in images[start:start + self.batch_size]]
            texts = prompts[start:start + self.batch_size]
            inputs = processor(images=ims, text=texts, return_tensors="pt", padding=True).to(self.device)
            with torch.no_grad():
                result = model(**inputs)
            found = processor.post_process_grounded_object_detection(
                result, inputs["input_ids"], threshold=self.options.box_threshold,
                text_threshold=self.options.text_threshold, target_sizes=[(im.height, im.width) for im in ims])
            for res in found:
                labels = res["text_labels"] if "text_labels" in res else res["labels"]
                dets = [{"box": [round(float(v), 2) for v in b], "phrase": str(lab).replace("[SEP]", "").strip(" ."),
                         "score": round(float(s), 4)}
                        for b, s, lab in zip(res["boxes"].tolist(), res["scores"].tolist(), labels)]
                out.append(sorted(dets, key=lambda d: -d["score"])[: self.options.max_boxes])
        return out


# The names this module serves (x2i/engine/registry.py); a preset is the options a name stands for.
register_annotator("grabcut", GrabCutBoxMasks)
register_annotator("grounding_dino", GroundingDinoDetector)
