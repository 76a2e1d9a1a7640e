"""Resume after interruption, executor equivalence and plan safety."""
import json

import pytest

import x2i.engine.build as build_module
import x2i.engine.manifest as manifest_module
from x2i.engine.build import build
from x2i.core.errors import X2IError
from x2i.engine.recipe import load_recipe
from x2i.engine.shards import iter_rows, shard_files
from x2i.sources.grit import GritSource

LIMIT = 130  # three partitions of the embedded sample (50 + 50 + 30 records)


def rows_of(path):
    return [(r["id"], r["instruction"], r["output_image"]["bytes"], [i["bytes"] for i in r["input_images"]])
            for f in shard_files(path) for r in iter_rows(f)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    manifest = build(load_recipe("subject-driven"), out, limit=LIMIT, progress=False, strict=True)
    assert len(manifest.partitions) >= 3
    return out, manifest, rows_of(out)


def test_interrupted_build_resumes_to_identical_rows(reference, tmp_path, monkeypatch):
    _, ref_manifest, ref_rows = reference
    original = GritSource.read

    def read_then_interrupt(self, partition, ctx, limit=None):
        for n, sample in enumerate(original(self, partition, ctx, limit)):
            if ctx.partition == 1 and n == 20:
                raise KeyboardInterrupt  # Ctrl-C in the middle of partition 1
            yield sample

    monkeypatch.setattr(GritSource, "read", read_then_interrupt)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        build(load_recipe("subject-driven"), out, limit=LIMIT, progress=False)
    assert (out / "_progress" / "part-00000.json").exists()
    assert not (out / "_progress" / "part-00001.json").exists()
    assert not list(out.rglob(".tmp-*")), "a half-written shard is visible"
    assert not list(out.rglob("part-00001-*.parquet"))
    assert not (out / "manifest.json").exists()
    monkeypatch.setattr(GritSource, "read", original)
    manifest = build(load_recipe("subject-driven"), out, limit=LIMIT, progress=False)
    assert rows_of(out) == ref_rows
    assert manifest.rows == ref_manifest.rows and manifest.rejects == ref_manifest.rejects
    assert [s.sha256 for s in manifest.shards] == [s.sha256 for s in ref_manifest.shards]


def test_crash_between_commit_and_completion_record_is_redone(reference, tmp_path, monkeypatch):
    _, _, ref_rows = reference
    original = manifest_module.atomic_write_bytes  # completion records are written by x2i/engine/manifest.py

    def fail_on_record(path, data):
        if path.name == "part-00002.json":
            raise OSError("disk vanished")
        return original(path, data)

    monkeypatch.setattr(manifest_module, "atomic_write_bytes", fail_on_record)
    out = tmp_path / "out"
    with pytest.raises(X2IError, match="partition 2"):
        build(load_recipe("subject-driven"), out, limit=LIMIT, progress=False)
    assert list(out.rglob("part-00002-*.parquet"))  # committed shards without a completion record
    monkeypatch.setattr(manifest_module, "atomic_write_bytes", original)
    build(load_recipe("subject-driven"), out, limit=LIMIT, progress=False)
    assert rows_of(out) == ref_rows


def test_process_pool_gives_identical_rows(reference, tmp_path):
    build(load_recipe("subject-driven"), tmp_path / "pool", limit=LIMIT, workers=2, progress=False)
    assert rows_of(tmp_path / "pool") == reference[2]


def test_ray_workers_get_every_x2i_and_hub_setting(monkeypatch):
    from x2i.engine.ray_executor import worker_env

    monkeypatch.setenv("X2I_ANNOTATOR_DIR", "/weights/annotators")
    monkeypatch.setenv("X2I_CURATION_DIR", "/weights/curation")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("SOMETHING_ELSE", "x")
    env = worker_env()
    assert env["X2I_ANNOTATOR_DIR"] == "/weights/annotators" and env["X2I_CURATION_DIR"] == "/weights/curation"
    assert env["HF_HUB_OFFLINE"] == "1" and "SOMETHING_ELSE" not in env


def test_ray_workers_get_the_object_store_settings(monkeypatch):
    """A worker on another node writing to s3:// must reach the driver's store with the driver's credentials."""
    from x2i.engine.ray_executor import worker_env

    aws = {"AWS_ENDPOINT_URL": "http://minio:9000", "AWS_ENDPOINT_URL_S3": "http://minio:9000",
           "AWS_ACCESS_KEY_ID": "key", "AWS_SECRET_ACCESS_KEY": "secret", "AWS_SESSION_TOKEN": "token",
           "AWS_REGION": "eu-west-1", "AWS_PROFILE": "builds"}
    for k, v in aws.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("AWS_SOMETHING_ELSE", "x")
    env = worker_env()
    assert {k: env.get(k) for k in aws} == aws and "AWS_SOMETHING_ELSE" not in env
    hub_and_gcs = {"HF_TOKEN": "hf_x", "HF_ENDPOINT": "http://hub:8080",
                   "GOOGLE_APPLICATION_CREDENTIALS": "/etc/gcs.json", "STORAGE_EMULATOR_HOST": "http://gcs:4443"}
    for k, v in hub_and_gcs.items():
        monkeypatch.setenv(k, v)
    env = worker_env()
    assert {k: env.get(k) for k in hub_and_gcs} == hub_and_gcs  # hf:// and gs:// outputs on other nodes


def test_a_cluster_build_names_a_relative_source_path(tmp_path):
    from x2i.engine.partition import PartitionJob
    from x2i.engine.plan import compile_plan
    from x2i.engine.ray_executor import relative_paths

    recipe = load_recipe("subject-driven")
    plan = compile_plan(recipe)
    recipe.source.path, recipe.source.images = "rel/meta", "s3://bucket/images"
    job = PartitionJob(plan, 0, None, "p0", None, str(tmp_path / "out"))
    assert relative_paths(job) == ["source path rel/meta"]


def test_ray_executor_gives_identical_rows(reference, tmp_path):
    manifest = build(load_recipe("subject-driven"), tmp_path / "ray", limit=LIMIT, executor="ray", workers=2,
                     progress=False)
    assert rows_of(tmp_path / "ray") == reference[2]
    assert manifest.rejects == reference[1].rejects


def test_a_different_plan_is_refused_and_overwrite_replaces(reference, tmp_path):
    out = tmp_path / "out"
    build(load_recipe("subject-driven"), out, limit=10, progress=False)
    recipe = load_recipe("subject-driven")
    recipe.seed = 5
    with pytest.raises(X2IError, match="different plan"):
        build(recipe, out, limit=10, progress=False)
    manifest = build(recipe, out, limit=10, overwrite=True, progress=False)
    assert json.loads((out / "manifest.json").read_text())["recipe"]["seed"] == 5 == manifest.recipe["seed"]
    stranger = tmp_path / "not-ours"
    stranger.mkdir()
    (stranger / "precious.txt").write_text("keep me")
    with pytest.raises(X2IError, match="not an x2i build"):
        build(recipe, stranger, limit=10, overwrite=True, progress=False)
    assert (stranger / "precious.txt").exists()
