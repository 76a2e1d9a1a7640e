"""Dedup across a whole build: keep-first semantics, multi-index hashing == brute force, crash-safe post pass."""
from __future__ import annotations

import json

import numpy as np
import pytest

from helpers_curate import cli, rejects, rows, validate
from realformat import laion_cases, write_laion
from x2i.curation.dedup import Deduper, NearIndex


def brute_force(hashes: list[int], k: int) -> list[int | None]:
    kept: list[tuple[int, int]] = []
    out = []
    for i, h in enumerate(hashes):
        hit = next((j for j, v in kept if (v ^ h).bit_count() <= k), None)
        out.append(hit)
        if hit is None:
            kept.append((i, h))
    return out


@pytest.mark.parametrize("k", [0, 1, 4, 8])
def test_multi_index_hashing_equals_brute_force(k):
    rng = np.random.default_rng(k)
    base = [int(x) for x in rng.integers(0, 2**63, size=60)]
    hashes = []
    for h in base:  # clusters of near duplicates at distances 0..10 plus unrelated hashes
        hashes.append(h)
        for d in rng.integers(0, 11, size=3):
            bits = rng.choice(64, size=int(d), replace=False)
            hashes.append(h ^ int(sum(1 << int(b) for b in bits)))
    index = NearIndex(k)
    got = []
    for i, h in enumerate(hashes):
        hit = index.find(h)
        got.append(None if hit is None else hit[0])
        if hit is None:
            index.add(h, i)
    assert got == brute_force(hashes, k)
    assert sum(g is not None for g in got) > 0


def test_edits_with_the_same_input_and_different_instructions_are_not_near_duplicates():
    seen = Deduper(["sha256", "phash"], 4)
    group = ("image_edit", "in1")
    assert seen.check(group, "a", "ffff0000ffff0000", 1, group + ("make it red",)) is None
    assert seen.check(group, "b", "ffff0000ffff0001", 2, group + ("make it blue",)) is None
    assert seen.check(group, "c", "ffff0000ffff0003", 3, group + ("make it red",))[0] == "duplicate_phash"
    assert seen.check(group, "a", "0000000000000000", 4, group + ("anything",))[0] == "duplicate_sha256"


def _build(tmp_path, name, src, *extra):
    out = tmp_path / name
    result = cli("build", "--task", "text-to-image", "--source", str(src), "-o", str(out), "-q", *extra)
    return out, result


def test_post_pass_resumes_after_a_crash_mid_rewrite(tmp_path, monkeypatch):
    monkeypatch.setenv("X2I_CACHE", str(tmp_path / "cache"))
    cases = laion_cases()
    cases += [dict(c, URL=c["URL"].replace("/laion/", "/copy/"), _expect="duplicate_sha256")
              for c in cases if c["_expect"] is None]  # every kept image again, in later partitions
    _, images = write_laion(tmp_path / "src", cases, self_contained=True, per_shard=4)
    clean, result = _build(tmp_path, "clean", images)
    assert result.exit_code == 0, result.output
    m_clean = validate(clean)

    import x2i.curation.dedup as dedup

    real = dedup.rewrite_shard
    calls = []

    def crash_after_one(path, ids):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the user hits Ctrl-C while shards are being rewritten
        return real(path, ids)

    monkeypatch.setattr(dedup, "rewrite_shard", crash_after_one)
    out, result = _build(tmp_path, "crashed", images)
    assert result.exit_code != 0 and (out / "rejects" / "dedup.parquet").exists()
    assert not (out / "manifest.json").exists()
    monkeypatch.setattr(dedup, "rewrite_shard", real)
    out, result = _build(tmp_path, "crashed", images)
    assert result.exit_code == 0, result.output
    m = validate(out)
    key = lambda d: sorted((r["id"], r["output_image"]["bytes"]) for r in rows(d))  # noqa: E731
    assert key(out) == key(clean)
    assert m["rejects"] == m_clean["rejects"] and m["rows"] == m_clean["rows"]
    assert m["post_build"]["dedup"]["dropped"] == m_clean["post_build"]["dedup"]["dropped"]
    # and once more: nothing changes, nothing is rewritten
    before = {p: p.stat().st_mtime_ns for p in (out / "data").rglob("*.parquet")}
    out, result = _build(tmp_path, "crashed", images)
    assert result.exit_code == 0 and before == {p: p.stat().st_mtime_ns for p in (out / "data").rglob("*.parquet")}


def test_ledger_names_what_was_dropped_and_why(tmp_path, monkeypatch):
    monkeypatch.setenv("X2I_CACHE", str(tmp_path / "cache"))
    cases = laion_cases()
    _, images = write_laion(tmp_path / "src", cases, self_contained=True, per_shard=4)
    out, result = _build(tmp_path, "out", images)
    assert result.exit_code == 0, result.output
    dup = [r for r in rejects(out) if r["reason"] == "duplicate_sha256"]
    assert len(dup) == 1
    meta = json.loads(dup[0]["meta"])
    kept = {r["id"]: json.loads(r["meta"])["url"] for r in rows(out)}
    assert kept[meta["duplicate_of"]] == "https://example.com/laion/0.jpg"
    assert meta["url"] == "https://example.com/laion/6.jpg" and meta["id"] not in kept
    # dedup can be switched off: then both copies stay
    out2, result = _build(tmp_path, "nodedup", images, "--set", "steps=[{name: caption_clean}]")
    assert result.exit_code == 0
    assert validate(out2)["rows"] == validate(out)["rows"] + 1
