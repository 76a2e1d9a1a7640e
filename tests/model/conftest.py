"""Shared fixtures for the model tests: a tiny random checkpoint (all files) and its tokenizer, built once.

Without the `model` extra each test module skips itself with the reason (pytest.importorskip at its top), so a
missing extra shows up in the summary instead of the tests silently vanishing."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
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
