"""Confinement: row data (task_type, ids, JSONL image paths) never makes x2i write outside its output folder or
read outside its images folder; bad image paths are per-row rejects and the rows beside them are kept."""
import json
import os
import threading
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from x2i.engine.build import build
from x2i.core.errors import SourceError, X2IError
from x2i.inspect.export import export_omnigen
from x2i.engine.recipe import load_recipe
from x2i.core.safepath import (FileRejected, UnsafePathError, confined, read_confined_file, safe_component,
                          safe_relpath)
from x2i.engine.shards import iter_rows, shard_files, task_dir_name

HOSTILE_TASKS = ["/tmp/x2i-evil-abs", "../../x", "a/../../b", "", ".", "..", "Ünïcödé/τασκ", "t" * 5000,
                 "a/" * 40, "x\\..\\..\\y", "tmp/x2i-evil-abs"]
ORDINARY_TASKS = ["subject_driven", "vision/canny", "few_shot/image_edit", "text_to_image", "try-on",
                  "image_edit", "vision/depth", "segmentation", "layout.v2"]


def snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def assert_only_under(before: set[str], after: set[str], *allowed: str) -> None:
    new = sorted(p for p in after - before if not any(p == a or p.startswith(a + os.sep) for a in allowed))
    assert new == [], f"written outside {allowed}: {new[:5]}"


def rows_of(path):
    return [r for f in shard_files(path) for r in iter_rows(f)]


def rejects_of(out: Path) -> list[dict]:
    return [r for f in sorted((out / "rejects").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]


def importer(jsonl, images=None, **options):
    recipe = load_recipe("omnigen_import")
    recipe.source.path = str(jsonl)
    recipe.source.images = str(images) if images else None
    recipe.source.options.update(options)
    return recipe


def png(path: Path, color=(200, 10, 10), size=(64, 48)) -> bytes:
    Image.new("RGB", size, color).save(path)
    return path.read_bytes()


def line(task_type, output, inputs=(), **extra) -> str:
    instruction = " ".join(f"<img><|image_{k}|></img>" for k in range(1, len(inputs) + 1)) + " a red square."
    return json.dumps({"task_type": task_type, "instruction": instruction.strip(), "input_images": list(inputs),
                       "output_image": output, **extra})


# ---- the helper ---------------------------------------------------------------------------------------------

def test_ordinary_names_are_unchanged():
    for task in ORDINARY_TASKS:
        assert safe_relpath(task) == task_dir_name(task) == task
    assert safe_component("0123abcdef_in1-x.y") == "0123abcdef_in1-x.y"


@pytest.mark.parametrize("value", HOSTILE_TASKS)
def test_hostile_names_become_safe_distinct_components(value):
    rel = safe_relpath(value)
    parts = rel.split("/")
    assert rel and not rel.startswith("/") and all(p not in ("", ".", "..") for p in parts)
    assert all(len(p) <= 120 for p in parts) and len(parts) <= 8
    assert safe_relpath(value) == rel  # deterministic
    comp = safe_component(value)
    assert comp and "/" not in comp and comp not in (".", "..") and len(comp) <= 120
    assert len({safe_relpath(v) for v in HOSTILE_TASKS}) == len(HOSTILE_TASKS)  # no two share a folder
    assert safe_relpath("/tmp/x2i-evil-abs") != safe_relpath("tmp/x2i-evil-abs")


def test_confined_refuses_escapes(tmp_path):
    root = tmp_path / "out"
    (root / "data").mkdir(parents=True)
    assert confined(root, "data", "vision/canny", "p.parquet") == root / "data" / "vision" / "canny" / "p.parquet"
    for parts in [("/etc/passwd",), ("data", "../../x"), ("a/../../b",), ("data", "/abs")]:
        with pytest.raises(UnsafePathError):
            confined(root, *parts)
    (tmp_path / "elsewhere").mkdir()
    (root / "data" / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UnsafePathError, match="link"):
        confined(root, "data", "link", "p.parquet")
    assert issubclass(UnsafePathError, X2IError)


def test_read_confined_file_reasons(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    good = png(root / "good.png")
    assert read_confined_file(root, "good.png") == good
    (root / "big.bin").write_bytes(b"x" * 2000)
    cases = {"../outside.png": "image_outside_root", "/dev/zero": "image_outside_root",
             "missing.png": "image_missing", "big.bin": "image_too_large"}
    for rel, reason in cases.items():
        with pytest.raises(FileRejected) as exc:
            read_confined_file(root, rel, max_bytes=1000)
        assert exc.value.reason == reason, rel
    zero = tmp_path / "images" / "zero"
    zero.symlink_to("/dev/zero")  # a link inside the root to a device outside it
    with pytest.raises(FileRejected) as exc:
        read_confined_file(root, "zero")
    assert exc.value.reason == "image_outside_root"


# ---- import -------------------------------------------------------------------------------------------------

def test_import_hostile_task_types_stay_under_out(tmp_path):
    work = tmp_path / "work"
    (work / "images").mkdir(parents=True)
    png(work / "images" / "good.png")
    evil_abs = str(tmp_path / "evil-abs")
    tasks = [evil_abs, *HOSTILE_TASKS[1:]]
    (work / "in.jsonl").write_text("\n".join(line(t, "good.png") for t in tasks) + "\n")
    before = snapshot(tmp_path)
    manifest = build(importer(work / "in.jsonl"), work / "out", progress=False)
    assert_only_under(before, snapshot(tmp_path), os.path.join("work", "out"))
    assert not Path("/tmp/x2i-evil-abs").exists() and not (tmp_path / "evil-abs").exists()
    assert manifest.rejects == {}
    rows = rows_of(work / "out")
    assert len(rows) == len(tasks)
    for f in shard_files(work / "out"):
        assert (work / "out" / "data").resolve() in f.resolve().parents


def test_import_hostile_image_paths_are_rejects(tmp_path):
    work, outside = tmp_path / "work", tmp_path / "outside"
    images = work / "images"
    images.mkdir(parents=True)
    outside.mkdir()
    png(images / "good.png")
    png(images / "other.png", (10, 200, 10))
    png(outside / "secret.png", (1, 2, 3))
    (images / "escape.png").symlink_to(outside / "secret.png")
    (images / "inside_link.png").symlink_to(images / "good.png")  # a link that stays inside is fine
    (images / "folder.png").mkdir()
    os.mkfifo(images / "fifo.png")
    Image.new("RGB", (512, 512)).save(images / "huge.bmp")  # ~770 KB, over the 100 KB limit below
    cases = [("good.png", None), (str(outside / "secret.png"), "image_outside_root"),
             ("../../outside/secret.png", "image_outside_root"), ("escape.png", "image_outside_root"),
             ("/dev/zero", "image_outside_root"), ("fifo.png", "image_not_regular_file"),
             ("folder.png", "image_not_regular_file"), ("huge.bmp", "image_too_large"),
             ("missing.png", "image_missing"), ("inside_link.png", None), ("other.png", None)]
    lines = [line("image_edit", "good.png", [rel], source_key=f"case{k}") for k, (rel, _) in enumerate(cases)]
    (work / "in.jsonl").write_text("\n".join(lines) + "\n")
    before = snapshot(tmp_path)
    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(manifest=build(
        importer(work / "in.jsonl", max_image_bytes=100_000), work / "out", progress=False)), daemon=True)
    worker.start()
    worker.join(timeout=120)
    if worker.is_alive():  # the FIFO blocked a read: release it so the process can end, then fail
        os.close(os.open(images / "fifo.png", os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("import hung on a FIFO")
    assert_only_under(before, snapshot(tmp_path), os.path.join("work", "out"))
    rows = rows_of(work / "out")
    assert sorted(r["source_key"] for r in rows) == ["case0", "case10", "case9"]
    got = {r["source_key"]: r["reason"] for r in rejects_of(work / "out")}
    expected = {f"in.jsonl:{k + 1}": reason for k, (_, reason) in enumerate(cases) if reason}
    assert got == expected
    assert result["manifest"].rejects["image_outside_root"] == 4


def test_images_root_default_and_explicit(tmp_path):
    png(tmp_path / "a.png")
    (tmp_path / "in.jsonl").write_text(line("t2i", "a.png") + "\n")
    # No images/ folder beside the JSONL: paths are relative to the JSONL's folder (as before).
    build(importer(tmp_path / "in.jsonl"), tmp_path / "o1", progress=False, strict=True)
    assert len(rows_of(tmp_path / "o1")) == 1
    with pytest.raises(SourceError, match="images folder"):
        build(importer(tmp_path / "in.jsonl", tmp_path / "nope"), tmp_path / "o2", progress=False)


# ---- export -------------------------------------------------------------------------------------------------

def test_export_hostile_ids_and_tasks_then_round_trip_without_images_flag(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    png(src / "o.png")
    png(src / "i.png", (0, 0, 255))
    ids = ["../../evil-id", str(tmp_path / "abs-id"), "a/b", "..", ".", "Ünï", "i" * 3000, "plain0123"]
    tasks = ["../../evil-task", str(tmp_path / "abs-task"), "vision/canny", "..", "", "Ünï", "t" * 3000,
             "subject_driven"]
    (src / "in.jsonl").write_text("\n".join(line(t, "o.png", ["i.png"], id=i) for i, t in zip(ids, tasks)) + "\n")
    build(importer(src / "in.jsonl", src), tmp_path / "ds", progress=False, strict=True)
    original = rows_of(tmp_path / "ds")
    assert len(original) == len(ids)

    before = snapshot(tmp_path)
    result = export_omnigen(tmp_path / "ds", tmp_path / "og")
    assert_only_under(before, snapshot(tmp_path), "og")
    assert result["rows"] == len(ids)
    exported = [json.loads(x) for x in (tmp_path / "og" / "data.jsonl").read_text().splitlines()]
    by_id = {e["id"]: e for e in exported}
    assert by_id["plain0123"]["output_image"] == "subject_driven/plain0123_out.png"  # ordinary: unchanged
    images = (tmp_path / "og" / "images").resolve()
    for e in exported:
        for rel in [*e["input_images"], e["output_image"]]:
            assert images in (images / rel).resolve().parents and (images / rel).is_file()

    before = snapshot(tmp_path)  # export -> import with no --images flag: images/ beside the JSONL is the root
    manifest = build(importer(tmp_path / "og" / "data.jsonl"), tmp_path / "back", progress=False, strict=True)
    assert_only_under(before, snapshot(tmp_path), "back")
    assert manifest.rejects == {}
    back = {r["id"]: r for r in rows_of(tmp_path / "back")}
    assert len(back) == len(original)
    for a in original:
        b = back[a["id"]]
        assert (a["task"], a["instruction"]) == (b["task"], b["instruction"])
        assert a["output_image"]["bytes"] == b["output_image"]["bytes"]
        assert [i["bytes"] for i in a["input_images"]] == [i["bytes"] for i in b["input_images"]]


def test_cli_import_of_an_export_folder_needs_no_images_flag(tmp_path):
    from typer.testing import CliRunner

    from x2i.cli.main import app

    build(load_recipe("subject-driven"), tmp_path / "ds", limit=4, progress=False, strict=True)
    original = rows_of(tmp_path / "ds")
    runner = CliRunner()
    result = runner.invoke(app, ["export", str(tmp_path / "ds"), "--out", str(tmp_path / "og")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["import", str(tmp_path / "og" / "data.jsonl"), "--out", str(tmp_path / "back"),
                                 "-q"])
    assert result.exit_code == 0, result.output
    back = {r["id"]: r for r in rows_of(tmp_path / "back")}
    assert len(back) == len(original) > 0
    for a in original:
        assert back[a["id"]]["output_image"]["bytes"] == a["output_image"]["bytes"]
