from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from x2i.core.imageio import load
from x2i.core.prompt import placeholder
from x2i.core.sample import Sample


def jpeg(w: int, h: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture
def make_sample():
    def make(task: str = "subject_driven", n_inputs: int = 1, size: tuple[int, int] = (64, 48), seed: int = 0,
             key: str | None = None) -> Sample:
        inputs = [load(jpeg(32, 32, seed * 10 + k)) for k in range(n_inputs)]
        instruction = " ".join(f"thing {k} in {placeholder(k)}." for k in range(1, n_inputs + 1)) + " A caption."
        s = Sample(task, instruction.strip(), load(jpeg(*size, seed)), inputs, "test", key or f"k{seed}",
                   {"caption": "A caption.", "n": seed})
        return s.with_id()
    return make
