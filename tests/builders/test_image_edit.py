"""`x2i build --task image-edit` on the embedded default: exact instructions and exact change masks."""
from __future__ import annotations

import io
import json

import numpy as np
from PIL import Image

from helpers_curate import cli, rows, validate
from x2i.core.masks import decode_mask, diff_mask
from x2i.shapes.edits import change_mask, edit_chain

EMBEDDED = {"scenes": 12, "per_shard": 6, "size": 128, "photos": False, "seed": 2}
EMB_SET = "source.options.embedded=" + json.dumps(EMBEDDED)


def build(out, *extra):
    result = cli("build", "--task", "image-edit", "-o", str(out), "-q", "--set", EMB_SET, *extra)
    assert result.exit_code == 0, result.output
    return validate(out)


def pixels(struct) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(struct["bytes"])).convert("RGB"))


def world_turns() -> dict[str, tuple]:
    """source_key -> (instruction, before pixels, after pixels) straight from the shapes world."""
    turns = {}
    for index in range(EMBEDDED["scenes"] // 2):
        img_id = str(100000 * (EMBEDDED["seed"] + 1) + index)
        for k, e in enumerate(edit_chain(index, EMBEDDED["seed"], EMBEDDED["size"]), 1):
            turns[f"{img_id}#{k}"] = (e.instruction, np.asarray(e.before.render()), np.asarray(e.after.render()))
    return turns


def test_turns_are_exact(tmp_path):
    manifest = build(tmp_path / "out")
    turns = world_turns()
    got = {r["source_key"]: r for r in rows(tmp_path / "out")}
    assert set(turns) <= set(got)
    for key, (instruction, before, after) in turns.items():
        row = got[key]
        assert row["instruction"] == f"<img><|image_1|></img> {instruction}"
        assert (pixels(row["input_images"][0]) == before).all() and (pixels(row["output_image"]) == after).all()
        mask = decode_mask(json.loads(row["meta"])["change_mask"])
        assert (mask == change_mask(before, after)).all(), key  # covers exactly the changed pixels
    chains = [k for k in got if "#chain" in k]
    assert len(got) == len(turns) + len(chains) and manifest["rows"] == len(got)
    kinds = {json.loads(r["meta"])["edit_kind"] for r in got.values()}
    assert kinds == {"turn", "chain"}


def test_diff_masks_agree_with_the_exact_masks(tmp_path):
    """Without the dataset mask, the pixel difference finds the same region (lossless PNG, no morphology)."""
    build(tmp_path / "diff", "--set", "params.mask=diff", "--set", "params.diff_threshold=0",
          "--set", "params.mask_open=0", "--set", "params.mask_dilate=0")
    for key, (_, before, after) in world_turns().items():
        row = next(r for r in rows(tmp_path / "diff") if r["source_key"] == key)
        meta = json.loads(row["meta"])
        assert meta["change_mask"]["source"] == "diff"
        assert (decode_mask(meta["change_mask"]) == change_mask(before, after)).all()


def test_every_edit_kind_is_exercised_and_instructions_are_exact():
    kinds, texts = set(), []
    for index in range(40):
        for e in edit_chain(index, 0, 128):
            kinds.add(e.kind)
            texts.append(e.instruction)
            changed = change_mask(np.asarray(e.before.render()), np.asarray(e.after.render()))
            assert changed.any()
            if e.kind == "recolour":  # only the recoloured shape's pixels change
                diff = [i for i, (a, b) in enumerate(zip(e.before.shapes, e.after.shapes)) if a != b]
                assert len(diff) == 1 and e.after.shapes[diff[0]].color in e.instruction
            if e.kind == "add":
                assert len(e.after.shapes) == len(e.before.shapes) + 1 and e.after.shapes[-1].phrase in e.instruction
            if e.kind == "remove":
                assert len(e.after.shapes) == len(e.before.shapes) - 1
    assert kinds == {"recolour", "move", "add", "remove", "resize"}
    assert all(t.endswith(".") and t[0].isupper() for t in texts)


def test_jpeg_noise_does_not_make_a_change_mask():
    import skimage.data

    a = Image.fromarray(skimage.data.astronaut()).resize((128, 128))  # a real photo, re-encoded as JPEG
    buf = io.BytesIO()
    a.save(buf, "JPEG", quality=85)
    b = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    assert diff_mask(a, b, threshold=32).mean() < 0.005
    edited = np.asarray(b).copy()
    edited[10:30, 10:30] = [255, 0, 0]
    mask = diff_mask(a, Image.fromarray(edited), threshold=32)
    assert mask[10:30, 10:30].all() and mask.mean() < (20 * 20 + 4 * 24) / 128**2 + 0.005


def test_output_loads_with_datasets(tmp_path):
    """The shards decode with `datasets` and no arguments: input_images as a list of images, masks in meta."""
    import datasets

    build(tmp_path / "out", "--limit", "4")
    files = sorted(str(p) for p in (tmp_path / "out" / "data").rglob("*.parquet"))
    ds = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=str(tmp_path / "hf"))
    row = ds[0]
    assert isinstance(row["output_image"], Image.Image) and isinstance(row["input_images"][0], Image.Image)
    mask = decode_mask(json.loads(row["meta"])["change_mask"])
    assert mask.shape == (row["output_image"].height, row["output_image"].width)
