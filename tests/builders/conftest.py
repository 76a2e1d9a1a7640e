"""Builder tests build from the embedded sample, written once per session into a temporary x2i cache."""
from __future__ import annotations

import os

import pytest



@pytest.fixture(scope="session")
def x2i_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("x2i-cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("X2I_CACHE", str(cache))
    yield cache
    mp.undo()


@pytest.fixture(autouse=True)
def _isolated(x2i_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("X2I_CACHE", str(x2i_cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.delenv("X2I_ANNOTATOR_DIR", raising=False)


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
