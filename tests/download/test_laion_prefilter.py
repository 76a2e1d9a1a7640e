"""LAION download mode filters on the metadata before any fetch; filters that are off need no column."""
from __future__ import annotations

import json

import pyarrow as pa
import pytest

from helpers_curate import cli, rejects, rows, validate
from realformat import LAION_V1, scene_jpeg, write_parquet

from .loopback import LoopbackServer
from .test_laion_download import download_recipe

DOWNLOADER = '{allow_networks: ["127.0.0.0/8"], timeout: 2.0, retries: 0, concurrency: 4}'
OFF = ["--set", "params.min_aesthetic=null", "--set", "params.max_punsafe=null", "--set", "params.max_pwatermark=null"]


@pytest.fixture()
def server():
    with LoopbackServer({f"/img/{i}.jpg": scene_jpeg(20 + i) for i in range(12)}) as s:
        yield s


def recipe(tmp_path, meta) -> str:
    return download_recipe(tmp_path / "r.yaml", meta, DOWNLOADER, "    rows_per_partition: 4\n")


def test_rows_the_metadata_rules_out_are_never_fetched(tmp_path, monkeypatch, server):
    monkeypatch.setenv("X2I_CACHE", str(tmp_path / "cache"))

    def row(i, **over):
        r = {"URL": server.url(f"/img/{i}.jpg"), "TEXT": "Shapes on a background.", "WIDTH": 448.0,
             "HEIGHT": 400.0, "similarity": 0.3, "hash": i, "punsafe": 0.01, "pwatermark": 0.1, "aesthetic": 5.2}
        r.update(over)
        return r

    ruled_out = {1: {"aesthetic": float("nan")}, 2: {"aesthetic": 4.0}, 3: {"pwatermark": 0.9},
                 4: {"punsafe": 0.7}, 5: {"WIDTH": 300.0, "HEIGHT": 200.0}, 6: {"aesthetic": None}}
    table = [row(i, **ruled_out.get(i, {})) for i in range(9)]
    meta = write_parquet(tmp_path / "laion.parquet", table, LAION_V1)
    out = tmp_path / "out"
    result = cli("build", "--recipe", recipe(tmp_path, meta), "-o", str(out), "-q")
    assert result.exit_code == 0, result.output
    manifest = validate(out)
    assert manifest["rows"] == 3
    assert manifest["rejects"] == {"aesthetic_nan": 1, "aesthetic_below_min": 1, "pwatermark_above_max": 1,
                                   "punsafe_above_max": 1, "too_small": 1, "aesthetic_missing": 1}
    for i in range(9):
        assert server.hits(f"/img/{i}.jpg") == (0 if i in ruled_out else 1), i
    ledger = {json.loads(r["meta"]).get("url"): r["reason"] for r in rejects(out)}
    assert ledger[server.url("/img/5.jpg")] == "too_small"  # the URL stays in the ledger for a later look
    # With the filters off, the same rows are all fetched (the size filter still sees the decoded size).
    again = tmp_path / "again"
    result = cli("build", "--recipe", recipe(tmp_path, meta), "-o", str(again), "-q", *OFF,
                 "--set", "params.min_side=null")
    assert result.exit_code == 0, result.output
    assert validate(again)["rows"] == 9
    assert all(server.hits(f"/img/{i}.jpg") == (1 if i in ruled_out else 2) for i in range(9))


@pytest.mark.parametrize("names", [("URL", "TEXT"), ("url", "caption")])
def test_a_plain_url_caption_list_builds_with_the_score_filters_off(tmp_path, monkeypatch, server, names):
    monkeypatch.setenv("X2I_CACHE", str(tmp_path / "cache"))
    url, text = names
    schema = pa.schema([(url, pa.string()), (text, pa.string())])
    plain = [{url: server.url(f"/img/{i}.jpg"), text: f"Shapes number {i} on a background."} for i in range(5)]
    meta = write_parquet(tmp_path / "urls.parquet", plain, schema)
    out = tmp_path / "out"
    result = cli("build", "--recipe", recipe(tmp_path, meta), "-o", str(out), "-q", *OFF)
    assert result.exit_code == 0, result.output
    manifest = validate(out)
    assert manifest["rows"] == 5 and not manifest["rejects"]
    built = rows(out)
    assert all(r["aesthetic"] is None and r["clip_score"] is None for r in built)
    assert sorted(r["instruction"] for r in built) == sorted(p[text] for p in plain)

    # One filter left on: the build stops before any fetch, naming the column and the parameter.
    for param, column in (("min_aesthetic", "aesthetic"), ("max_punsafe", "punsafe")):
        off = [arg for name in ("min_aesthetic", "max_punsafe", "max_pwatermark") if name != param
               for arg in ("--set", f"params.{name}=null")]
        result = cli("build", "--recipe", recipe(tmp_path, meta), "-o", str(tmp_path / f"on-{param}"), "-q", *off)
        assert result.exit_code == 2, result.output
        assert f"'{column}" in result.output and f"params.{param}=null" in result.output
    assert all(server.hits(f"/img/{i}.jpg") == 1 for i in range(5))


def test_meta_threshold_with_no_bound_is_off_and_reads_nothing():
    from x2i.core.imageio import encode
    from x2i.core.sample import Sample
    from x2i.curation.filters import MetaThresholdParams, MetaThresholdStep
    from x2i.engine.steps import Context
    from PIL import Image

    step = MetaThresholdStep(MetaThresholdParams(field="punsafe"))
    sample = Sample("text_to_image", "a red square", encode(Image.new("RGB", (32, 32), "red")), meta={})
    ctx = Context()
    assert list(step.run([sample], ctx)) == [sample] and not ctx.rejects
