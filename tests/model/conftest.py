"""Shared fixtures for the model tests: a tiny random checkpoint (all files) and its tokenizer, built once."""
from __future__ import annotations

import importlib.util

import pytest

# Without the `model` extra installed these tests are not collected (rather than failing on imports).
_NEEDED = ("torch", "diffusers", "tokenizers", "safetensors", "transformers", "torchvision")
collect_ignore_glob = [] if all(importlib.util.find_spec(m) for m in _NEEDED) else ["test_*.py"]


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
