"""gs:// end to end on a real local GCS server (gcp-storage-emulator, the test extra), reached the way Google's
client libraries reach one (STORAGE_EMULATOR_HOST): a build equals the local build byte for byte, a re-run is a
no-op, validate and stats read it, and a source on gs:// builds like its local copy."""
from __future__ import annotations

import hashlib
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("gcp_storage_emulator", reason="needs the test extra: pip install 'x2i[test]'")
from typer.testing import CliRunner  # noqa: E402

from x2i.cli.main import app  # noqa: E402
from x2i.core.config import to_dict  # noqa: E402
from x2i.core.storage import Storage  # noqa: E402
from x2i.engine.build import build  # noqa: E402
from x2i.engine.recipe import load_recipe  # noqa: E402

LIMIT = 40
BUCKET = "x2i-gcs-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp("gcs") / "emulator.log"
    with open(log, "wb") as out:
        server = subprocess.Popen([sys.executable, "-m", "gcp_storage_emulator", "start", "--host", "127.0.0.1",
                                   "--port", str(port), "--in-memory"], stdout=out, stderr=subprocess.STDOUT)
    host = f"http://127.0.0.1:{port}"
    request = urllib.request.Request(f"{host}/storage/v1/b?project=x2i", data=json.dumps({"name": BUCKET}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    for _ in range(100):
        try:
            urllib.request.urlopen(request, timeout=2).read()
            break
        except OSError:
            time.sleep(0.1)
    else:
        server.kill()
        pytest.fail(f"the GCS emulator did not start: {log.read_text()[-500:]}")
    try:
        with pytest.MonkeyPatch.context() as patch:  # module-scoped: the function-scoped monkeypatch cannot serve
            patch.setenv("STORAGE_EMULATOR_HOST", host)
            yield host
    finally:
        server.kill()
        server.wait()


def test_build_validate_stats_on_gs_equal_the_local_build(gcs, tmp_path):
    local = tmp_path / "local"
    manifest = to_dict(build(load_recipe("subject-driven"), local, limit=LIMIT, progress=False))
    uri = f"gs://{BUCKET}/ref"
    run = ["build", "--task", "subject-driven", "--limit", LIMIT, "--out", uri, "-q"]
    result = CliRunner().invoke(app, run)
    assert result.exit_code == 0, result.output
    store = Storage.for_uri(uri)
    remote = json.loads(store.read_bytes("manifest.json"))
    assert [(s["path"], s["sha256"], s["rows"]) for s in remote["shards"]] == \
           [(s["path"], s["sha256"], s["rows"]) for s in manifest["shards"]]
    for shard in manifest["shards"]:
        assert hashlib.sha256(store.read_bytes(shard["path"])).hexdigest() == shard["sha256"]
        assert store.read_bytes(shard["path"]) == (local / shard["path"]).read_bytes()
    assert remote["rows"] == manifest["rows"] and remote["rejects"] == manifest["rejects"]
    assert not store.exists(".x2i-lock")
    again = CliRunner().invoke(app, run)
    assert again.exit_code == 0 and again.output == result.output  # complete: nothing to do
    valid = CliRunner().invoke(app, ["validate", uri])
    assert valid.exit_code == 0 and f"{manifest['rows']} row(s)" in valid.output, valid.output
    stats = CliRunner().invoke(app, ["stats", uri, "--json"])
    assert stats.exit_code == 0 and json.loads(stats.output)["rows"] == manifest["rows"]


def test_a_grit_source_on_gs_builds_like_its_local_copy(gcs, tmp_path):
    from x2i.shapes.embedded import embedded_source

    tars = Path(embedded_source("grit", {"scenes": 16, "per_shard": 8, "size": 256, "photos": False}))
    store = Storage.for_uri(f"gs://{BUCKET}/grit-src")
    for f in sorted(tars.rglob("*")):
        if f.is_file():
            store.write_bytes(str(f.relative_to(tars)), f.read_bytes())
    data = load_recipe("subject-driven").to_dict()
    sources = {"local": str(tars), "gs": f"gs://{BUCKET}/grit-src"}
    hashes = {}
    for name, path in sources.items():
        data["source"] = {**data["source"], "path": path, "options": {}}
        from x2i.engine.recipe import Recipe

        out = tmp_path / name
        manifest = build(Recipe.from_dict(data), out, progress=False)
        assert manifest.rows > 0
        hashes[name] = {s.path: s.sha256 for s in manifest.shards}
    assert hashes["gs"] == hashes["local"]
    shutil.rmtree(tmp_path / "local")
