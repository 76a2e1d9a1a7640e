"""One loader consumer's deterministic walk through a mix: which stream each draw takes, which row-group units and
rows it reads, and the resolution buckets rows wait in until one fills a batch (no decoding here: loader.py turns
the rows into examples). Its whole position is a small JSON dict, so a resumed loader continues exactly.
"""
from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any

import numpy as np

from x2i.core.errors import X2IError

from .buckets import choose_bucket
from .mix import Mix

COLUMNS = ["id", "task", "instruction", "input_images", "output_image", "width", "height", "meta"]
DRAW_BLOCK = 1024


class MixSampler:
    """One consumer's deterministic walk through the mix (metadata and raw rows; no decoding)."""

    def __init__(self, mix: Mix, consumer: int, consumers: int, seed: int, batch_size: int,
                 buckets: list[tuple[int, int]], fingerprint: str):
        self.mix, self.consumer, self.consumers, self.seed = mix, consumer, consumers, seed
        self.batch_size, self.buckets, self.fingerprint = batch_size, buckets, fingerprint
        self.units = [s.units for s in mix.streams]
        self.cum = np.cumsum([s.weight for s in mix.streams])
        self.cum /= self.cum[-1]
        self._files: OrderedDict[str, Any] = OrderedDict()
        self._rows: OrderedDict[tuple[int, int], list[dict]] = OrderedDict()
        self._block: tuple[int, np.ndarray] | None = None
        self._orders: dict[int, tuple[int, np.ndarray]] = {}  # stream -> (epoch, unit permutation)
        self._row_orders: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self.state: dict[str, Any] = {"fingerprint": fingerprint, "consumer": consumer, "consumers": consumers,
                                      "draws": 0, "cursor": [[0, 0] for _ in mix.streams], "pending": {},
                                      "batches": 0, "taken": [0] * len(mix.streams), "skipped": {}}
        self.pending: dict[str, list[tuple[list[int], dict]]] = {}

    # -- the deterministic sequences ---------------------------------------------------------------------------
    def _stream_of_draw(self, i: int) -> int:
        block = i // DRAW_BLOCK
        if self._block is None or self._block[0] != block:
            self._block = (block, np.random.default_rng([self.seed, 13, self.consumer, block]).random(DRAW_BLOCK))
        return int(np.searchsorted(self.cum, self._block[1][i % DRAW_BLOCK], side="right").clip(0, len(self.cum) - 1))

    def _unit(self, s: int, m: int) -> tuple[int, int, int, int]:
        """Consumer-local unit m of stream s -> (global position, shard index, row group, rows)."""
        units = self.units[s]
        p = self.consumer + m * self.consumers
        epoch, idx = divmod(p, len(units))
        cached = self._orders.get(s)
        if cached is None or cached[0] != epoch:
            cached = self._orders[s] = (epoch, np.random.default_rng([self.seed, 11, s, epoch]).permutation(len(units)))
        return (p, *units[int(cached[1][idx])])

    def _row_order(self, s: int, p: int, n: int) -> np.ndarray:
        key = (s, p)
        if key not in self._row_orders:
            self._row_orders[key] = np.random.default_rng([self.seed, 12, s, p]).permutation(n)
            if len(self._row_orders) > 4 * len(self.units) + 8:
                self._row_orders.popitem(last=False)
        return self._row_orders[key]

    def _read_unit(self, s: int, m: int) -> list[dict]:
        key = (s, m)
        if key in self._rows:
            self._rows.move_to_end(key)
            return self._rows[key]
        import pyarrow.parquet as pq

        _, shard, group, _ = self._unit(s, m)
        path = self.mix.streams[s].shards[shard].path
        pf = self._files.get(path)
        if pf is None:
            from x2i.core.storage import open_file

            # A shard on an object store (s3://...) is read through x2i/core/storage.py, a row group at a time.
            pf = self._files[path] = pq.ParquetFile(open_file(path) if "://" in path else path)
            if len(self._files) > 32:
                self._files.popitem(last=False)
        rows = pf.read_row_group(group, columns=COLUMNS).to_pylist()
        self._rows[key] = rows
        while len(self._rows) > 2 * len(self.units) + 2:  # each stream's current unit, plus a little
            self._rows.popitem(last=False)
        return rows

    def row(self, ref: list[int]) -> dict:
        s, m, r = ref
        p, _, _, n = self._unit(s, m)
        return self._read_unit(s, m)[int(self._row_order(s, p, n)[r])]

    # -- state ------------------------------------------------------------------------------------------------
    def load_state(self, state: dict[str, Any]) -> None:
        if state.get("fingerprint") != self.fingerprint:
            raise X2IError("the saved loader position belongs to a different mix or loader geometry (datasets, "
                           "ratios, buckets or batch size changed): resume with the same mix, or start afresh")
        if (state["consumer"], state["consumers"]) != (self.consumer, self.consumers):
            raise X2IError(f"loader position of consumer {state['consumer']}/{state['consumers']} given to "
                           f"{self.consumer}/{self.consumers}: resume with the same world size and num_workers")
        self.state = json.loads(json.dumps(state))
        self.pending = {k: [(ref, self.row(ref)) for ref in refs] for k, refs in self.state["pending"].items()}

    def _snapshot(self) -> dict[str, Any]:
        self.state["pending"] = {k: [ref for ref, _ in v] for k, v in self.pending.items() if v}
        return json.loads(json.dumps(self.state))

    # -- drawing ----------------------------------------------------------------------------------------------
    def next_batch(self) -> tuple[list[tuple[list[int], int, dict, tuple[int, int]]], dict[str, Any]]:
        """The next full bucket: [(row reference, its unit's global position, raw row, bucket)] and the
        position after it."""
        st = self.state
        while True:
            s = self._stream_of_draw(st["draws"])
            st["draws"] += 1
            m, r = st["cursor"][s]
            p, _, _, n = self._unit(s, m)
            ref = [s, m, r]
            st["cursor"][s] = [m, r + 1] if r + 1 < n else [m + 1, 0]
            st["taken"][s] += 1
            row = self.row(ref)
            w, h = row.get("width"), row.get("height")
            if not (isinstance(w, int) and isinstance(h, int) and w > 0 and h > 0):
                st["skipped"]["missing_size"] = st["skipped"].get("missing_size", 0) + 1
                continue
            bucket = choose_bucket(self.buckets, w, h)
            key = f"{bucket[0]}x{bucket[1]}"
            self.pending.setdefault(key, []).append((ref, row))
            if len(self.pending[key]) >= self.batch_size:
                rows = self.pending.pop(key)
                st["batches"] += 1
                return [(ref, self._unit(ref[0], ref[1])[0], row, bucket) for ref, row in rows], self._snapshot()

    def skipped(self, reason: str) -> None:
        self.state["skipped"][reason] = self.state["skipped"].get(reason, 0) + 1
