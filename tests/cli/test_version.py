"""x2i's version is one literal (x2i/__init__.py) that pyproject.toml reads: the installed metadata, the string
the manifest and the downloader's user agent carry, and what a build records must be the same, and reading it
must not cost a command the importlib.metadata import."""
from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import x2i

ROOT = Path(__file__).resolve().parents[2]


def test_the_installed_metadata_is_the_literal():
    assert importlib.metadata.version("x2i") == x2i.__version__
    text = (ROOT / "pyproject.toml").read_text()  # (tomllib is 3.11+; x2i supports 3.10)
    project = text.split("[project]", 1)[1].split("\n[", 1)[0]
    assert "\nversion = " not in project and 'dynamic = ["version"]' in project
    assert 'version = { attr = "x2i.__version__" }' in text


def test_importing_x2i_does_not_load_importlib_metadata():
    code = "import sys, x2i; print(json.dumps(['importlib.metadata' in sys.modules, x2i.__version__]))"
    done = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout) == [False, importlib.metadata.version("x2i")]


def test_a_build_records_the_version(tmp_path):
    from x2i.engine.build import build_recipe

    embedded = 'source.options.embedded={"scenes": 8, "per_shard": 4, "size": 400, "photos": false}'
    _, out = build_recipe("text_to_image", tmp_path / "out", sets=[embedded], progress=False)
    assert json.loads((out / "manifest.json").read_text())["x2i_version"] == importlib.metadata.version("x2i")
