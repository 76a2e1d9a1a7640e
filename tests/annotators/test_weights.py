"""Weight resolution: explicit path -> X2I_ANNOTATOR_DIR -> Hugging Face cache, and the missing-weights message."""
from __future__ import annotations

from pathlib import Path

import pytest

from x2i.annotators import MissingWeights, WeightSpec, create, fetch, resolve
from x2i.core.errors import X2IError

SPEC = WeightSpec("org/model", ("a.pth", ("model.safetensors", "pytorch_model.bin")))


def _files(d: Path, *names: str) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for n in names:
        (d / n).write_bytes(b"x")
    return d


def _hf_snapshot(cache: Path, repo: str, *names: str, revision: str = "0123abcd") -> Path:
    """The hub cache layout huggingface_hub writes: models--org--name/{refs/main, snapshots/<rev>/files}."""
    repo_dir = cache / ("models--" + repo.replace("/", "--"))
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(revision)
    return _files(repo_dir / "snapshots" / revision, *names)


def test_resolution_order(tmp_path, monkeypatch):
    explicit = _files(tmp_path / "explicit", "a.pth", "model.safetensors")
    env = _files(tmp_path / "env" / "org" / "model", "a.pth", "pytorch_model.bin")
    snap = _hf_snapshot(tmp_path / "hf-cache", "org/model", "a.pth", "model.safetensors")
    monkeypatch.setenv("X2I_ANNOTATOR_DIR", str(tmp_path / "env"))
    r = resolve("x", SPEC, explicit)
    assert (r.where, r.directory, r.files) == ("explicit", explicit, ("a.pth", "model.safetensors"))
    r = resolve("x", SPEC)
    assert (r.where, r.directory, r.files) == ("X2I_ANNOTATOR_DIR", env, ("a.pth", "pytorch_model.bin"))
    monkeypatch.delenv("X2I_ANNOTATOR_DIR")
    r = resolve("x", SPEC)
    assert (r.where, r.directory) == ("hf-cache", snap)


def test_incomplete_places_are_skipped(tmp_path, monkeypatch):
    """A folder missing one file is not used; the next place that has everything is."""
    monkeypatch.setenv("X2I_ANNOTATOR_DIR", str(tmp_path / "env"))
    _files(tmp_path / "env" / "org" / "model", "a.pth")  # no model weights
    snap = _hf_snapshot(tmp_path / "hf-cache", "org/model", "a.pth", "pytorch_model.bin")
    assert resolve("x", SPEC, tmp_path / "nope").directory == snap


def test_missing_message_names_files_places_and_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("X2I_ANNOTATOR_DIR", str(tmp_path / "env"))
    with pytest.raises(MissingWeights) as info:
        resolve("depth_thing", SPEC, tmp_path / "given")
    msg = str(info.value)
    for part in ("a.pth", "model.safetensors or pytorch_model.bin", "org/model", str(tmp_path / "given"),
                 str(tmp_path / "env" / "org" / "model"), str(tmp_path / "hf-cache"),
                 "x2i annotators fetch depth_thing"):
        assert part in msg, part
    assert "\n" not in msg


@pytest.mark.parametrize("name", ["hed", "lineart", "depth_midas", "depth_dpt", "depth_anything", "openpose",
                                  "openpose_full", "seg_upernet", "sam"])
def test_every_weight_based_annotator_says_what_it_misses(name):
    ann = create(name)
    with pytest.raises(MissingWeights) as info:
        ann.resolve_weights()
    for spec in ann.weight_specs():
        assert spec.repo_id in str(info.value)
        for f in spec.names():
            assert f in str(info.value)


def test_fetch_refuses_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(X2IError, match="HF_HUB_OFFLINE"):
        fetch(SPEC, tmp_path)


def test_fetch_writes_what_resolution_finds(monkeypatch, tmp_path):
    """fetch --to DIR puts files at DIR/<repo_id>/ (trying alternatives in order); resolve then finds them there.
    The network call is replaced by a local writer with hf_hub_download's signature and return value."""
    import huggingface_hub

    published = {"a.pth", "pytorch_model.bin"}  # this repo has no safetensors file

    def fake_download(repo_id, filename, local_dir=None, cache_dir=None, **kw):
        if filename not in published:
            raise FileNotFoundError(f"{repo_id}/{filename}: 404")
        path = Path(local_dir) / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"w")
        return str(path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    got = fetch(SPEC, tmp_path / "weights")
    assert got.files == ("a.pth", "pytorch_model.bin")
    monkeypatch.setenv("X2I_ANNOTATOR_DIR", str(tmp_path / "weights"))
    assert resolve("x", SPEC).directory == tmp_path / "weights" / "org" / "model"
    published.clear()
    with pytest.raises(X2IError, match="cannot download a.pth"):
        fetch(SPEC, tmp_path / "other")
