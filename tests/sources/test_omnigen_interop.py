"""OmniGen JSONL: export -> import round trip, and importing files written the way OmniGen's own are."""
import json

from PIL import Image

from x2i.engine.build import build
from x2i.inspect.export import export_omnigen
from x2i.engine.recipe import load_recipe
from x2i.engine.shards import iter_rows, shard_files
from x2i.inspect.validate import validate


def rows_of(path):
    return [r for f in shard_files(path) for r in iter_rows(f)]


def importer(jsonl, images=None):
    recipe = load_recipe("omnigen_import")
    recipe.source.path = str(jsonl)
    recipe.source.images = str(images) if images else None
    return recipe


def test_export_import_round_trip(tmp_path):
    build(load_recipe("subject-driven"), tmp_path / "ds", limit=15, progress=False, strict=True)
    result = export_omnigen(tmp_path / "ds", tmp_path / "og")
    lines = [json.loads(line) for line in (tmp_path / "og" / "data.jsonl").read_text().splitlines()]
    original = rows_of(tmp_path / "ds")
    assert result["rows"] == len(lines) == len(original)
    first = lines[0]
    assert set(first) >= {"task_type", "instruction", "input_images", "output_image"}
    assert (tmp_path / "og" / "images" / first["output_image"]).read_bytes() == original[0]["output_image"]["bytes"]
    build(importer(tmp_path / "og" / "data.jsonl", tmp_path / "og" / "images"), tmp_path / "back",
          progress=False, strict=True)
    back = rows_of(tmp_path / "back")
    key = lambda r: r["id"]  # noqa: E731
    for a, b in zip(sorted(original, key=key), sorted(back, key=key)):
        assert (a["id"], a["task"], a["instruction"], a["source"], a["source_key"]) == \
               (b["id"], b["task"], b["instruction"], b["source"], b["source_key"])
        assert a["output_image"]["bytes"] == b["output_image"]["bytes"]
        assert [i["bytes"] for i in a["input_images"]] == [i["bytes"] for i in b["input_images"]]
        assert json.loads(a["meta"]).items() <= json.loads(b["meta"]).items()
    assert validate(tmp_path / "back").ok


def _png(path, size, color):
    Image.new("RGB", size, color).save(path)


def test_import_files_written_like_omnigens_toy_data(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    _png(images / "cat.png", (200, 150), (200, 200, 200))
    _png(images / "edit_source_1.png", (128, 128), (10, 10, 200))
    _png(images / "edit_target_1.png", (128, 128), (200, 10, 10))
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    jsonl = tmp_path / "toy_data.jsonl"
    jsonl.write_text("\n".join([
        '{"task_type":"text_to_iamge","instruction":"A white cat resting on a picnic table.","input_images":[],"output_image":"cat.png"}',
        '{"task_type":"image_edit","instruction":"<img><|image_1|></img> The umbrella should be red.","input_images":["edit_source_1.png"],"output_images":"edit_target_1.png"}',
        '{"task_type":"pose","instruction":"Detect the skeleton of human in <img><|image_1|></img>","input_images":["missing.png"],"output_image":"cat.png"}',
        '{"task_type":"image_edit","instruction":"<img><|image_1|></img> x","input_images":["broken.png"],"output_image":"cat.png"}',
        '{"task_type":"try-on","instruction":"<img><|image_1|></img> wears <img><|image_2|></img>.","input_images":["cat.png"],"output_image":"cat.png"}',
        'this line is not json',
    ]) + "\n")
    manifest = build(importer(jsonl, images), tmp_path / "out", progress=False)
    rows = rows_of(tmp_path / "out")
    assert sorted(r["task"] for r in rows) == ["image_edit", "text_to_image"]
    cat = next(r for r in rows if r["task"] == "text_to_image")
    assert (cat["width"], cat["height"]) == (192, 144)  # size policy: centre-cropped to multiples of 16
    assert manifest.rejects == {"image_missing": 1, "image_unreadable": 1, "invalid_sample": 1,
                                   "jsonl_malformed": 1}
    assert validate(tmp_path / "out").ok
