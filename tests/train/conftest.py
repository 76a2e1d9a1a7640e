"""Fixtures of the training tests (helpers in train_helpers.py)."""
from __future__ import annotations

import pytest

from train_helpers import write_dataset


@pytest.fixture(scope="session")
def datasets(tmp_path_factory):
    """Two small datasets: `a` (text_to_image 60 + image_edit 30), `b` (subject_driven 40)."""
    base = tmp_path_factory.mktemp("data")
    a = write_dataset(base / "a", {"text_to_image": 60, "image_edit": 30}, name="a")
    b = write_dataset(base / "b", {"subject_driven": 40}, name="b")
    return {"a": a, "b": b, "base": base}
