"""The post-build dedup pass sharded across processes: same answer as one keep-first pass, any number of workers.

Keep-first ("the first occurrence in (partition, row) order is kept") is sequential only along duplicate
edges, so the pass is split into:
1. read (one task per shard): the hash columns become compact arrays in a scratch folder under the build
   (64-bit blake2b keys of the exact and near groups, all 256 bits of sha256, the pHash) plus an identity
   table (two groups would merge only if their keys collided, odds about groups^2 / 2^65);
2. exact (one task per sha256 prefix): rows with the same (group, sha256), as classes;
3. near (one task per multi-index band, the bands NearIndex uses): every pair of rows in the same near group
   within `max_distance` bits that comes within the band's radius on that band; by pigeonhole the bands
   together find every such pair (vectorised: sort on (group, band key), probe each flip by binary search);
4. resolve (one task): the rows with an edge, in row order, with exactly Deduper.check's rule (an exact
   class's first kept member, else the earliest kept near neighbour, else kept), giving the rows to drop;
5. name (one task per shard holding a dropped row or its original): ids, sources and urls of those rows.
The driver holds only the list of drops; workers hold the arrays of one column set each.
"""
from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import multiprocessing
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

HASH_COLUMNS = ["id", "task", "instruction", "source", "source_key", "phash", "meta"]
SHA = ("sha0", "sha1", "sha2", "sha3")  # sha256 as four 64-bit words: exact matches compare all 256 bits
ARRAYS = ("gkey", "nkey", *SHA, "has_sha", "ph", "has_ph")
CHUNK = 1 << 18  # query rows per probe round: bounds a near task's temporary arrays
TABLE_BITS = 26  # bands up to this wide find buckets in a table of starts (512 MiB at most), wider ones by search


def key64(value: Any) -> int:
    """A stable 64-bit key of a group tuple (blake2b of its repr: the same in every process and run)."""
    return int.from_bytes(hashlib.blake2b(repr(value).encode(), digest_size=8).digest(), "little")


def group_keys(task: str, meta: dict[str, Any], instruction: str) -> tuple[int, int]:
    from x2i.curation.dedup import _group, _near_group

    return key64(_group(task, meta)), key64(_near_group(task, meta, instruction))


# -- 1. read ---------------------------------------------------------------------------------------------------
def read_shard(path: str, tmp: str, n: int) -> int:
    """One shard's hash columns -> tmp/<array>-n.npy and tmp/ident-n.parquet; returns its row count."""
    table = pq.ParquetFile(path).read(columns=HASH_COLUMNS)  # not read_table: pyarrow.dataset costs 0.1 s to import
    rows = table.num_rows
    out = {name: np.zeros(rows, dtype=np.bool_ if name.startswith("has") else np.uint64) for name in ARRAYS}
    urls = []
    for i, (task, instruction, ph, meta) in enumerate(zip(*(table.column(c).to_pylist() for c in
                                                           ("task", "instruction", "phash", "meta")))):
        meta = json.loads(meta) if meta else {}
        out["gkey"][i], out["nkey"][i] = group_keys(task, meta, instruction)
        sha = meta.get("sha256")
        if sha:
            digest = bytes.fromhex(sha).rjust(32, b"\0")
            for w, name in enumerate(SHA):
                out[name][i] = int.from_bytes(digest[8 * w:8 * w + 8], "big")
            out["has_sha"][i] = True
        if ph:
            out["ph"][i] = int(ph, 16)
            out["has_ph"][i] = True
        urls.append(meta.get("url"))
    for name, values in out.items():
        np.save(Path(tmp) / f"{name}-{n}.npy", values)
    ident = table.select(["id", "task", "source", "source_key"]).append_column("url", pa.array(urls, pa.string()))
    pq.write_table(ident, Path(tmp) / f"ident-{n}.parquet")
    return rows


def load(tmp: str, names: Iterable[str], shards: int) -> dict[str, np.ndarray]:
    """The named arrays of every shard, concatenated in row order."""
    return {name: np.concatenate([np.load(Path(tmp) / f"{name}-{n}.npy") for n in range(shards)])
            for name in names}


# -- 2. exact --------------------------------------------------------------------------------------------------
def exact_classes(tmp: str, shards: int, part: int, parts: int) -> str:
    """Rows whose sha256 starts in prefix part `part` of `parts`, grouped by (group, sha256): for each class of
    two or more rows, (row, first row of the class). Written to tmp/exact-part.npy as an (n, 2) array."""
    a = load(tmp, ("gkey", *SHA, "has_sha"), shards)
    rows = np.nonzero(a["has_sha"] & (a["sha0"] % np.uint64(parts) == part))[0]
    keys = [a[name][rows] for name in ("gkey", *SHA)]
    order = np.lexsort((rows, *keys[::-1]))  # lexsort's last key is the primary one: group, then sha words
    rows = rows[order]
    keys = [key[order] for key in keys]
    new = np.ones(len(rows), dtype=bool)
    new[1:] = np.logical_or.reduce([key[1:] != key[:-1] for key in keys]) if len(rows) > 1 else new[1:]
    starts = np.nonzero(new)[0]
    first = rows[starts][np.cumsum(new) - 1]  # the first (lowest) row of each row's class
    size = np.diff(np.append(starts, len(rows)))[np.cumsum(new) - 1]
    keep = size > 1
    path = str(Path(tmp) / f"exact-{part}.npy")
    np.save(path, np.stack([rows[keep], first[keep]], axis=1).astype(np.int64))
    return path


# -- 3. near ---------------------------------------------------------------------------------------------------
def near_edges(tmp: str, shards: int, band: int, k: int, bands: list[tuple[int, int, list[int]]]) -> str:
    """Every pair (i, j), j < i, in the same near group within k bits whose `band` keys differ in at most the
    band's radius (its flips). Written to tmp/near-band.npy as an (n, 3) array (i, j, distance)."""
    shift, mask, flips = bands[band]
    a = load(tmp, ("nkey", "ph", "has_ph"), shards)
    rows = np.nonzero(a["has_ph"])[0]
    ph = a["ph"][rows]
    gid = a["nkey"][rows]
    del a
    width = int(mask).bit_length()
    band_key = (ph >> np.uint64(shift)) & np.uint64(mask)
    # Rows sorted by band key alone (groups are compared on each candidate, with the distance): a flip's
    # bucket is then found by one look-up in a table of bucket starts (2^width entries) where the band is
    # narrow enough, else by binary search (k = 0: one 64-bit band).
    order = np.argsort(band_key, kind="stable")
    ordered = band_key[order]
    table = None
    if width <= TABLE_BITS:
        counts = np.bincount(band_key.astype(np.int64), minlength=1 << width)
        table = np.zeros((1 << width) + 1, dtype=np.int64)
        np.cumsum(counts, out=table[1:])
    found = []
    for start in range(0, len(rows), CHUNK):
        q_idx = np.arange(start, min(start + CHUNK, len(rows)))
        q_key = band_key[q_idx]
        for flip in flips:
            target = q_key ^ np.uint64(flip)
            if table is not None:
                t = target.astype(np.int64)
                lo, hi = table[t], table[t + 1]
            else:
                lo, hi = np.searchsorted(ordered, target, "left"), np.searchsorted(ordered, target, "right")
            count = hi - lo
            total = int(count.sum())
            if not total:
                continue
            qi = np.repeat(q_idx, count)
            offsets = np.repeat(lo - (np.cumsum(count) - count), count) + np.arange(total)
            cj = order[offsets]
            earlier = cj < qi
            qi, cj = qi[earlier], cj[earlier]
            dist = np.bitwise_count(ph[qi] ^ ph[cj])
            close = (dist <= k) & (gid[qi] == gid[cj])
            found.append(np.stack([rows[qi[close]], rows[cj[close]], dist[close].astype(np.int64)], axis=1))
    path = str(Path(tmp) / f"near-{band}.npy")
    np.save(path, np.concatenate(found) if found else np.zeros((0, 3), dtype=np.int64))
    return path


# -- 4. resolve ------------------------------------------------------------------------------------------------
def resolve(exact_files: list[str], near_files: list[str]) -> list[tuple[int, str, int, int]]:
    """Deduper.check's keep-first rule over the rows that have an edge, in row order: (row, reason, row of the
    kept original, distance) for each row to drop. Rows with no edge are kept and need no look."""
    classes = np.concatenate([np.load(f) for f in exact_files]) if exact_files else np.zeros((0, 2), np.int64)
    edges = np.concatenate([np.load(f) for f in near_files]) if near_files else np.zeros((0, 3), np.int64)
    edges = np.unique(edges, axis=0)  # a pair found on two bands once; sorted by (i, j): earliest j first
    cls = dict(zip(classes[:, 0].tolist(), classes[:, 1].tolist()))
    near: dict[int, list[tuple[int, int]]] = {}
    for i, j, d in edges.tolist():
        near.setdefault(i, []).append((j, d))
    kept_of_class: dict[int, int] = {}
    dropped: set[int] = set()
    drops = []
    for row in sorted(set(cls) | set(near)):
        c = cls.get(row)
        if c is not None and c in kept_of_class:
            dropped.add(row)
            drops.append((row, "duplicate_sha256", kept_of_class[c], 0))
            continue
        hit = next(((j, d) for j, d in near.get(row, ()) if j not in dropped), None)
        if hit is not None:
            dropped.add(row)
            drops.append((row, "duplicate_phash", hit[0], hit[1]))
            continue
        if c is not None:
            kept_of_class.setdefault(c, row)
    return drops


# -- 5. name ---------------------------------------------------------------------------------------------------
def identities(tmp: str, n: int, offset: int, rows: list[int]) -> dict[int, dict[str, Any]]:
    table = pq.ParquetFile(Path(tmp) / f"ident-{n}.parquet").read()
    picked = table.take(pa.array([r - offset for r in rows], pa.int64())).to_pylist()
    return dict(zip(rows, picked))


# -- the pass --------------------------------------------------------------------------------------------------
def _map(pool: cf.Executor | None, fn: Callable, calls: list[tuple]) -> list[Any]:
    if pool is None:
        return [fn(*args) for args in calls]
    return [f.result() for f in [pool.submit(fn, *args) for args in calls]]


def plan(out: Path, shards: list[tuple[str, int]], by: list[str], k: int, workers: int,
         bands: list[tuple[int, int, list[int]]]) -> tuple[list[dict[str, Any]], int]:
    """The drops of the post-build pass over `shards` ((path relative to out, partition) in row order), and the
    rows checked. `workers` processes (1: in this process); scratch files live in out/_progress/dedup-scratch."""
    if not shards:  # every row was rejected (or the source was empty): nothing to compare
        return [], 0
    tmp = out / "_progress" / "dedup-scratch"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    pool = None if workers <= 1 else cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        counts = _map(pool, read_shard, [(str(out / p), str(tmp), n) for n, (p, _) in enumerate(shards)])
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        exact = near = []
        if "sha256" in by:
            parts = max(1, workers)
            exact = _map(pool, exact_classes, [(str(tmp), len(shards), p, parts) for p in range(parts)])
        if "phash" in by:
            near = _map(pool, near_edges, [(str(tmp), len(shards), b, k, bands) for b in range(len(bands))])
        drops = _map(pool, resolve, [(exact, near)])[0]
        wanted: dict[int, set[int]] = {}
        for row, _, kept, _ in drops:
            for r in (row, kept):
                wanted.setdefault(int(np.searchsorted(offsets, r, "right") - 1), set()).add(r)
        names: dict[int, dict[str, Any]] = {}
        for found in _map(pool, identities, [(str(tmp), n, int(offsets[n]), sorted(rows))
                                              for n, rows in sorted(wanted.items())]):
            names.update(found)
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
        shutil.rmtree(tmp, ignore_errors=True)
    result = []
    for row, reason, kept, distance in drops:
        me, orig = names[row], names[kept]
        n, n_kept = (int(np.searchsorted(offsets, r, "right") - 1) for r in (row, kept))
        result.append({"reason": reason, "id": me["id"], "task": me["task"], "source": me["source"],
                       "source_key": me["source_key"], "shard": shards[n][0], "partition": shards[n][1],
                       "url": me["url"], "duplicate_of": orig["id"], "distance": distance,
                       "detail": f"duplicate of {orig['source']}/{orig['source_key']} in partition "
                                 f"{shards[n_kept][1]} (distance {distance})"})
    return result, int(offsets[-1])
