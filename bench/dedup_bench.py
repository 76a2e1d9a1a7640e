"""Near-duplicate search at scale: multi-index hashing (x2i) vs comparing every pair.

N random 64-bit pHashes with 10% planted near duplicates (1-4 bits off); keep-first search at distance <= k.
The all-pairs baseline is timed on a prefix (numpy, vectorised per row) and extrapolated quadratically.

    python bench/dedup_bench.py --n 200000 --k 4 [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from x2i.curation.dedup import NearIndex


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
    a = ap.parse_args()
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
