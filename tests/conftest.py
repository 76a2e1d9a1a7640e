"""The one conftest of the suite: isolation every test gets, and the fixtures shared across folders.

Test folders mirror the source folders (tests/core ~ x2i/core, tests/engine ~ x2i/engine, tests/model/training ~
model/training, ...). Helper modules (realformat, publish_fixtures, train_helpers, blocked_imports, fake_hub,
helpers_curate) sit in tests/ and are imported by name. Tests that need an extra skip themselves with the reason
(`pytest.importorskip`), so a missing extra shows in the summary instead of tests silently vanishing.
"""
from __future__ import annotations

import io
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from publish_fixtures import mixed_dataset, shapes_build  # noqa: F401  (pytest fixtures shared by folders)

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# -- isolation ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session", autouse=True)
def x2i_cache(tmp_path_factory):
    """Every session gets its own x2i cache (the embedded sample is written there once): never ~/.cache/x2i."""
    path = tmp_path_factory.mktemp("x2i-cache")
    previous = os.environ.get("X2I_CACHE")
    os.environ["X2I_CACHE"] = str(path)
    yield path
    if previous is None:
        os.environ.pop("X2I_CACHE", None)
    else:
        os.environ["X2I_CACHE"] = previous


@pytest.fixture(autouse=True)
def _no_ambient_weights(x2i_cache, tmp_path, monkeypatch):
    """Weight lookups see only what a test puts there: an empty HF cache, no X2I_ANNOTATOR_DIR, online mode as
    the test sets it; and the session's x2i cache even if a test changed X2I_CACHE."""
    monkeypatch.setenv("X2I_CACHE", str(x2i_cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.delenv("X2I_ANNOTATOR_DIR", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


# -- small samples and images ---------------------------------------------------------------------------------
def jpeg(w: int, h: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture
def make_sample():
    from x2i.core.imageio import load
    from x2i.core.prompt import placeholder
    from x2i.core.sample import Sample

    def make(task: str = "subject_driven", n_inputs: int = 1, size: tuple[int, int] = (64, 48), seed: int = 0,
             key: str | None = None) -> Sample:
        inputs = [load(jpeg(32, 32, seed * 10 + k)) for k in range(n_inputs)]
        instruction = " ".join(f"thing {k} in {placeholder(k)}." for k in range(1, n_inputs + 1)) + " A caption."
        s = Sample(task, instruction.strip(), load(jpeg(*size, seed)), inputs, "test", key or f"k{seed}",
                   {"caption": "A caption.", "n": seed})
        return s.with_id()
    return make


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


# -- weights and models ---------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def weights_tmp(tmp_path_factory):
    """Where tests write random checkpoints (hundreds of MB): RAM-backed /dev/shm when it exists, so the suite
    does not wait on disk writeback; else pytest's temporary directory."""
    shm = Path("/dev/shm")
    if shm.is_dir() and shutil.disk_usage(shm).free > 4 << 30:
        d = Path(tempfile.mkdtemp(prefix="x2i-weights-", dir=shm))
        yield d
        shutil.rmtree(d, ignore_errors=True)
    else:
        yield tmp_path_factory.mktemp("weights")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A tiny random OmniGen checkpoint (all files) in the published layout, built once."""
    from x2i.model.testing.tiny import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "checkpoint", seed=0)


@pytest.fixture(scope="session")
def tokenizer(tiny_dir):
    from x2i.model.inference.tokenizer import TextTokenizer

    return TextTokenizer.from_dir(tiny_dir)


@pytest.fixture
def processor(tokenizer):
    from x2i.model.inference.processor import Processor

    return Processor(tokenizer, max_input_image_size=128, max_input_images=3)


@pytest.fixture(scope="session")
def tiny_model():
    from x2i.model.testing.tiny import random_model

    return random_model("tiny", seed=1)


# -- built datasets -------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def datasets(tmp_path_factory):
    """Two small training datasets: `a` (text_to_image 60 + image_edit 30), `b` (subject_driven 40)."""
    from train_helpers import write_dataset

    base = tmp_path_factory.mktemp("data")
    a = write_dataset(base / "a", {"text_to_image": 60, "image_edit": 30}, name="a")
    b = write_dataset(base / "b", {"subject_driven": 40}, name="b")
    return {"a": a, "b": b, "base": base}
