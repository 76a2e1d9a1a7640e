"""Subject-driven samples on the shapes world, checked against the world's exact geometry."""
import io
import json

import numpy as np
import pytest
from PIL import Image

from x2i.engine.build import build
from x2i.core.imageio import fit_pil
from x2i.core.prompt import image_ids, problems
from x2i.engine.recipe import load_recipe
from x2i.shapes.world import make_scene
from x2i.engine.shards import iter_rows, shard_files

SCENE_ID0 = 1_000_000  # GRIT ids of shapes-world scenes (seed 0)


def rows_of(path):
    return [r for f in shard_files(path) for r in iter_rows(f)]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("sd")
    manifest = build(load_recipe("subject-driven"), out, limit=60, progress=False, strict=True)
    return out, manifest, rows_of(out)


def pixels(struct):
    return np.asarray(Image.open(io.BytesIO(struct["bytes"])).convert("RGB"), dtype=np.float32)


def test_crops_show_the_named_shape_exactly_where_the_world_put_it(built):
    _, _, rows = built
    scene_rows = [r for r in rows if SCENE_ID0 <= int(r["source_key"]) < 2 * SCENE_ID0]
    assert len(scene_rows) > 50
    for row in scene_rows:
        scene = make_scene(int(row["source_key"]) - SCENE_ID0)
        caption, spans = scene.caption()
        meta = json.loads(row["meta"])
        assert meta["caption"] == caption and row["width"] == row["height"] == 512
        rendered = scene.render()
        for k, ent in enumerate(meta["entities"], 1):
            start, end, shape_index = next(s for s in spans if [s[0], s[1]] == ent["span"])
            x0, y0, x1, y1 = scene.shapes[shape_index].box(512, 512)
            assert ent["source_box"] == pytest.approx([x0 / 512, y0 / 512, x1 / 512, y1 / 512], abs=1e-9)
            assert ent["box"] == pytest.approx(ent["source_box"], abs=1e-6)  # 512 px passes through unchanged
            mx, my = (x1 - x0) * ent["margin"], (y1 - y0) * ent["margin"]
            assert ent["crop_px"] == [max(0, round(x0 - mx)), max(0, round(y0 - my)),
                                      min(512, round(x1 + mx)), min(512, round(y1 + my))]
            expected, _ = fit_pil(rendered.crop(tuple(ent["crop_px"])), 512)
            got = pixels(row["input_images"][k - 1])
            assert got.shape[:2] == (expected.height, expected.width)
            assert np.abs(got - np.asarray(expected, np.float32)).mean() < 6  # JPEG noise only
            # the crop's dominant saturated colour is the shape's colour
            phrase = caption[start:end].lower()
            assert scene.shapes[shape_index].color in phrase


def test_instructions_name_entities_in_placeholder_order(built):
    _, _, rows = built
    multi = 0
    for row in rows:
        meta = json.loads(row["meta"])
        assert problems(row["instruction"], len(row["input_images"])) == []
        assert image_ids(row["instruction"]) == list(range(1, len(meta["entities"]) + 1))
        spans = [e["span"][0] for e in meta["entities"]]
        assert spans == sorted(spans)  # image k is the k-th entity named in the caption
        for ent in meta["entities"]:
            words = ent["phrase"].split()
            named = " ".join(words[1:]) if words[0].lower() in ("a", "an", "the") else ent["phrase"]
            assert named.lower() in row["instruction"].lower()
        multi += meta["kind"] == "multi"
        assert 1 <= len(row["input_images"]) <= 3
    assert multi > 5


def test_rejects_are_counted_with_reasons(built):
    _, manifest, rows = built
    # every scene's background chunk covers the whole image: rejected, counted, never a sample
    scenes = sum(1 for p in manifest.partitions for _ in range(p.source_samples)) - 5
    assert manifest.rejects["entity_fills_image"] >= scenes
    assert "invalid_sample" not in manifest.rejects
    assert manifest.rows == len(rows) == manifest.tasks["subject_driven"].rows


def test_same_seed_same_rows_other_seed_other_crops(built, tmp_path):
    out, _, rows = built
    again = build(load_recipe("subject-driven"), tmp_path / "again", limit=60, progress=False)
    rows2 = rows_of(tmp_path / "again")
    assert [r["id"] for r in rows2] == [r["id"] for r in rows]
    assert [r["input_images"] for r in rows2] == [r["input_images"] for r in rows]
    recipe = load_recipe("subject-driven")
    recipe.seed = 7
    build(recipe, tmp_path / "seed7", limit=60, progress=False)
    rows7 = rows_of(tmp_path / "seed7")
    margins = lambda rs: [e["margin"] for r in rs for e in json.loads(r["meta"])["entities"]]  # noqa: E731
    assert margins(rows7) != margins(rows)
    assert again.rows == len(rows)


@pytest.mark.parametrize("max_input_side", [None, 96], ids=["crops-as-cut", "crops-downscaled"])
def test_array_crops_give_the_pil_paths_bytes(tmp_path, monkeypatch, max_input_side):
    """Crop mode works on numpy arrays (decoded by simplejpeg, cut, fitted and encoded by OpenCV, never a PIL
    image); forcing the PIL path gives the same dataset byte for byte, crops as cut and downscaled."""
    from x2i.builders.subject_driven import SubjectDrivenBuilder
    from x2i.core import jpeg_turbo

    recipe = load_recipe("subject-driven")
    if max_input_side is not None:
        recipe.output.max_input_side = max_input_side
    decoded = []
    real = jpeg_turbo.decode_array
    monkeypatch.setattr(jpeg_turbo, "decode_array", lambda *a: decoded.append(1) or real(*a))
    build(recipe, tmp_path / "array", limit=40, progress=False, strict=True)
    assert decoded  # the array path ran
    monkeypatch.setattr(SubjectDrivenBuilder, "pixels", property(lambda self: "pil"))
    decoded.clear()
    build(recipe, tmp_path / "pil", limit=40, progress=False, strict=True)
    assert not decoded
    array_rows, pil_rows = rows_of(tmp_path / "array"), rows_of(tmp_path / "pil")
    assert len(array_rows) == len(pil_rows) > 0
    for a, b in zip(array_rows, pil_rows):
        assert a["id"] == b["id"] and a["meta"] == b["meta"]
        assert a["output_image"]["bytes"] == b["output_image"]["bytes"]
        assert [im["bytes"] for im in a["input_images"]] == [im["bytes"] for im in b["input_images"]]
    if max_input_side is not None:
        sizes = [json.loads(r["meta"])["entities"][0]["input_size"] for r in array_rows]
        assert max(max(s) for s in sizes) <= max_input_side
