"""`x2i publish --dry-run`: the staged folder loads with `datasets` per config; the card says what it should."""
from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from publish_fixtures import SECRET_DIR
from x2i.cli.main import app
from x2i.publish.hub import PublishConfig, check_repo_id, config_names, stage
from x2i.core.schema import HF_FEATURES
from x2i.engine.manifest import read_manifest
from x2i.engine.shards import iter_rows, shard_files

datasets = pytest.importorskip("datasets")


def _front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def _source_ids(root, tasks) -> list[str]:
    return [r["id"] for f in shard_files(root) for r in iter_rows(f, columns=["id", "task"]) if r["task"] in tasks]


def test_config_names_one_per_family_plus_default():
    tasks = ["vision/canny", "vision/depth", "text_to_image", "few_shot/image_edit", "a b/x", "a_b", "default"]
    configs = config_names(tasks)
    assert configs["default"] == sorted(tasks)
    assert configs["vision"] == ["vision/canny", "vision/depth"]
    assert configs["few_shot"] == ["few_shot/image_edit"]
    assert configs["default_family"] == ["default"]  # a family called "default" cannot shadow the all-tasks config
    # "a b" and "a_b" both sanitise to a_b: both keep a config, under distinct names
    assert sorted([configs["a_b"], configs["a_b_2"]]) == [["a b/x"], ["a_b"]]
    assert all("/" not in name and " " not in name for name in configs)


@pytest.mark.parametrize("repo_id", ["org/name", "My-Org/x2i.shapes_v1", "a/b"])
def test_good_repo_ids(repo_id):
    assert check_repo_id(repo_id) == repo_id


@pytest.mark.parametrize("repo_id", ["name-only", "org/name/extra", "org/-name", "org/na--me", "org/na..me",
                                     "org/name.", "org/", "/name", "org/na me", "org/name.git", "o" * 97 + "/n"])
def test_malformed_repo_ids_are_refused_by_the_cli(repo_id, mixed_dataset, tmp_path):
    result = CliRunner().invoke(app, ["publish", str(mixed_dataset), "--repo-id", repo_id, "--dry-run",
                                      "--stage", str(tmp_path / "stage")])
    assert result.exit_code == 2
    assert "malformed repo id" in result.output
    assert not (tmp_path / "stage").exists()


def test_dry_run_folder_loads_per_config(mixed_dataset, tmp_path):
    stage_dir = tmp_path / "stage"
    result = CliRunner().invoke(app, ["publish", str(mixed_dataset), "--repo-id", "me/mixed", "--dry-run",
                                      "--stage", str(stage_dir)])
    assert result.exit_code == 0, result.output
    assert "dry run" in result.output and "nothing uploaded" in result.output
    manifest = json.loads((mixed_dataset / "manifest.json").read_text())
    rows = {t: info["rows"] for t, info in manifest["tasks"].items()}
    assert rows["layout"] == 0  # the fixture's empty task...

    names = datasets.get_dataset_config_names(str(stage_dir))
    # ...gets no config; every other family does, plus default
    assert sorted(names) == ["control", "default", "few_shot", "image_edit", "text_to_image", "vision"]
    expected_features = datasets.Features.from_dict(HF_FEATURES)
    for name in names:
        ds = datasets.load_dataset(str(stage_dir), name, split="train", cache_dir=str(tmp_path / "hf-cache"))
        tasks = sorted(t for t in rows if rows[t] and (name == "default" or t.split("/")[0] == name))
        assert sorted(set(ds["task"])) == tasks
        assert ds.num_rows == sum(rows[t] for t in tasks)
        assert sorted(ds["id"]) == sorted(_source_ids(mixed_dataset, tasks))
        assert ds.features == expected_features
        for row in ds:  # every image decodes, with the recorded size and the right number of inputs
            assert isinstance(row["output_image"], Image.Image)
            assert row["output_image"].size == (row["width"], row["height"])
            assert row["instruction"].count("<|image_") == len(row["input_images"])
            assert all(isinstance(im, Image.Image) and im.width > 0 for im in row["input_images"])
    few_shot = datasets.load_dataset(str(stage_dir), "few_shot", split="train", cache_dir=str(tmp_path / "hf-cache"))
    assert {len(r) for r in few_shot["input_images"]} == {3}
    # what was printed is what is in the folder
    for path in [p for p in stage_dir.rglob("*") if p.is_file() and not p.name.startswith(".")]:
        assert str(path.relative_to(stage_dir)) in result.output


def test_card_metadata_and_provenance(mixed_dataset, tmp_path):
    staged = stage(mixed_dataset, tmp_path / "stage", PublishConfig("me/mixed", license="cc-by-4.0"),
                   manifest=read_manifest(mixed_dataset))
    text = (tmp_path / "stage" / "README.md").read_text()
    meta = _front_matter(text)
    assert meta["license"] == "cc-by-4.0"
    configs = {c["config_name"]: c for c in meta["configs"]}
    assert configs["vision"]["data_files"] == [{"split": "train", "path": ["data/vision/canny/train-*.parquet",
                                                                           "data/vision/mask/train-*.parquet"]}]
    infos = {i["config_name"]: i for i in meta["dataset_info"]}
    assert infos["vision"]["splits"][0]["num_examples"] == staged.tasks["vision/canny"] + staged.tasks["vision/mask"]
    assert infos["default"]["splits"][0]["num_examples"] == sum(staged.tasks.values())
    assert infos["default"]["download_size"] == sum(f.bytes for f in staged.files if f.task)
    assert "&id" not in text and "*id" not in text  # no YAML anchors
    # The Hub's own card parser agrees
    from huggingface_hub import DatasetCard

    card = DatasetCard(text)
    assert {c["config_name"] for c in card.data.to_dict()["configs"]} == set(configs)
    # provenance: version, recipe, rejects per reason, licences per row, sources; no local paths
    assert "x2i 0.1.0" in text and "mixed-test" in text and "handmade" in text
    assert "| `too_small` | 2 |" in text and "| `no_entity` | 1 |" in text
    assert "CC0 (x2i shapes world)" in text and "| `shapes` | 23 |" in text
    assert SECRET_DIR not in text and "/home/" not in text
    assert "source-data" in text  # the path's last component stays as a hint


def test_stage_merges_small_shards_and_keeps_row_groups_small(mixed_dataset, tmp_path):
    cfg = PublishConfig("me/mixed", rows_per_group=4)
    staged = stage(mixed_dataset, tmp_path / "merged", cfg)
    for f in staged.files:
        if f.task is None:
            continue
        pf = pq.ParquetFile(tmp_path / "merged" / f.path)
        groups = [pf.metadata.row_group(g).num_rows for g in range(pf.metadata.num_row_groups)]
        assert max(groups) <= 4 and sum(groups) == f.rows
        assert pf.schema_arrow.metadata[b"huggingface"]  # images still decode with no arguments
    t2i = [f for f in staged.files if f.task == "text_to_image"]
    assert len(t2i) == 1 and t2i[0].path == "data/text_to_image/train-00000-of-00001.parquet"
    pf = pq.ParquetFile(tmp_path / "merged" / t2i[0].path)
    # the two source shards (2-row groups) were merged into 4-row groups, rows in their original order
    assert [pf.metadata.row_group(g).num_rows for g in range(pf.metadata.num_row_groups)] == [4, 2]
    assert pf.read(columns=["id"]).column("id").to_pylist() == _source_ids(mixed_dataset, ["text_to_image"])
    # a tiny target keeps every built shard as its own file, byte for byte
    single = stage(mixed_dataset, tmp_path / "single", PublishConfig("me/mixed", target_shard_bytes=1))
    manifest = json.loads((mixed_dataset / "manifest.json").read_text())
    built = sorted(s["sha256"] for s in manifest["shards"] if s["rows"])
    assert sorted(f.sha256 for f in single.files if f.task) == built
    assert [f.path for f in single.files if f.task == "text_to_image"] == [
        "data/text_to_image/train-00000-of-00002.parquet", "data/text_to_image/train-00001-of-00002.parquet"]


def test_restaging_reuses_the_data_and_refuses_foreign_folders(mixed_dataset, tmp_path):
    cfg = PublishConfig("me/mixed")
    first = stage(mixed_dataset, tmp_path / "stage", cfg)
    merged = tmp_path / "stage" / "data" / "text_to_image" / "train-00000-of-00001.parquet"
    before = merged.stat().st_mtime_ns
    messages = []
    second = stage(mixed_dataset, tmp_path / "stage", cfg, log=messages.append)
    assert merged.stat().st_mtime_ns == before
    assert any("up to date" in m for m in messages)
    assert [f.sha256 for f in second.files] == [f.sha256 for f in first.files]
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(Exception, match="not an x2i staging folder"):
        stage(mixed_dataset, foreign, cfg)
    assert (foreign / "notes.txt").read_text() == "mine"


def test_invalid_dataset_is_refused_with_the_report(mixed_dataset, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(mixed_dataset, broken)
    (broken / "data" / "image_edit" / "part-00001-000.parquet").unlink()
    result = CliRunner().invoke(app, ["publish", str(broken), "--repo-id", "me/broken", "--dry-run",
                                      "--stage", str(tmp_path / "stage")])
    assert result.exit_code == 2
    assert "listed in manifest.json but missing" in result.output  # the validation report
    assert "fails validation" in result.output and "refusing to publish" in result.output
    assert not (tmp_path / "stage").exists()


def test_default_stage_folder_is_inside_the_dataset(mixed_dataset, tmp_path):
    copy = tmp_path / "ds"
    shutil.copytree(mixed_dataset, copy)
    result = CliRunner().invoke(app, ["publish", str(copy), "--repo-id", "me/mixed", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert (copy / "_hub" / "README.md").exists()
    # the staged copy is not mistaken for shards of the dataset itself
    result = CliRunner().invoke(app, ["validate", str(copy)])
    assert result.exit_code == 0, result.output


def test_dry_run_on_the_shapes_world_build(shapes_build, tmp_path):
    """Done-when of the issue: the shapes-world build's dry-run folder loads per config, images decoded."""
    stage_dir = tmp_path / "stage"
    result = CliRunner().invoke(app, ["publish", str(shapes_build), "--repo-id", "x2i/shapes-subject-driven",
                                      "--dry-run", "--stage", str(stage_dir)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((shapes_build / "manifest.json").read_text())
    names = datasets.get_dataset_config_names(str(stage_dir))
    assert sorted(names) == sorted({"default"} | {t.split("/")[0] for t in manifest["tasks"]})
    for name in names:
        ds = datasets.load_dataset(str(stage_dir), name, split="train", cache_dir=str(tmp_path / "hf-cache"))
        assert ds.num_rows == manifest["rows"]
        for row in ds.select(range(0, ds.num_rows, 50)):
            assert row["output_image"].size == (row["width"], row["height"])
            assert len(row["input_images"]) >= 1 and all(im.size[0] > 0 for im in row["input_images"])
    for f in (stage_dir / "data").rglob("*.parquet"):
        md = pq.ParquetFile(f).metadata
        assert max(md.row_group(g).num_rows for g in range(md.num_row_groups)) <= 100


def test_staging_that_dies_half_way_can_be_rerun(mixed_dataset, tmp_path, monkeypatch):
    import x2i.publish.hub

    calls = []

    def failing_merge(sources, dst, rows_per_group):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C while writing the second merged file
        real_merge(sources, dst, rows_per_group)

    real_merge = x2i.publish.hub._merge
    monkeypatch.setattr(x2i.publish.hub, "_merge", failing_merge)
    with pytest.raises(KeyboardInterrupt):
        stage(mixed_dataset, tmp_path / "stage", PublishConfig("me/mixed"))
    monkeypatch.setattr(x2i.publish.hub, "_merge", real_merge)
    staged = stage(mixed_dataset, tmp_path / "stage", PublishConfig("me/mixed"))
    assert sum(f.rows for f in staged.files) == 23
    leftovers = [p for p in (tmp_path / "stage").rglob("*") if p.name.startswith(".tmp-")]
    assert leftovers == []
