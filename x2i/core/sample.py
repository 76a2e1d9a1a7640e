"""The one sample type every reader, step, writer and the training loader share."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from x2i.core.imageio import EncodedImage

# Task name of samples straight out of a reader, before a builder turns them into X2I samples.
SOURCE_TASK = "source"


def sample_id(source: str, source_key: str, task: str, params: Any = None) -> str:
    """Deterministic id: the same source row, task and parameters always give the same id."""
    blob = json.dumps([source, source_key, task, params], sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]


@dataclass
class Sample:
    """One X2I sample: an interleaved instruction, its input images and the image to generate.

    Readers emit samples with task `source`: the source row's image as `output_image`, its caption as
    `instruction` and its annotations in `meta`; builders turn those into task samples.
    """

    task: str
    instruction: str
    output_image: EncodedImage | None
    input_images: list[EncodedImage] = field(default_factory=list)
    source: str = ""
    source_key: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    aesthetic: float | None = None
    clip_score: float | None = None
    phash: str | None = None
    id: str = ""
    split: str = "train"  # "test" for held-out source items (x2i/engine/holdout.py); the shard's folder says it

    def with_id(self, params: Any = None) -> "Sample":
        """Set the deterministic id from provenance, task and the parameters that made this sample."""
        self.id = sample_id(self.source, self.source_key, self.task, params)
        return self


class RejectSample(Exception):
    """Raised inside a step to reject the sample at hand with a countable reason."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass
class Reject:
    """A rejected sample or source row: what it was, which step refused it and why."""

    reason: str
    source: str
    source_key: str
    task: str
    step: str
    detail: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
