"""Fixtures for annotator tests: no weights anywhere unless a test puts them there."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(autouse=True)
def _no_ambient_weights(tmp_path, monkeypatch):
    """Weight resolution must only see what the test writes: empty HF cache, no X2I_ANNOTATOR_DIR."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.delenv("X2I_ANNOTATOR_DIR", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


@pytest.fixture(scope="session")
def weights_tmp(tmp_path_factory):
    """Where tests write random checkpoints (hundreds of MB): RAM-backed /dev/shm when it exists, so the suite
    does not wait on disk writeback; else pytest's temporary directory."""
    import shutil
    import tempfile
    from pathlib import Path

    shm = Path("/dev/shm")
    if shm.is_dir() and shutil.disk_usage(shm).free > 4 << 30:
        d = Path(tempfile.mkdtemp(prefix="x2i-weights-", dir=shm))
        yield d
        shutil.rmtree(d, ignore_errors=True)
    else:
        yield tmp_path_factory.mktemp("weights")


@pytest.fixture
def photo() -> Image.Image:
    import skimage.data

    return Image.fromarray(skimage.data.astronaut()).resize((192, 192))


@pytest.fixture
def odd_inputs() -> list[Image.Image]:
    """The awkward modes a user may hand an annotator directly: grayscale, RGBA, 16-bit, non-square."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray((rng.random((96, 160, 3)) * 255).astype(np.uint8))
    rgba = rgb.convert("RGBA")
    sixteen = Image.fromarray((rng.random((80, 120)) * 65535).astype(np.uint16))
    return [rgb.convert("L"), rgba, sixteen, rgb]
