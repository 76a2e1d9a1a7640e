"""Object storage end to end, on a real local S3 server (moto): build, resume and kill on `s3://`, the lock
object, and the readers (validate, stats, publish --dry-run, train) reading what the build wrote there."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("moto", reason="needs the test extra: pip install 'x2i[test,storage]'")
boto3 = pytest.importorskip("boto3")
from moto.server import ThreadedMotoServer  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from x2i.cli.main import app  # noqa: E402
from x2i.core.config import to_dict  # noqa: E402
from x2i.core.errors import X2IError  # noqa: E402
from x2i.core.storage import Storage, check_target  # noqa: E402
from x2i.engine.build import build  # noqa: E402
from x2i.engine.lock import BuildLocked  # noqa: E402
from x2i.engine.object_lock import ObjectLock  # noqa: E402
from x2i.engine.recipe import load_recipe  # noqa: E402
from storage_helpers import data_hashes as _data_hashes  # noqa: E402
from storage_helpers import edit_set_builds_alike, one_error_line, train_two_steps  # noqa: E402
from storage_helpers import parquet_shards as _parquet_shards  # noqa: E402

X2I = [sys.executable, "-m", "x2i.cli.main"]
LIMIT = 60
BUCKET = "x2i-test"


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on a free local port, the AWS_* variables pointing at it, and a bucket."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}
    try:
        with pytest.MonkeyPatch.context() as patch:  # module-scoped: the function-scoped monkeypatch cannot serve
            for k, v in env.items():
                patch.setenv(k, v)
            client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"])
            client.create_bucket(Bucket=BUCKET)
            yield client
    finally:
        server.stop()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "out"
    manifest = build(load_recipe("subject-driven"), out, limit=LIMIT, progress=False)
    return out, to_dict(manifest)  # the manifest as manifest.json holds it


def objects(client, prefix: str) -> dict[str, bytes]:
    listed = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix + "/").get("Contents", [])
    return {o["Key"][len(prefix) + 1:]: client.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read()
            for o in listed}


def assert_same_build(client, prefix: str, reference) -> None:
    """Same data shards byte for byte as the local build, and no object the manifest does not account for."""
    local, manifest = reference
    stored = objects(client, prefix)
    remote = json.loads(stored["manifest.json"])
    assert [(s["path"], s["sha256"], s["rows"]) for s in remote["shards"]] == \
           [(s["path"], s["sha256"], s["rows"]) for s in manifest["shards"]]
    for shard in manifest["shards"]:
        assert hashlib.sha256(stored[shard["path"]]).hexdigest() == shard["sha256"]
    assert remote["rows"] == manifest["rows"] and remote["rejects"] == manifest["rejects"]
    # (pyarrow leaves empty "folder/" marker objects where it deleted a folder's last object: not data)
    data = {k for k in stored if k.startswith(("data/", "rejects/")) and not k.endswith("/")}
    assert data == {s["path"] for s in manifest["shards"]} | set(manifest["rejects_files"]), "orphan objects"
    assert ".x2i-lock" not in stored


def test_build_validate_stats_publish_on_s3_equal_the_local_build(s3, reference, tmp_path):
    uri = f"s3://{BUCKET}/ref"
    result = CliRunner().invoke(app, ["build", "--task", "subject-driven", "--limit", LIMIT, "--out", uri, "-q"])
    assert result.exit_code == 0, result.output
    assert f"manifest: {uri}/manifest.json" in result.output
    assert_same_build(s3, "ref", reference)
    again = CliRunner().invoke(app, ["build", "--task", "subject-driven", "--limit", LIMIT, "--out", uri, "-q"])
    assert again.exit_code == 0 and again.output == result.output  # a complete build: nothing to do
    valid = CliRunner().invoke(app, ["validate", uri, "--no-decode"])
    assert valid.exit_code == 0 and "OK: 2 file(s), 181 row(s)" in valid.output, valid.output
    stats = CliRunner().invoke(app, ["stats", uri, "--json"])
    assert stats.exit_code == 0 and json.loads(stats.output)["rows"] == reference[1]["rows"]
    published = CliRunner().invoke(app, ["publish", uri, "--repo-id", "org/name", "--dry-run", "--no-decode",
                                         "--stage", str(tmp_path / "stage")])
    assert published.exit_code == 0 and "nothing uploaded" in published.output, published.output
    assert (tmp_path / "stage" / "README.md").is_file()


def test_resume_redoes_a_partition_whose_shard_changed_and_removes_orphans(s3, reference):
    uri, prefix = f"s3://{BUCKET}/resume", "resume"
    build(load_recipe("subject-driven"), uri, limit=LIMIT, progress=False)
    first = reference[1]["shards"][0]
    # A partition is done only if its shards match the record: same size, other bytes -> redone.
    data = s3.get_object(Bucket=BUCKET, Key=f"{prefix}/{first['path']}")["Body"].read()
    s3.put_object(Bucket=BUCKET, Key=f"{prefix}/{first['path']}", Body=bytes(len(data)))
    s3.put_object(Bucket=BUCKET, Key=f"{prefix}/data/subject_driven/part-00003-000.parquet", Body=b"killed attempt")
    s3.delete_object(Bucket=BUCKET, Key=f"{prefix}/manifest.json")
    build(load_recipe("subject-driven"), uri, limit=LIMIT, progress=False)
    assert_same_build(s3, prefix, reference)


@pytest.mark.slow
def test_sigkilled_driver_on_s3_resumes_losing_and_duplicating_nothing(s3, reference):
    uri, prefix = f"s3://{BUCKET}/killed", "killed"
    cmd = [*X2I, "build", "--task", "subject-driven", "--limit", str(LIMIT), "--out", uri, "-q", "--workers", "2"]
    driver = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and driver.poll() is None:  # kill once the first partition committed
        if any(k.startswith("_progress/part-") for k in objects(s3, prefix)):
            break
        time.sleep(0.05)
    assert driver.poll() is None, "the build finished before it could be killed"
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    assert "manifest.json" not in objects(s3, prefix)
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert_same_build(s3, prefix, reference)


def test_second_build_into_a_held_prefix_is_refused_naming_the_holder(s3):
    uri = f"s3://{BUCKET}/busy"
    with ObjectLock(Storage.for_uri(uri)):
        result = CliRunner().invoke(app, ["build", "--task", "subject-driven", "--limit", 5, "--out", uri, "-q"])
        line = one_error_line(result)
        assert f"{uri} is being built by pid {os.getpid()}" in line
        with pytest.raises(BuildLocked):
            ObjectLock(Storage.for_uri(uri)).acquire()
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix="busy/")  # released, nothing written


def test_stale_lock_objects_are_taken_over(s3, caplog):
    uri = f"s3://{BUCKET}/stale"
    dead = subprocess.Popen(["true"])
    dead.wait()
    for info in ({"pid": dead.pid, "host": os.uname().nodename, "token": "x", "expires": time.time() + 600},
                 {"pid": 1, "host": "elsewhere", "token": "y", "expires": time.time() - 1}):
        s3.put_object(Bucket=BUCKET, Key="stale/.x2i-lock", Body=json.dumps(info).encode())
        with caplog.at_level("WARNING", logger="x2i.engine.object_lock"), ObjectLock(Storage.for_uri(uri)) as lock:
            assert lock.note and f"from pid {info['pid']}" in lock.note


@pytest.mark.parametrize("target", ["s3:/bucket/prefix", "s3:bucket", "gs:/b/p", "ftp://host/x", "s3://"])
def test_mangled_or_unsupported_uris_are_refused(target, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(X2IError):
        check_target(target)
    one_error_line(CliRunner().invoke(app, ["build", "--task", "subject-driven", "--limit", 5, "--out", target]))
    assert list(tmp_path.iterdir()) == []  # no local folder named `s3:` (or anything else)


def test_missing_credentials_missing_bucket_and_dead_endpoint_are_one_line(s3, monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    line = one_error_line(CliRunner().invoke(app, ["validate", f"s3://{BUCKET}/ref"]))
    assert "half set" in line
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    line = one_error_line(CliRunner().invoke(app, ["validate", f"s3://{BUCKET}/ref"]))
    assert "no S3 credentials" in line
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    line = one_error_line(CliRunner().invoke(app, ["build", "--task", "subject-driven", "--out", "s3://nobucket/x"]))
    assert "bucket 'nobucket' does not exist" in line
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # discard port: nothing listens
    line = one_error_line(CliRunner().invoke(app, ["build", "--task", "subject-driven", "--out", f"s3://{BUCKET}/x"]))
    assert "cannot reach the s3 store" in line


@pytest.mark.slow
def test_x2i_train_reads_a_mix_on_s3(s3, tmp_path):
    pytest.importorskip("torch", reason="needs the model extra: pip install 'x2i[model]'")
    uri = f"s3://{BUCKET}/shapes"
    built = CliRunner().invoke(app, ["build", "--task", "shapes-text-to-image", "--out", uri, "-q",
                                     "--set", "source.options.embedded.scenes=40"])
    assert built.exit_code == 0, built.output
    mix = tmp_path / "mix.yaml"
    mix.write_text(json.dumps({"name": "s3mix", "datasets": [{"path": uri}]}))
    run = tmp_path / "run"
    result = train_two_steps(mix, run)
    assert result.exit_code == 0, result.output
    assert len((run / "log.jsonl").read_text().splitlines()) == 2
    # A shard changed on the store after the build is refused before training (here its footer is gone).
    key = json.loads(s3.get_object(Bucket=BUCKET, Key="shapes/manifest.json")["Body"].read())["shards"][0]["path"]
    body = s3.get_object(Bucket=BUCKET, Key=f"shapes/{key}")["Body"].read()
    s3.put_object(Bucket=BUCKET, Key=f"shapes/{key}", Body=bytes(len(body)))
    again = CliRunner().invoke(app, ["train", "--mix", str(mix), "--model", "tiny", "--steps", "2",
                                     "--out", str(tmp_path / "run2"), "-q"])
    assert again.exit_code == 2 and f"shard {uri}/{key} is not a readable Parquet file" in again.output


def test_paths_under_a_local_root_stay_local(tmp_path):
    store = Storage.for_uri(tmp_path / "x")
    assert store.is_local and not store.exists() and not (tmp_path / "x").exists()
    assert not Path("s3:").exists()


def _upload(client, folder: Path, prefix: str) -> str:
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            client.put_object(Bucket=BUCKET, Key=f"{prefix}/{p.relative_to(folder)}", Body=p.read_bytes())
    return f"s3://{BUCKET}/{prefix}"


@pytest.mark.parametrize("layout", ["tars", "join", "parquet"])
def test_a_source_on_s3_builds_like_its_local_copy(s3, tmp_path, layout):
    """LAION on s3://: img2dataset tars with sidecars (--images), LAION metadata parquet joined with them
    (--source + --images), img2dataset parquet shards (--source): the same shards as from a local copy."""
    from x2i.engine.manifest import read_manifest
    from x2i.shapes.embedded import embedded_source

    images = embedded_source("laion")
    local = tmp_path / "src"
    local.mkdir()
    shutil.copytree(images, local / "images")
    shutil.copytree(images.parent / "metadata", local / "metadata")
    if layout == "parquet":
        _parquet_shards(local / "images", local / "pq")
    remote = _upload(s3, local, f"src-{layout}")
    args = {"tars": ["--images", "{root}/images"], "join": ["--source", "{root}/metadata", "--images", "{root}/images"],
            "parquet": ["--source", "{root}/pq", "--set", "source.options.rows_per_partition=16"]}[layout]
    for name, root in (("local", str(local)), ("s3", remote)):
        result = CliRunner().invoke(app, ["build", "--task", "text-to-image", "--out", str(tmp_path / name), "-q",
                                          *[a.format(root=root) for a in args]])
        assert result.exit_code == 0, result.output
    built = {name: read_manifest(tmp_path / name) for name in ("local", "s3")}
    assert built["s3"].rows > 0 and built["s3"].source["mode"] == built["local"].source["mode"]
    assert [p.label for p in built["s3"].partitions] == [p.label for p in built["local"].partitions]
    assert _data_hashes(tmp_path / "s3") == _data_hashes(tmp_path / "local")
    assert built["s3"].rejects == built["local"].rejects


@pytest.mark.parametrize("fmt", ["magicbrush", "instructpix2pix"])
def test_an_edit_dataset_on_s3_builds_like_its_local_copy(s3, tmp_path, fmt):
    """The parquet edit formats (MagicBrush, InstructPix2Pix, UltraEdit, HQ-Edit) read s3:// like a local folder:
    the same partitions (row spans), shards and rejects."""
    import pyarrow.parquet as pq

    from x2i.shapes.embedded import embedded_source

    local = tmp_path / "src"
    shutil.copytree(embedded_source("magicbrush", None), local)
    if fmt == "instructpix2pix":  # the same rows under InstructPix2Pix's column names
        for f in sorted(local.rglob("*.parquet")):
            t = pq.read_table(f).rename_columns([{"source_img": "original_image", "target_img": "edited_image",
                                                  "instruction": "edit_prompt"}.get(n, n)
                                                 for n in pq.read_schema(f).names])
            pq.write_table(t.drop_columns([c for c in ("mask_img",) if c in t.column_names]), f, row_group_size=4)
    edit_set_builds_alike(fmt, {"local": str(local), "s3": _upload(s3, local, f"edit-{fmt}")}, tmp_path)
