"""Edit datasets on real-format parquet / JSONL: rows become edit samples, bad rows become counted rejects."""
from __future__ import annotations

import io
import json
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from helpers_curate import cli, rows, validate
from realformat import (HQ_EDIT, IP2P, MAGICBRUSH, ULTRAEDIT_FREEFORM, ULTRAEDIT_REGION, bad_variants, edit_pairs,
                        hq_edit_rows, ip2p_rows, magicbrush_rows, ultraedit_rows, write_parquet)
from x2i.core.masks import decode_mask
from x2i.engine.recipe import SourceConfig
from x2i.sources import make_source
from x2i.engine.steps import Context


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("X2I_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def pairs():
    return edit_pairs(6)


def build(tmp_path, fmt, path, *extra):
    out = tmp_path / f"out-{fmt}"
    result = cli("build", "--task", "image-edit", "--format", fmt, "--source", str(path), "-o", str(out), "-q",
                 *extra)
    assert result.exit_code == 0, result.output
    return out, validate(out)


def test_instructpix2pix_with_bad_rows(tmp_path, pairs):
    bad = bad_variants(pairs)
    path = write_parquet(tmp_path / "ip2p" / "train-00000-of-00001.parquet", ip2p_rows(pairs + bad), IP2P, hf=True)
    out, manifest = build(tmp_path, "instructpix2pix", path.parent)
    assert manifest["rows"] == len(pairs)
    assert Counter(manifest["rejects"]) == Counter(b["_expect"] for b in bad)
    got = rows(out)
    assert {r["instruction"] for r in got} == {f"<img><|image_1|></img> {p['instruction']}" for p in pairs}
    meta = json.loads(got[0]["meta"])
    assert meta["original_prompt"] == pairs[0]["before_caption"] and meta["change_mask"]["source"] == "diff"
    from helpers_curate import rejects

    ledger = {r["reason"]: json.loads(r["meta"]) for r in rejects(out)}
    assert ledger["size_mismatch"] == {"file": path.name, "row": len(pairs)}  # the first bad row
    assert ledger["image_corrupt"] == {"file": str(path), "row": len(pairs) + 2}


@pytest.mark.parametrize("region", [False, True])
def test_ultraedit_free_form_and_region(tmp_path, pairs, region):
    schema = ULTRAEDIT_REGION if region else ULTRAEDIT_FREEFORM
    path = write_parquet(tmp_path / "ue" / "FreeForm-00000.parquet", ultraedit_rows(pairs, region), schema, hf=True)
    assert pq.read_schema(path).field("mask_image").type == (IMAGE_T if region else pa.null())
    out, manifest = build(tmp_path, "ultraedit", path)
    assert manifest["rows"] == len(pairs) and not manifest["rejects"]
    by_key = {r["source_key"]: json.loads(r["meta"]) for r in rows(out)}
    assert set(by_key) == {str(700 + i) for i in range(len(pairs))}  # idx is the key
    assert by_key["701"]["dinov2_sim"] is None and by_key["701"]["nan_fields"] == ["dinov2_sim"]
    assert {m["change_mask"]["source"] for m in by_key.values()} == {"dataset" if region else "diff"}


IMAGE_T = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def test_hq_edit_forward_and_inverse(tmp_path, pairs):
    path = write_parquet(tmp_path / "hq" / "train.parquet", hq_edit_rows(pairs[:3]), HQ_EDIT)
    out, manifest = build(tmp_path, "hq_edit", path)
    assert manifest["rows"] == 6
    got = {r["source_key"]: r for r in rows(out)}
    fwd, inv = got["train#0"], got["train#0#inverse"]
    assert inv["instruction"].endswith("Undo: " + pairs[0]["instruction"])
    # the inverse edit swaps the images
    assert fwd["input_images"][0]["bytes"] == inv["output_image"]["bytes"]
    assert fwd["output_image"]["bytes"] == inv["input_images"][0]["bytes"]
    out2, manifest2 = build(tmp_path / "noinv", "hq_edit", path, "--set", "source.options.inverse=false")
    assert manifest2["rows"] == 3


def test_magicbrush_turns_and_chains(tmp_path):
    table = magicbrush_rows(sessions=3)
    path = write_parquet(tmp_path / "mb" / "train-00000-of-00001.parquet", table, MAGICBRUSH, hf=True)
    out, manifest = build(tmp_path, "magicbrush", path.parent)
    sessions = Counter(r["img_id"] for r in table)
    chains = sum(n - 1 for n in sessions.values())
    assert manifest["rows"] == len(table) + chains
    got = {r["source_key"]: r for r in rows(out)}
    img_id, n = next((k, v) for k, v in sessions.items() if v >= 2)
    chain = got[f"{img_id}#chain1-{n}"]
    turns = [got[f"{img_id}#{k}"] for k in range(1, n + 1)]
    assert chain["input_images"][0]["bytes"] == turns[0]["input_images"][0]["bytes"]
    assert chain["output_image"]["bytes"] == turns[-1]["output_image"]["bytes"]
    texts = [t["instruction"].removeprefix("<img><|image_1|></img> ") for t in turns]
    assert chain["instruction"] == "<img><|image_1|></img> " + " ".join(texts)
    # the chain's mask is the union of the turns' masks
    union = np.logical_or.reduce([decode_mask(json.loads(t["meta"])["change_mask"]) for t in turns])
    assert (decode_mask(json.loads(chain["meta"])["change_mask"]) == union).all()
    out2, manifest2 = build(tmp_path / "nochain", "magicbrush", path.parent, "--set", "source.options.chains=false")
    assert manifest2["rows"] == len(table)


def test_magicbrush_missing_turn_counts_incomplete_chain(tmp_path):
    full = magicbrush_rows(sessions=3)
    gaps = sum(1 for n in Counter(r["img_id"] for r in full).values() if n >= 3)  # turn 3 without turn 2
    assert gaps >= 1
    table = [r for r in full if r["turn_index"] != 2]
    path = write_parquet(tmp_path / "mb.parquet", table, MAGICBRUSH)
    src = make_source(SourceConfig(format="magicbrush", path=str(path)))
    ctx = Context()
    samples = [s for part in src.partitions() for s in src.read(part, ctx)]
    assert all(s.meta["edit_kind"] == "turn" for s in samples) and len(samples) == len(table)
    assert ctx.reject_counts["chain_incomplete"] == gaps


def test_corrupt_image_and_missing_column(tmp_path, pairs):
    rows_ = ip2p_rows(pairs[:2])
    rows_[1]["original_image"] = {"bytes": b"\x89PNG\r\n\x1a\n not really", "path": "x.png"}
    path = write_parquet(tmp_path / "c" / "a.parquet", rows_, IP2P)
    out, manifest = build(tmp_path, "instructpix2pix", path)
    assert manifest["rows"] == 1 and sum(manifest["rejects"].values()) == 1
    table = pq.read_table(path).drop_columns(["edit_prompt"])
    bad = tmp_path / "bad.parquet"
    pq.write_table(table, bad)
    result = cli("build", "--task", "image-edit", "--format", "instructpix2pix", "--source", str(bad),
                 "-o", str(tmp_path / "o2"), "-q")
    assert result.exit_code == 2
    line, = result.stderr.strip().splitlines()
    assert str(bad) in line and "missing column 'edit_prompt'" in line


def _png(data: bytes, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path.name


def test_seed_data_edit_multi_and_single_turn(tmp_path, pairs):
    images = tmp_path / "images"
    a, b, c = pairs[0], pairs[1], pairs[2]
    for name, data in (("s0.png", a["before"]), ("t0.png", a["after"]), ("s1.png", b["before"]),
                       ("t1.png", b["after"])):
        _png(data, images / "multi" / name)
    # turn 2 edits turn 1's result: use a's after as turn-1 output and compose a second visible change
    second = np.asarray(Image.open(io.BytesIO(a["after"]))).copy()
    second[:10, :10] = [255, 0, 0]
    buf = io.BytesIO()
    Image.fromarray(second).save(buf, "PNG")
    _png(buf.getvalue(), images / "multi" / "t0b.png")
    ann = tmp_path / "annotations"
    ann.mkdir()
    (ann / "multi.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"source_image": "multi/s0.png", "instruction_1": a["instruction"], "inverse_instruction_1": "Undo it.",
         "edit_image_1": "multi/t0.png", "instruction_2": "Paint the top left corner red",
         "inverse_instruction_2": "Undo.", "edit_image_2": "multi/t0b.png"},
        {"source_image": "multi/missing.png", "instruction_1": "x", "edit_image_1": "multi/t1.png"},
    ]) + "\nnot json\n")
    (ann / "single.jsonl").write_text(json.dumps({"source_image": "multi/s1.png", "target_image": "multi/t1.png",
                                                  "instruction": b["instruction"]}) + "\n")
    out = tmp_path / "out"
    result = cli("build", "--task", "image-edit", "--format", "seed_data_edit", "--source", str(ann), "--images",
                 str(images), "-o", str(out), "-q")
    assert result.exit_code == 0, result.output
    manifest = validate(out)
    kinds = Counter(json.loads(r["meta"])["edit_kind"] for r in rows(out))
    assert kinds == {"turn": 2, "chain": 1, "single": 1}
    assert manifest["rejects"] == {"image_missing": 1, "bad_json": 1}
    chain = next(r for r in rows(out) if json.loads(r["meta"])["edit_kind"] == "chain")
    assert chain["instruction"].endswith(f"{a['instruction']} Paint the top left corner red.")
    assert c  # a third pair stays unused: fixtures are shared
