"""`x2i build --task text-to-image` on the embedded default: filters, scores, dedup, determinism, executors."""
from __future__ import annotations

import hashlib
import json
from collections import Counter

import pytest

from helpers_curate import cli, rejects, rows, validate
from x2i.shapes.embedded import EmbeddedOptions
from x2i.shapes.writers import laion_rows

EMBEDDED = {"scenes": 12, "per_shard": 5, "size": 400, "photos": False}
EMB_SET = "source.options.embedded=" + json.dumps(EMBEDDED)


def build(out, *extra):
    result = cli("build", "--task", "text-to-image", "-o", str(out), "-q", "--set", EMB_SET, *extra)
    assert result.exit_code == 0, result.output
    return validate(out)


def fingerprint(out) -> list[tuple]:
    return sorted((r["id"], r["instruction"], hashlib.sha256(r["output_image"]["bytes"]).hexdigest(), r["phash"],
                   r["aesthetic"], r["meta"]) for r in rows(out))


def test_embedded_default_matches_what_was_written(tmp_path):
    manifest = build(tmp_path / "out")
    written = laion_rows(EmbeddedOptions(**EMBEDDED))
    expected: Counter = Counter()
    for values, data, _ in written:
        if data is None:
            expected["img2dataset_failed_to_download"] += 1
        elif values["aesthetic"] <= 4.75:
            expected["aesthetic_below_min"] += 1
        elif values["pwatermark"] >= 0.5:
            expected["pwatermark_above_max"] += 1
        elif values["punsafe"] >= 0.5:
            expected["punsafe_above_max"] += 1
    expected["duplicate_sha256"] += 1  # the mirror copy
    expected["duplicate_phash"] += 1  # the re-encoded copy
    assert Counter(manifest["rejects"]) == expected
    assert manifest["rows"] == len(written) - sum(expected.values())
    got = rows(tmp_path / "out")
    assert all(r["task"] == "text_to_image" and r["input_images"] == [] for r in got)
    assert not any("/mirror/" in json.loads(r["meta"])["url"] or "/reencoded/" in json.loads(r["meta"])["url"]
                   for r in got)
    scores = manifest["scores"]["text_to_image"]
    assert scores["aesthetic"]["count"] == scores["phash"] == manifest["rows"]
    assert scores["aesthetic"]["min"] > 4.75
    ledger = [r for r in rejects(tmp_path / "out") if r["reason"].startswith("duplicate")]
    assert {json.loads(r["meta"])["url"].split("/")[-2] for r in ledger} == {"mirror", "reencoded"}


def test_same_seed_same_rows_and_resume(tmp_path, monkeypatch):
    build(tmp_path / "a")
    # a crash in the middle: partition 1 fails, the others are kept; the re-run resumes and matches
    import x2i.engine.build as b

    real = b.run_partition

    def flaky(job):
        if job.index == 1:
            raise RuntimeError("worker died")
        return real(job)

    monkeypatch.setattr(b, "run_partition", flaky)
    result = cli("build", "--task", "text-to-image", "-o", str(tmp_path / "b"), "-q", "--set", EMB_SET)
    assert result.exit_code == 2 and "partition 1" in result.stderr
    assert not (tmp_path / "b" / "manifest.json").exists()
    monkeypatch.setattr(b, "run_partition", real)
    build(tmp_path / "b")
    assert fingerprint(tmp_path / "a") == fingerprint(tmp_path / "b")


def test_filters_are_configurable(tmp_path):
    loose = build(tmp_path / "loose", "--set", "params.max_pwatermark=null", "--set", "params.min_aesthetic=null")
    strict = build(tmp_path / "strict", "--set", "params.min_aesthetic=6.0")
    assert "pwatermark_above_max" not in loose["rejects"] and "aesthetic_below_min" not in loose["rejects"]
    assert strict["rows"] < loose["rows"]
    assert strict["scores"]["text_to_image"]["aesthetic"]["min"] > 6.0


def test_ray_and_local_give_identical_rows(tmp_path):
    build(tmp_path / "local")
    manifest = build(tmp_path / "ray", "--executor", "ray", "--workers", "2")
    assert fingerprint(tmp_path / "local") == fingerprint(tmp_path / "ray")
    assert manifest["post_build"]["dedup"]["dropped"] == {"duplicate_sha256": 1, "duplicate_phash": 1}


@pytest.mark.parametrize("extra", [(), ("--set", "output.max_side=256")], ids=["as-is", "resized"])
def test_array_path_gives_the_pil_paths_dataset(tmp_path, monkeypatch, extra):
    """The builder keeps images as numpy arrays from decode to encode (`pixels = "array"`); forcing the PIL path
    gives the same rows, bytes, pHashes and rejects, images passed through and resized."""
    from x2i.builders.text_to_image import TextToImageBuilder
    from x2i.core import jpeg_turbo

    decoded = []
    real = jpeg_turbo.decode_array
    monkeypatch.setattr(jpeg_turbo, "decode_array", lambda *a: decoded.append(1) or real(*a))
    array_manifest = build(tmp_path / "array", *extra)
    assert decoded
    monkeypatch.setattr(TextToImageBuilder, "pixels", "pil")
    decoded.clear()
    pil_manifest = build(tmp_path / "pil", *extra)
    assert not decoded
    assert fingerprint(tmp_path / "array") == fingerprint(tmp_path / "pil")
    assert array_manifest["rejects"] == pil_manifest["rejects"] and array_manifest["rows"] > 0


def test_jpeg_subsampling_is_a_recipe_choice(tmp_path):
    """`output.jpeg_subsampling` reaches every re-encoded output: 4:2:0 at quality 95 where the default (auto)
    writes 4:4:4, the same rows otherwise; a value libjpeg cannot write stops the build before any work."""
    import simplejpeg

    def subsamplings(out):
        return Counter(simplejpeg.decode_jpeg_header(r["output_image"]["bytes"])[3] for r in rows(out))

    build(tmp_path / "auto", "--set", "output.max_side=256")
    build(tmp_path / "420", "--set", "output.max_side=256", "--set", "output.jpeg_subsampling=4:2:0")
    assert set(subsamplings(tmp_path / "auto")) == {"444"}
    assert set(subsamplings(tmp_path / "420")) == {"420"}
    assert [r["id"] for r in rows(tmp_path / "auto")] == [r["id"] for r in rows(tmp_path / "420")]
    for bad, says in (("output.jpeg_subsampling=4:2:2", "4:2:0"), ("output.jpeg_quality=0", "1..100")):
        result = cli("build", "--task", "text-to-image", "-o", str(tmp_path / "bad"), "-q", "--set", EMB_SET,
                     "--set", bad)
        assert result.exit_code == 2 and says in result.output, result.output
        assert not (tmp_path / "bad").exists()
