"""hf:// end to end against a local fake Hub (tests/fake_hub.py) that real `huggingface_hub` talks HTTP to through
HF_ENDPOINT: a dataset built locally and pushed to a dataset repo reads (validate, stats, view, export, publish
--dry-run) like its local copy, a source on hf:// builds like its local copy, `x2i build --out hf://` equals the
local build and re-runs as a no-op, and a missing repo or a bad token stop in one line (exit 2).

The hub's tree pages are kept small (PAGE entries) so every listing here goes through the Hub's cursor
pagination, and huggingface_hub's parallel splitting of large listings, as a big repo's would."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("huggingface_hub", reason="needs the publish extra: pip install 'x2i[publish]'")
from typer.testing import CliRunner  # noqa: E402

from fake_hub import FakeHub  # noqa: E402
from storage_helpers import data_hashes, edit_set_builds_alike, one_error_line, parquet_shards  # noqa: E402
from storage_helpers import train_two_steps  # noqa: E402
from x2i.cli.main import app  # noqa: E402
from x2i.core.config import to_dict  # noqa: E402
from x2i.engine.build import build  # noqa: E402
from x2i.engine.recipe import load_recipe  # noqa: E402

TASK, LIMIT = "text-to-image", 40  # the embedded LAION sample: fast, with rejects
PAGE = 4
TOKEN = "hf_x2iHfStorageTestToken"


def invoke(*args) -> object:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


def folder_files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def hub():
    """The fake Hub, HF_ENDPOINT and HF_TOKEN pointing at it (x2i's hf:// filesystem reads both when it is
    made), and its one accepted token."""
    with FakeHub() as server:
        server.token, server.page_size = TOKEN, PAGE
        with pytest.MonkeyPatch.context() as env:  # module-scoped: the function-scoped monkeypatch cannot serve
            env.setenv("HF_ENDPOINT", server.url)
            env.setenv("HF_TOKEN", TOKEN)
            yield server


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "out"
    manifest = build(load_recipe(TASK), out, limit=LIMIT, progress=False)
    return out, to_dict(manifest)


@pytest.fixture(scope="module")
def pushed(hub, reference):
    """The local build's files in the (private) dataset repo org/built, as `git push` would leave them."""
    hub.add_repo("org/built", folder_files(reference[0]), private=True)
    return "hf://datasets/org/built"


def test_validate_stats_view_export_read_hf_like_the_local_copy(hub, reference, pushed, tmp_path):
    local = reference[0]
    for args in (["validate", "{}", "--json"], ["stats", "{}", "--json"]):
        mine, theirs = (invoke(*[a.format(where) for a in args]) for where in (local, pushed))
        assert mine.exit_code == theirs.exit_code == 0, theirs.output
        assert json.loads(theirs.output) == json.loads(mine.output)
    assert json.loads(theirs.output)["rows"] == reference[1]["rows"]
    for name, where in (("local", local), ("hf", pushed)):
        viewed = invoke("view", where, "--out", tmp_path / f"view-{name}", "--per-task", 4, "--thumb", 64)
        assert viewed.exit_code == 0, viewed.output
        exported = invoke("export", where, "--out", tmp_path / f"export-{name}", "--limit", 10)
        assert exported.exit_code == 0, exported.output
    assert folder_files(tmp_path / "export-hf") == folder_files(tmp_path / "export-local")
    thumbs = {name: folder_files(tmp_path / f"view-{name}" / "thumbs") for name in ("local", "hf")}
    assert thumbs["hf"] == thumbs["local"] and thumbs["hf"]
    assert any("/resolve/main/data/" in path for _, path, _ in hub.requests)  # shards read over HTTP


def test_publish_dry_run_stages_an_hf_dataset_like_the_local_one(hub, pushed, reference, tmp_path):
    for name, where in (("local", reference[0]), ("hf", pushed)):
        result = invoke("publish", where, "--repo-id", "org/name", "--dry-run", "--no-decode",
                        "--stage", tmp_path / name)
        assert result.exit_code == 0 and "nothing uploaded" in result.output, result.output
    staged = {name: {k: v for k, v in folder_files(tmp_path / name).items() if not k.startswith(".")}
              for name in ("local", "hf")}  # (.x2i-stage.json names the dataset it staged)
    assert staged["hf"] == staged["local"] and "README.md" in staged["hf"]
    # and for real: published from the Hub to the Hub (another repo), the files are what was staged
    result = invoke("publish", pushed, "--repo-id", "org/published", "--endpoint", hub.url, "--no-decode",
                    "--stage", tmp_path / "real")
    assert result.exit_code == 0, result.output
    real = {k: v for k, v in folder_files(tmp_path / "real").items() if not k.startswith(".")}
    assert hub.files("org/published") == real  # (its card names org/published)
    assert {k: v for k, v in real.items() if k != "README.md"} == \
           {k: v for k, v in staged["hf"].items() if k != "README.md"}


def test_build_to_hf_equals_the_local_build_and_a_rerun_is_a_no_op(hub, tmp_path):
    """(subject-driven: text-to-image's dedup pass rewrites shards in place, which x2i refuses on object stores)"""
    local = tmp_path / "local"
    manifest = to_dict(build(load_recipe("subject-driven"), local, limit=LIMIT, progress=False))
    hub.add_repo("org/out")
    uri = "hf://datasets/org/out/v1"
    run = ["build", "--task", "subject-driven", "--limit", LIMIT, "--out", uri, "-q"]
    first = invoke(*run)
    assert first.exit_code == 0, first.output
    assert f"manifest: {uri}/manifest.json" in first.output
    stored = {p[len("v1/"):]: d for p, d in hub.files("org/out").items()}
    remote = json.loads(stored["manifest.json"])
    assert [(s["path"], s["sha256"], s["rows"]) for s in remote["shards"]] == \
           [(s["path"], s["sha256"], s["rows"]) for s in manifest["shards"]]
    for shard in manifest["shards"]:
        assert stored[shard["path"]] == (local / shard["path"]).read_bytes()
    assert remote["rows"] == manifest["rows"] and remote["rejects"] == manifest["rejects"]
    data = {k for k in stored if k.startswith(("data/", "rejects/"))}
    assert data == {s["path"] for s in manifest["shards"]} | set(manifest["rejects_files"]), "orphan objects"
    assert ".x2i-lock" not in stored  # released: the lock object is deleted by a commit
    commits = len(hub.commits("org/out"))
    again = invoke(*run)
    assert again.exit_code == 0 and again.output == first.output
    assert len(hub.commits("org/out")) == commits  # a complete build on the Hub: nothing written, not even a lock


@pytest.mark.parametrize("layout", ["tars", "parquet"])
def test_a_laion_source_on_hf_builds_like_its_local_copy(hub, tmp_path, layout):
    """img2dataset tars with their sidecars (--images) and img2dataset parquet shards (--source) in a dataset repo:
    the same partitions, shards and rejects as from a local copy."""
    from x2i.engine.manifest import read_manifest
    from x2i.shapes.embedded import embedded_source

    local = tmp_path / "src"
    shutil.copytree(embedded_source("laion"), local / "images")
    if layout == "parquet":
        parquet_shards(local / "images", local / "pq")
        shutil.rmtree(local / "images")
    hub.add_repo(f"org/laion-{layout}", folder_files(local))
    args = {"tars": ["--images", "{root}/images"],
            "parquet": ["--source", "{root}/pq", "--set", "source.options.rows_per_partition=16"]}[layout]
    for name, root in (("local", str(local)), ("hf", f"hf://datasets/org/laion-{layout}")):
        result = invoke("build", "--task", "text-to-image", "--out", tmp_path / name, "-q",
                        *[a.format(root=root) for a in args])
        assert result.exit_code == 0, result.output
    built = {name: read_manifest(tmp_path / name) for name in ("local", "hf")}
    assert built["hf"].rows > 0 and built["hf"].source["mode"] == built["local"].source["mode"]
    assert [p.label for p in built["hf"].partitions] == [p.label for p in built["local"].partitions]
    assert data_hashes(tmp_path / "hf") == data_hashes(tmp_path / "local")
    assert built["hf"].rejects == built["local"].rejects


@pytest.mark.slow  # the embedded MagicBrush sample takes ~1 min to make and ~30 s to build on a busy machine
def test_a_magicbrush_edit_set_on_hf_builds_like_its_local_copy(hub, tmp_path):
    """A parquet edit set read in row spans (ranged reads of row groups): the same partitions, shards, rejects."""
    from x2i.shapes.embedded import embedded_source

    local = tmp_path / "src"
    shutil.copytree(embedded_source("magicbrush", None), local)
    hub.add_repo("org/magicbrush", folder_files(local))
    edit_set_builds_alike("magicbrush", {"local": str(local), "hf": "hf://datasets/org/magicbrush"}, tmp_path)


def test_a_missing_repo_a_bad_token_and_no_token_on_a_private_repo_are_one_line(hub, pushed, monkeypatch, tmp_path):
    """Infrastructure problems stop before any work with exit 2 and one line naming the cause and the fix."""
    missing = "hf://datasets/org/missing"
    for args in (["validate", missing], ["build", "--task", "subject-driven", "--out", f"{missing}/x"],
                 ["build", "--task", "text-to-image", "--images", f"{missing}/images", "--out", tmp_path / "o"]):
        line = one_error_line(invoke(*args))
        assert "dataset repo 'org/missing' does not exist" in line and "HF_TOKEN" in line, line
    assert "org/missing" not in hub.repos and not (tmp_path / "o").exists()  # nothing was created
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    for args in (["stats", pushed], ["build", "--task", "text-to-image", "--source", f"{pushed}/data",
                                     "--out", tmp_path / "o"]):
        line = one_error_line(invoke(*args))
        assert "401" in line and "HF_TOKEN" in line and "hf_wrong" not in line, line
    monkeypatch.delenv("HF_TOKEN")
    line = one_error_line(invoke("validate", pushed))  # private: anonymous requests cannot see it
    assert "org/built" in line and "HF_TOKEN" in line


def test_the_fake_hub_answers_huggingface_hub_as_the_hub_does(hub, tmp_path):
    """What x2i relies on above, checked on the client's own terms: paginated (and expanded) listings, paths-info,
    ranged reads, and hf_hub_download's HEAD (X-Repo-Commit, the LFS redirect's X-Linked-Size/X-Linked-Etag)."""
    from huggingface_hub import HfFileSystem, get_hf_file_metadata, hf_hub_download, hf_hub_url

    shard, card = bytes(range(256)) * 40, b"---\nlicense: mit\n---\n"
    repo = hub.add_repo("org/fidelity", {"README.md": card, **{f"data/t{i}/part-{i}.parquet": shard for i in range(6)}})
    fs = HfFileSystem(endpoint=hub.url, token=TOKEN, skip_instance_cache=True)
    found = fs.find("datasets/org/fidelity", detail=True)  # > PAGE entries: several pages, split by folder
    assert sorted(found) == sorted(f"datasets/org/fidelity/{p}" for p in hub.files("org/fidelity"))
    assert found["datasets/org/fidelity/data/t0/part-0.parquet"]["lfs"].sha256 == hashlib.sha256(shard).hexdigest()
    listed = fs.ls("datasets/org/fidelity/data", expand_info=True)
    assert len(listed) == 6 and all(e["last_commit"].oid == hub.head(repo, "main") for e in listed)
    info = HfFileSystem(endpoint=hub.url, token=TOKEN, skip_instance_cache=True).info(
        "datasets/org/fidelity/README.md", expand_info=True)  # a fresh cache: paths-info
    assert info["size"] == len(card) and info["last_commit"] is not None
    assert ("POST", "/api/datasets/org/fidelity/paths-info/main") in {(m, p) for m, p, _ in hub.requests}
    with fs.open("datasets/org/fidelity/data/t1/part-1.parquet", block_size=1000) as f:
        f.seek(9000)
        assert f.read(2000) == shard[9000:10240]  # a ranged read over the redirect, cut at the end
    url = hf_hub_url("org/fidelity", "data/t2/part-2.parquet", repo_type="dataset", endpoint=hub.url)
    meta = get_hf_file_metadata(url, token=TOKEN)
    assert (meta.commit_hash, meta.etag, meta.size) == (hub.head(repo, "main"), hashlib.sha256(shard).hexdigest(),
                                                        len(shard))
    for name, data in (("README.md", card), ("data/t3/part-3.parquet", shard)):
        path = hf_hub_download("org/fidelity", name, repo_type="dataset", endpoint=hub.url, token=TOKEN,
                               cache_dir=tmp_path)
        assert Path(path).read_bytes() == data and hub.head(repo, "main") in path


@pytest.mark.slow
def test_x2i_train_reads_a_mix_on_hf(hub, tmp_path):
    """A dataset pushed to a Hub dataset repo trains like any other mix entry: `x2i train` lists, checks and
    reads its shards through hf:// (two steps of the tiny model)."""
    pytest.importorskip("torch", reason="needs the model extra: pip install 'x2i[model]'")
    local = tmp_path / "shapes"
    built = invoke("build", "--task", "shapes-text-to-image", "--out", local, "-q",
                   "--set", "source.options.embedded.scenes=40")
    assert built.exit_code == 0, built.output
    hub.add_repo("org/shapes", folder_files(local))
    mix = tmp_path / "mix.yaml"
    mix.write_text(json.dumps({"name": "hfmix", "datasets": [{"path": "hf://datasets/org/shapes"}]}))
    run = tmp_path / "run"
    result = train_two_steps(mix, run)
    assert result.exit_code == 0, result.output
    assert len((run / "log.jsonl").read_text().splitlines()) == 2
    # What trained came from the Hub: the same files with one shard's bytes zeroed, as a second repo, are refused.
    files = folder_files(local)
    shard = json.loads(files["manifest.json"])["shards"][0]["path"]
    files[shard] = bytes(len(files[shard]))
    hub.add_repo("org/shapes-damaged", files)
    mix.write_text(json.dumps({"name": "hfmix", "datasets": [{"path": "hf://datasets/org/shapes-damaged"}]}))
    again = invoke("train", "--mix", mix, "--model", "tiny", "--steps", 2, "--out", tmp_path / "run2", "-q")
    assert again.exit_code == 2
    assert f"shard hf://datasets/org/shapes-damaged/{shard} is not a readable Parquet file" in again.output
