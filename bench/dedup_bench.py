"""Near-duplicate search at scale: multi-index hashing (x2i) vs comparing every pair.

N random 64-bit pHashes with 10% planted near duplicates (1-4 bits off); keep-first search at distance <= k.
The all-pairs baseline is timed on a prefix (numpy, vectorised per row) and extrapolated quadratically.

    python bench/dedup_bench.py --n 200000 --k 4 [--json out.json]
    python bench/dedup_bench.py --sharded --n 20000000 --workers 2 [--check 1000000]

`--sharded` times the post-build pass's hash stages as after_build runs them (x2i.curation.dedup_shards: exact
classes by sha256 prefix, near pairs by band, keep-first resolution) on N synthetic rows written as one scratch
shard (each row also gets a random sha256, 1% of them copies of an earlier row's), with the driver's and the
largest worker's peak RSS. `--check N`: also run the single-driver NearIndex pass on the first N hashes and
require the same number of near duplicates. The read stage (parquet hash columns -> arrays, one task per shard)
is timed with `--read-rows`.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from x2i.curation.dedup import NearIndex


def hash_array(n: int, seed: int = 0) -> np.ndarray:
    """`hashes` vectorised (for tens of millions): 10% of rows copy an earlier row's hash with 1-4 bits off."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 2**63, size=n, dtype=np.int64).astype(np.uint64)
    planted = np.sort(rng.choice(np.arange(1, n), size=n // 10, replace=False))
    source = (rng.random(len(planted)) * planted).astype(np.int64)  # an earlier row (may itself be planted)
    flips = np.zeros(len(planted), dtype=np.uint64)
    for _ in range(4):  # 1-4 distinct bits: draw 4 bits, keep 1-4 of them (duplicates collapse, at least 1 stays)
        bit = rng.integers(0, 64, size=len(planted)).astype(np.uint64)
        use = rng.random(len(planted)) < 0.6
        flips |= np.where(use, np.uint64(1) << bit, np.uint64(0))
    flips = np.where(flips == 0, np.uint64(1) << rng.integers(0, 64, size=len(planted)).astype(np.uint64), flips)
    for start in range(0, len(planted), 1 << 16):  # in order, so chains of planted copies stay near
        sl = slice(start, start + (1 << 16))
        base[planted[sl]] = base[source[sl]] ^ flips[sl]
    return base


def sharded(n: int, k: int, workers: int, seed: int = 0, sha: bool = True) -> dict:
    import concurrent.futures as cf
    import multiprocessing
    import resource
    import shutil
    import tempfile

    from x2i.curation import dedup_shards as ds

    tmp = Path(tempfile.mkdtemp(prefix="x2i-dedup-bench-"))
    rng = np.random.default_rng(seed + 1)
    values = hash_array(n, seed)
    np.save(tmp / "ph-0.npy", values)
    del values
    np.save(tmp / "has_ph-0.npy", np.ones(n, dtype=bool))
    np.save(tmp / "has_sha-0.npy", np.full(n, sha, dtype=bool))
    for name in ("gkey", "nkey"):
        np.save(tmp / f"{name}-0.npy", np.full(n, ds.key64(("text_to_image", "")), dtype=np.uint64))
    copies = np.sort(rng.choice(np.arange(1, n), size=n // 100, replace=False))
    originals = (rng.random(len(copies)) * copies).astype(np.int64)
    for name in ds.SHA:
        words = rng.integers(0, 2**63, size=n, dtype=np.int64).astype(np.uint64)
        words[copies] = words[originals]
        np.save(tmp / f"{name}-0.npy", words)
        del words
    bands = NearIndex(k, scale=n).bands
    stages = {}
    t0 = time.perf_counter()
    with cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(abs, range(workers)))  # start the workers before timing
        t = time.perf_counter()
        exact = ds._map(pool, ds.exact_classes, [(str(tmp), 1, p, workers) for p in range(workers)])
        stages["exact_s"] = round(time.perf_counter() - t, 1)
        t = time.perf_counter()
        near = ds._map(pool, ds.near_edges, [(str(tmp), 1, b, k, bands) for b in range(len(bands))])
        stages["near_s"] = round(time.perf_counter() - t, 1)
        t = time.perf_counter()
        drops = ds._map(pool, ds.resolve, [(exact, near)])[0]
        stages["resolve_s"] = round(time.perf_counter() - t, 1)
    total = time.perf_counter() - t0
    reasons = {}
    for _, reason, _, _ in drops:
        reasons[reason] = reasons.get(reason, 0) + 1
    shutil.rmtree(tmp, ignore_errors=True)
    kib = 1024
    return {"n": n, "k": k, "workers": workers, "bands": [(lo, int(m).bit_length(), len(f)) for lo, m, f in bands],
            **stages, "seconds": round(total, 1), "rows_per_s": round(n / total), "dropped": reasons,
            "driver_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / kib),
            "largest_worker_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / kib)}


def read_stage(rows: int, workers: int, shards: int = 8) -> dict:
    """The read stage alone: `rows` synthetic hash rows in `shards` parquet files -> arrays, `workers` tasks."""
    import concurrent.futures as cf
    import json as js
    import multiprocessing
    import shutil
    import tempfile

    import pyarrow as pa
    import pyarrow.parquet as pq

    from x2i.curation import dedup_shards as ds

    tmp = Path(tempfile.mkdtemp(prefix="x2i-dedup-read-"))
    rng = np.random.default_rng(2)
    per = rows // shards
    for s in range(shards):
        ph = rng.integers(0, 2**63, size=per, dtype=np.int64)
        table = pa.table({"id": [f"{s}-{i}" for i in range(per)], "task": ["text_to_image"] * per,
                          "instruction": ["a caption of some words"] * per, "source": ["laion"] * per,
                          "source_key": [f"k{s}-{i}" for i in range(per)], "phash": [f"{v:016x}" for v in ph],
                          "meta": [js.dumps({"sha256": rng.bytes(32).hex(), "url": f"http://h/{s}/{i}.jpg",
                                             "caption": "a caption of some words", "aesthetic": 5.1})
                                   for i in range(per)]})
        pq.write_table(table, tmp / f"s{s}.parquet")
    with cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(abs, range(workers)))
        t = time.perf_counter()
        ds._map(pool, ds.read_shard, [(str(tmp / f"s{s}.parquet"), str(tmp), s) for s in range(shards)])
        secs = time.perf_counter() - t
    shutil.rmtree(tmp, ignore_errors=True)
    return {"read_rows": per * shards, "read_workers": workers, "read_s": round(secs, 1),
            "read_rows_per_s": round(per * shards / secs)}


def hashes(n: int, seed: int = 0) -> list[int]:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 2**63, size=n, dtype=np.int64).astype(np.uint64)
    for i in rng.choice(n, size=n // 10, replace=False):  # plant near duplicates of earlier hashes
        j = int(rng.integers(0, max(1, i)))
        flips = rng.choice(64, size=int(rng.integers(1, 5)), replace=False)
        base[i] = base[j] ^ np.uint64(sum(1 << int(b) for b in flips))
    return [int(v) for v in base]


def mih(values: list[int], k: int) -> tuple[float, int]:
    index = NearIndex(k)
    t = time.perf_counter()
    dups = 0
    for i, v in enumerate(values):
        if index.find(v) is None:
            index.add(v, i)
        else:
            dups += 1
    return time.perf_counter() - t, dups


def all_pairs(values: list[int], k: int) -> tuple[float, int]:
    kept = np.zeros(len(values), dtype=np.uint64)
    n_kept, dups = 0, 0
    t = time.perf_counter()
    for v in values:
        x = np.bitwise_xor(kept[:n_kept], np.uint64(v))
        if n_kept and (np.bitwise_count(x) <= k).any():
            dups += 1
        else:
            kept[n_kept] = v
            n_kept += 1
    return time.perf_counter() - t, dups


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--pairs-prefix", type=int, default=20_000)
    ap.add_argument("--json", default=None)
    ap.add_argument("--sharded", action="store_true", help="time the sharded post-build pass instead")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--check", type=int, default=0)
    ap.add_argument("--read-rows", type=int, default=0)
    a = ap.parse_args()
    if a.sharded:
        import os

        res = {"load_before": os.getloadavg()}
        if a.read_rows:
            res.update(read_stage(a.read_rows, a.workers))
        res.update(sharded(a.n, a.k, a.workers))
        if a.check:  # the single-driver NearIndex pass on the same hashes (pHash only), in this run
            secs, d = mih([int(v) for v in hash_array(a.check)], a.k)
            small = sharded(a.check, a.k, a.workers, sha=False)
            res["check"] = {"n": a.check, "single_pass_s": round(secs, 1), "single_pass_near_dups": d,
                            "sharded_s": small["seconds"],
                            "sharded_near_dups": small["dropped"].get("duplicate_phash", 0),
                            "single_over_sharded": round(secs / small["seconds"], 2)}
            assert d == res["check"]["sharded_near_dups"], res["check"]
        res["load_after"] = os.getloadavg()
        print(json.dumps(res))
        if a.json:
            Path(a.json).write_text(json.dumps(res, indent=1))
        return
    values = hashes(a.n)
    t_mih, d_mih = mih(values, a.k)
    prefix = values[: a.pairs_prefix]
    t_pairs, d_pairs = all_pairs(prefix, a.k)
    _, d_check = mih(prefix, a.k)
    assert d_pairs == d_check, (d_pairs, d_check)  # same answer on the prefix
    extrapolated = t_pairs * (a.n / len(prefix)) ** 2
    res = {"n": a.n, "k": a.k, "mih_seconds": round(t_mih, 2), "mih_hashes_per_s": round(a.n / t_mih),
           "duplicates": d_mih, "all_pairs_prefix": len(prefix), "all_pairs_prefix_seconds": round(t_pairs, 2),
           "all_pairs_extrapolated_seconds": round(extrapolated, 1)}
    print(json.dumps(res))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
