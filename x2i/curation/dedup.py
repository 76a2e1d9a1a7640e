"""Exact (sha256) and perceptual (phash) deduplication across a whole build, deterministic and executor-blind.

What counts as a duplicate: two samples of the same task whose input images are byte-identical (no inputs for
text-to-image) and whose output images are byte-identical (`duplicate_sha256`) or within `max_distance` bits of
64-bit pHash (`duplicate_phash`). Comparing within (task, inputs) keeps legitimately different samples apart:
an edit and its inverse, a MagicBrush turn and the chain ending on the same target. For samples with input
images a near duplicate must also have the same instruction (case and spacing aside): a small edit barely moves
a 64-bit pHash, so different edits of one image have perceptually close outputs by design.

Two passes, one rule ("the first occurrence in (partition, row) order is kept"):
1. during the build, `DedupStep` hashes each sample (`meta.sha256`, `meta.inputs_sha256`, the `phash` column)
   and, with `within_partition`, drops repeats inside its partition at once (so later, costlier steps such as
   CLIP scoring skip them);
2. after every partition is complete, `after_build` (a post-build hook run by x2i.engine.build on the driver, the same
   for the local and Ray executors) reads only the hash columns of all shards in (partition, row) order, sharded
   across a process pool by sha256 prefix and pHash band (x2i.curation.dedup_shards; the driver holds only the
   result), writes
   the rows to drop to `rejects/dedup.parquet` first (the plan), then rewrites only the affected shards
   atomically and records the outcome in `_progress/post-dedup.json`. A crash anywhere resumes: with a ledger
   and no outcome the plan is re-applied (rewrites are idempotent); with an outcome nothing is redone.

Near duplicates use multi-index hashing (NearIndex): the 64 bits are cut into bands probed within a small
radius, chosen so that two hashes within distance k must come close on at least one band (pigeonhole); each
hash is compared only with the few kept hashes found by those probes, not with all pairs.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections import Counter, defaultdict
from copy import deepcopy
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from x2i.curation.phash import phash
from x2i.core.config import to_dict
from x2i.core.errors import X2IError
from x2i.core.sample import Reject, Sample
from x2i.engine.manifest import PartitionRecord, records_from
from x2i.engine.shards import atomic_write_bytes, file_sha256, iter_rows, rewrite_shard, write_rejects
from x2i.engine.registry import register_step
from x2i.engine.steps import Context, Step

LEDGER = "rejects/dedup.parquet"
OUTCOME = "_progress/post-dedup.json"
HASH_BITS = 64
POOL_MIN_ROWS = 20_000  # below this a process pool costs more to start (imports per worker) than it saves


class NearIndex:
    """Kept 64-bit hashes, searchable for the first one within Hamming distance k (multi-index hashing).

    The bits are cut into m bands and each band is probed within radius r, with m * (r + 1) > k: if two hashes
    are within k, some band differs by at most r bits (pigeonhole). (m, r) minimise probes + expected
    candidates for `scale` stored hashes, so the cost per lookup stays about flat as the build grows
    (k = 4: 3 bands of ~21 bits probed at radius 1, 66 probes) instead of growing with every kept hash."""

    def __init__(self, max_distance: int, bits: int = HASH_BITS, scale: int = 10_000_000):
        self.k = max_distance
        best = None
        for m in range(1, min(bits, max_distance + 1) + 1):
            r = -(-(max_distance + 1) // m) - 1  # the smallest r with m * (r + 1) > k
            width = bits // m
            probes = m * sum(math.comb(width + 1, i) for i in range(r + 1))
            cost = probes * (1 + scale / 2 ** width)
            if best is None or cost < best[0]:
                best = (cost, m, r)
        _, bands, radius = best
        edges = [round(i * bits / bands) for i in range(bands + 1)]
        self.bands = []
        for lo, hi in zip(edges, edges[1:]):
            flips = [sum(1 << b for b in combo) for d in range(radius + 1)
                     for combo in itertools.combinations(range(hi - lo), d)]
            self.bands.append((lo, (1 << (hi - lo)) - 1, flips))
        self.tables: list[dict[int, list[int]]] = [defaultdict(list) for _ in self.bands]
        self.values: list[int] = []
        self.refs: list[Any] = []

    def find(self, value: int) -> tuple[Any, int] | None:
        """(ref, distance) of the earliest kept hash within distance k, or None."""
        best = None
        for (shift, mask, flips), table in zip(self.bands, self.tables):
            key = (value >> shift) & mask
            for flip in flips:
                for i in table.get(key ^ flip, ()):
                    d = (self.values[i] ^ value).bit_count()
                    if d <= self.k and (best is None or i < best[0]):
                        best = (i, d)
        return None if best is None else (self.refs[best[0]], best[1])

    def add(self, value: int, ref: Any) -> None:
        i = len(self.values)
        self.values.append(value)
        self.refs.append(ref)
        for (shift, mask, _), table in zip(self.bands, self.tables):
            table[(value >> shift) & mask].append(i)


class Deduper:
    """Keep-first duplicate detection over a stream, per (task, inputs) group."""

    def __init__(self, by: list[str], max_distance: int):
        self.by, self.k = by, max_distance
        self.exact: dict[tuple, Any] = {}
        self.near: dict[tuple, NearIndex] = {}

    def check(self, group: tuple, sha: str | None, phash: str | None, ref: Any,
              near_group: tuple | None = None) -> tuple[str, Any, int] | None:
        """(reason, ref of the kept original, distance) for a duplicate; otherwise remember it and return None.
        Exact matches are looked up in `group`, near ones in `near_group` (default: the same group)."""
        near_group = group if near_group is None else near_group
        if "sha256" in self.by and sha:
            hit = self.exact.get((group, sha))
            if hit is not None:
                return "duplicate_sha256", hit, 0
        value = int(phash, 16) if ("phash" in self.by and phash) else None
        if value is not None:
            index = self.near.get(near_group)
            if index is None:  # not setdefault: a NearIndex costs 0.09 ms to make, and most lookups find one
                index = self.near[near_group] = NearIndex(self.k)
            hit = index.find(value)
            if hit is not None:
                return "duplicate_phash", hit[0], hit[1]
        if "sha256" in self.by and sha:
            self.exact[(group, sha)] = ref
        if value is not None:
            self.near[near_group].add(value, ref)
        return None


def sample_hashes(sample: Sample, want_phash: bool) -> None:
    """Fill meta.sha256 (output bytes), meta.inputs_sha256 (all input bytes) and the phash column. The pHash is
    of the pixels the output image holds (the fitted ones, already at most max_side: no second decode, and the
    32x32 reduction starts from the small image); bytes are decoded again only if a step released them."""
    sample.meta["sha256"] = hashlib.sha256(sample.output_image.data).hexdigest()
    if sample.input_images:
        h = hashlib.sha256()
        for im in sample.input_images:
            h.update(hashlib.sha256(im.data).digest())
        sample.meta["inputs_sha256"] = h.hexdigest()
    if want_phash and sample.phash is None:
        sample.phash = phash(sample.output_image.array())


def _group(task: str, meta: dict[str, Any]) -> tuple:
    return task, meta.get("inputs_sha256") or ""


def _near_group(task: str, meta: dict[str, Any], instruction: str) -> tuple:
    if not meta.get("inputs_sha256"):
        return _group(task, meta)
    return task, meta["inputs_sha256"], " ".join(instruction.lower().split())


@dataclass
class DedupParams:
    by: list[str] = field(default_factory=lambda: ["sha256", "phash"])
    max_distance: int = 4  # pHash Hamming distance (of 64 bits) at or below which two images are near duplicates
    within_partition: bool = True  # drop repeats inside a partition during the build
    across_build: bool = True  # then drop repeats across partitions once all are done
    workers: int = 0  # post-build pass processes (0: one per CPU from POOL_MIN_ROWS rows, else the single pass)


@register_step("dedup")
class DedupStep(Step):
    name = "dedup"
    Params = DedupParams

    def __init__(self, params: DedupParams):
        unknown = sorted(set(params.by) - {"sha256", "phash"})
        if unknown or not params.by:
            raise X2IError(f"dedup: by must list sha256 and/or phash, got {params.by}")
        if not 0 <= params.max_distance <= 32:
            raise X2IError(f"dedup: max_distance must be in 0..32, got {params.max_distance}")
        if params.workers < 0:
            raise X2IError(f"dedup: workers must be >= 0, got {params.workers}")
        self.p = params

    def run(self, samples, ctx: Context):
        seen = Deduper(self.p.by, self.p.max_distance)
        for sample in samples:
            ok = self._guard(sample, ctx, lambda s=sample: sample_hashes(s, "phash" in self.p.by) or True)
            if ok is None:
                continue
            if self.p.within_partition:
                hit = seen.check(_group(sample.task, sample.meta), sample.meta.get("sha256"), sample.phash,
                                 (sample.id, sample.source, sample.source_key),
                                 _near_group(sample.task, sample.meta, sample.instruction))
                if hit is not None:
                    reason, (kept_id, src, key), distance = hit
                    ctx.reject(sample, reason, self.name, f"duplicate of {src}/{key} (distance {distance})",
                               meta={"url": sample.meta.get("url"), "duplicate_of": kept_id, "distance": distance})
                    continue
            yield sample

    # -- the post-build pass ---------------------------------------------------------------------------------
    def after_build(self, out: Path, records: list[PartitionRecord]) -> tuple[list[PartitionRecord], dict[str, Any]]:
        out = Path(out)
        summary = {"by": self.p.by, "max_distance": self.p.max_distance, "within_partition": self.p.within_partition,
                   "across_build": self.p.across_build}
        if not self.p.across_build:
            return records, summary
        if (out / OUTCOME).exists():
            saved = json.loads((out / OUTCOME).read_text())
            return records_from(saved["records"]), saved["summary"]
        if (out / LEDGER).exists():  # a plan from an interrupted run: apply it again
            drops = [{**json.loads(r["meta"]), "reason": r["reason"]} for r in iter_rows(out / LEDGER)]
            checked = None
        else:
            drops, checked = self._plan(out, records)
            write_rejects(out / LEDGER, [Reject(d["reason"], d["source"], d["source_key"], d["task"], self.name,
                                                d["detail"], d) for d in drops])
        updated = self._apply(out, records, drops)
        summary.update(rows_checked=checked, dropped=dict(Counter(d["reason"] for d in drops)),
                       rejects_file=LEDGER)
        atomic_write_bytes(out / OUTCOME, json.dumps({"records": to_dict(updated), "summary": summary},
                                                     indent=1).encode())
        return updated, summary

    def _plan(self, out: Path, records: list[PartitionRecord]) -> tuple[list[dict[str, Any]], int]:
        """The rows to drop, sharded across processes (x2i.curation.dedup_shards); the same list, in the same
        order, as `_plan_single` (tests/curation/test_dedup_shards.py). Below POOL_MIN_ROWS rows, unless
        `workers` is set, the single pass itself: it holds little and is faster there (bench/post_plan_bench.py:
        10,000 rows 0.12 s against 0.28 s for the sharded stages in one process), and the driver runs this while
        the pool's cores idle."""
        import os

        from x2i.curation import dedup_shards

        ordered = sorted(records, key=lambda r: r.index)
        shards = [(shard.path, rec.index) for rec in ordered for shard in rec.shards]
        rows = sum(shard.rows for rec in ordered for shard in rec.shards)
        if not self.p.workers and rows < POOL_MIN_ROWS:
            return self._plan_single(out, records)
        workers = self.p.workers or ((os.cpu_count() or 1) if rows >= POOL_MIN_ROWS else 1)
        bands = NearIndex(self.p.max_distance, scale=max(rows, 1)).bands
        return dedup_shards.plan(out, shards, self.p.by, self.p.max_distance, workers, bands)

    def _plan_single(self, out: Path, records: list[PartitionRecord]) -> tuple[list[dict[str, Any]], int]:
        """One keep-first pass on the driver over every hash: the reference `_plan` is checked against, and what
        `_plan` runs for a small build."""
        seen = Deduper(self.p.by, self.p.max_distance)
        drops, checked = [], 0
        for rec in sorted(records, key=lambda r: r.index):
            for shard in rec.shards:
                columns = ["id", "task", "instruction", "source", "source_key", "phash", "meta"]
                for row in iter_rows(out / shard.path, columns=columns, batch_rows=1024):
                    checked += 1
                    meta = json.loads(row["meta"]) if row["meta"] else {}
                    hit = seen.check(_group(row["task"], meta), meta.get("sha256"), row["phash"],
                                     (row["id"], row["source"], row["source_key"], rec.index),
                                     _near_group(row["task"], meta, row["instruction"]))
                    if hit is None:
                        continue
                    reason, (kept_id, src, key, part), distance = hit
                    drops.append({"reason": reason, "id": row["id"], "task": row["task"], "source": row["source"],
                                  "source_key": row["source_key"], "shard": shard.path, "partition": rec.index,
                                  "url": meta.get("url"), "duplicate_of": kept_id, "distance": distance,
                                  "detail": f"duplicate of {src}/{key} in partition {part} (distance {distance})"})
        return drops, checked

    @staticmethod
    def _apply(out: Path, records: list[PartitionRecord], drops: list[dict[str, Any]]) -> list[PartitionRecord]:
        by_shard: dict[str, set[str]] = defaultdict(set)
        for d in drops:
            by_shard[d["shard"]].add(d["id"])
        by_partition: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for d in drops:
            by_partition[d["partition"]].append(d)
        updated = deepcopy(records)
        for rec in updated:
            for d in by_partition.get(rec.index, []):
                rec.rows[d["task"]] = rec.rows.get(d["task"], 0) - 1
                rec.rejects[d["reason"]] = rec.rejects.get(d["reason"], 0) + 1
            rec.rows = {t: n for t, n in rec.rows.items() if n > 0}
            kept_shards = []
            for shard in rec.shards:
                path = out / shard.path
                if shard.path in by_shard:
                    rows, sha = rewrite_shard(path, by_shard[shard.path]) if path.exists() else (0, None)
                    if rows == 0:
                        continue
                    shard = replace(shard, rows=rows, bytes=path.stat().st_size, sha256=sha or file_sha256(path))
                kept_shards.append(shard)
            rec.shards = kept_shards
        return updated
