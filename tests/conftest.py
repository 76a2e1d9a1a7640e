"""Shared test setup: every test session gets its own x2i cache, so tests never touch ~/.cache/x2i."""
from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def x2i_cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("x2i-cache")
    previous = os.environ.get("X2I_CACHE")
    os.environ["X2I_CACHE"] = str(path)
    yield path
    if previous is None:
        os.environ.pop("X2I_CACHE", None)
    else:
        os.environ["X2I_CACHE"] = previous
