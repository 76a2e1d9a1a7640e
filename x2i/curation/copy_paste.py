"""Copy-paste: does an input image appear verbatim in the output image?

A model trained on rows whose input is a crop of the output learns to paste. The test: normalised
cross-correlation (OpenCV `matchTemplate`, TM_CCOEFF_NORMED, colour) of each input image against the output over
a few scales; the row is a copy when the best score is >= `threshold` (0.97). For a segmented input (the subject
cut out onto a neutral background, `meta.subject_input == "mask"`) only the subject's region counts: the pixels
that differ from `meta.background`, eroded by 1 px (anti-aliased edges mix in the neutral background). A
flat-coloured subject has no texture for a correlation to see; it carries its identity in its silhouette, so
then the mask itself is matched against the output's map of pixels of the subject's colour. Plain crops score
~1.0; frames of one video shot, where pose, scale and light change, score well below.

`copy_scores(sample)` gives the best score per input; `CopyPasteStep` (recipe step `copy_paste`) records them in
`meta.copy_paste` and drops copies with reason `copy_paste`; its `after_build` hook puts the build's rate into
the manifest's `post_build.copy_paste`. `x2i stats` reports the share per task (x2i/inspect/stats.py).
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from x2i.core.sample import Sample
from x2i.engine.manifest import PartitionRecord
from x2i.engine.registry import register_step
from x2i.engine.steps import Context, FilterStep

DEFAULT_SCALES = (0.5, 0.63, 0.8, 0.9, 1.0, 1.11, 1.25, 1.6, 2.0)


FLAT_STD = 4.0  # per-channel std (0-255) under the mask below which a subject is flat colour
COLOUR_TOLERANCE = 30  # a pixel of the output "has the subject's colour" within this (max over channels)


def subject_mask(rgb: np.ndarray, background: tuple[int, int, int], tolerance: int = 12, erode: int = 1) -> np.ndarray:
    """Pixels of a segmented input that are not its neutral background, shrunk by `erode` px (uint8 0/255)."""
    import cv2

    fg = (np.abs(rgb.astype(np.int16) - np.array(background, np.int16)).max(axis=2) > tolerance).astype(np.uint8)
    if erode > 0:
        fg = cv2.erode(fg, np.ones((2 * erode + 1, 2 * erode + 1), np.uint8))
    return fg * 255


def masked_score(inp: np.ndarray, out: np.ndarray, mask: np.ndarray, scales: tuple[float, ...], max_side: int) -> float:
    """Copy score of a segmented subject: masked NCC, or for a flat subject its silhouette against the output's
    same-colour pixels."""
    sub = inp[mask > 0]
    if sub.size == 0:
        return -1.0
    if float(sub.std(axis=0).max()) >= FLAT_STD:
        return copy_score(inp, out, mask, scales, max_side)
    import cv2

    colour = np.median(sub, axis=0)
    silhouette = cv2.dilate(mask, np.ones((3, 3), np.uint8))  # undo the 1 px erosion: the whole outline counts
    same = (np.abs(out.astype(np.int16) - colour.astype(np.int16)).max(axis=2) <= COLOUR_TOLERANCE)
    return copy_score(silhouette, same.astype(np.uint8) * 255, None, scales, max_side)


def copy_score(template: np.ndarray, image: np.ndarray, mask: np.ndarray | None = None,
               scales: tuple[float, ...] = DEFAULT_SCALES, max_side: int = 256) -> float:
    """Best TM_CCOEFF_NORMED of `template` (RGB) in `image` (RGB) over `scales`; -1.0 when it never fits.

    The image is first shrunk so its longer side is <= max_side (the same factor is applied to the template),
    which keeps the cost per row at a few milliseconds without changing what counts as a verbatim copy."""
    import cv2

    f = min(1.0, max_side / max(image.shape[:2]))
    img = cv2.resize(image, None, fx=f, fy=f, interpolation=cv2.INTER_AREA) if f < 1 else image
    best = -1.0
    th, tw = template.shape[:2]
    for s in scales:
        k = f * s
        w, h = int(round(tw * k)), int(round(th * k))
        if w < 8 or h < 8 or w > img.shape[1] or h > img.shape[0]:
            continue
        t = cv2.resize(template, (w, h), interpolation=cv2.INTER_AREA if k < 1 else cv2.INTER_LINEAR)
        m = None
        if mask is not None:
            m = cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST)
            if int((m > 0).sum()) < 16:
                continue
        r = cv2.matchTemplate(img, t, cv2.TM_CCOEFF_NORMED, mask=m)
        r = r[np.isfinite(r)]  # a flat template (no variance under the mask) has no defined correlation
        if r.size:
            best = max(best, float(r.max()))
    return min(best, 1.0)


def _rgb(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def copy_scores_of(inputs: list[bytes], output: bytes, meta: dict[str, Any],
                   scales: tuple[float, ...] = DEFAULT_SCALES, max_side: int = 256) -> list[float]:
    """Best score per input image of a row (encoded bytes + its meta)."""
    out = _rgb(output)
    masked = meta.get("subject_input") == "mask"
    bg = tuple(meta.get("background") or (255, 255, 255))
    scores = []
    for data in inputs:
        inp = _rgb(data)
        score = masked_score(inp, out, subject_mask(inp, bg), scales, max_side) if masked else \
            copy_score(inp, out, None, scales, max_side)
        scores.append(round(score, 4))
    return scores


def copy_scores(sample: Sample, scales: tuple[float, ...] = DEFAULT_SCALES, max_side: int = 256) -> list[float]:
    return copy_scores_of([im.data for im in sample.input_images], sample.output_image.data, sample.meta,
                          scales, max_side)


@dataclass
class CopyPasteParams:
    threshold: float = 0.97
    scales: list[float] = field(default_factory=lambda: list(DEFAULT_SCALES))
    max_side: int = 256
    drop: bool = True  # false: only record meta.copy_paste


@register_step("copy_paste")
class CopyPasteStep(FilterStep):
    name = "copy_paste"
    Params = CopyPasteParams

    def __init__(self, params: CopyPasteParams):
        from x2i.core.errors import X2IError

        if not 0 < params.threshold <= 1 or not params.scales or min(params.scales) <= 0:
            raise X2IError(f"copy_paste: threshold in (0, 1] and positive scales, got {params.threshold}, "
                           f"{params.scales}")
        self.p = params

    def reason(self, sample: Sample, ctx: Context):
        if not sample.input_images:
            return None
        scores = copy_scores(sample, tuple(self.p.scales), self.p.max_side)
        best = max(scores)
        sample.meta["copy_paste"] = {"scores": scores, "threshold": self.p.threshold, "copy": best >= self.p.threshold}
        if self.p.drop and best >= self.p.threshold:
            k = scores.index(best) + 1
            return "copy_paste", f"input {k} appears verbatim in the output (NCC {best} >= {self.p.threshold})"
        return None

    def after_build(self, out: Path, records: list[PartitionRecord]) -> tuple[list[PartitionRecord], dict[str, Any]]:
        """The build's copy-paste rate (rows checked before dropping), for the manifest's post_build."""
        import pyarrow.parquet as pq

        dropped = sum(r.rejects.get("copy_paste", 0) for r in records)
        kept_copies, kept = 0, 0
        for rec in records:
            for shard in rec.shards:
                for m in pq.read_table(Path(out) / shard.path, columns=["meta"]).column("meta").to_pylist():
                    cp = json.loads(m or "{}").get("copy_paste")
                    if cp is not None:
                        kept += 1
                        kept_copies += bool(cp.get("copy"))
        checked = kept + dropped
        copies = kept_copies + dropped
        return records, {"threshold": self.p.threshold, "scales": list(self.p.scales), "rows_checked": checked,
                         "copies": copies, "dropped": dropped,
                         "rate": round(copies / checked, 4) if checked else None}
