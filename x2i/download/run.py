"""Downloads over many URLs: the per-host circuit breaker, the ordered and memory-bounded window behind
`Downloader.fetch_many`, and the `x2i download` run (a URL list, or a build's rejects ledger, written as
img2dataset webdataset shards while the results arrive).

Memory: at most `concurrency * max_bytes` body bytes are held at once (partial bodies, finished bodies waiting
for their turn in input order, and the one the caller handles), whatever the input length: a URL starts only
when its worst case still fits. Shards are written record by record, so nothing waits for a shard to fill.
"""
from __future__ import annotations

import json
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:  # x2i.download.fetch imports this module: its names are only needed for annotations here
    import pyarrow as pa

    from x2i.download.fetch import DownloadConfig, Downloader, FetchResult
    from x2i.shapes.img2dataset_writer import DownloadRecord

Row = tuple[Optional[str], Optional[str], dict[str, Any]]  # url, caption, other columns kept in the sidecar


class HostBreaker:
    """Per host:port count of connection-level failures in a row; opens at `threshold` for `cooldown` seconds.

    Open, it refuses the host at once (status host_unavailable) instead of letting every URL of a dead host wait
    for its own timeout; past the cooldown one caller is let through as a probe that closes or reopens it.
    """

    def __init__(self, threshold: int, cooldown: float):
        self.threshold, self.cooldown = threshold, cooldown
        self._lock = threading.Lock()
        self._failures: dict[str, list[str]] = {}
        self._open: dict[str, tuple[float, str]] = {}  # host -> (probe allowed from, why it opened)
        self._probing: set[str] = set()

    def refusal(self, host: str, probe: bool = True) -> str | None:
        """Why `host` is refused now, or None (with probe=True, past the cooldown, the first caller passes)."""
        with self._lock:
            if host not in self._open:
                return None
            until, why = self._open[host]
            if probe and time.monotonic() >= until and host not in self._probing:
                self._probing.add(host)
                return None
            return why

    def report(self, host: str, reached: bool, failure: str | None) -> None:
        """After each attempt on `host`: reached (anything answered, even a 404), failed to connect, or neither."""
        with self._lock:
            self._probing.discard(host)
            if reached:
                self._failures.pop(host, None)
                self._open.pop(host, None)
            elif failure is not None and self.threshold > 0:
                seen = self._failures.setdefault(host, [])
                seen.append(failure[:120])
                del seen[:-self.threshold]
                if len(seen) >= self.threshold:
                    why = f"{host} unavailable: {len(seen)} connection failures in a row ({' | '.join(seen)})"
                    self._open[host] = (time.monotonic() + self.cooldown, why)


def fetch_ordered(downloader: Downloader, urls: Iterable[str | None]) -> Iterator[FetchResult]:
    """`downloader.fetch_held` over `urls` with `concurrency` threads, results in input order.

    The fetch threads take the next URL themselves as each request ends, so `concurrency` requests stay in
    flight while the caller works on a result (a window refilled only when the caller asks for the next one
    drains while it decodes and encodes: with 16 in flight and ~4 ms of work a result, the caller waited for
    downloads 1.5 s of 7 s, bench/e2e_bench.py). URLs are pulled from `urls` in the caller's thread only (the
    iterator may run pipeline steps that are not thread-safe), at most 8 * concurrency ahead of the result the
    caller holds: a fixed window, so what is pulled when never depends on timing.

    Held body bytes stay within concurrency * max_bytes: a running fetch is counted at max_bytes, a finished one
    at its size, and the result last yielded until the caller asks for the next one (then it is released; the
    caller must not keep it). A fetch starts only when its worst case still fits.
    """
    workers = max(1, int(downloader.config.concurrency))
    max_bytes = downloader.config.max_bytes
    budget, ahead = workers * max_bytes, 8 * workers
    lock = threading.Lock()
    can_start, has_result = threading.Condition(lock), threading.Condition(lock)  # fetch threads / the caller
    todo: deque[tuple[int, str | None]] = deque()  # pulled, not started
    done: dict[int, Any] = {}  # finished: a FetchResult, or the exception fetch_held raised
    state = {"running": 0, "held": 0, "stop": False}  # held: bytes of finished results not yet released

    def fetch_thread() -> None:
        while True:
            with lock:
                while not state["stop"] and not (todo and (state["running"] + 1) * max_bytes + state["held"]
                                                 <= budget):
                    can_start.wait()
                if state["stop"]:
                    return
                index, url = todo.popleft()
                state["running"] += 1
            try:
                out: Any = downloader.fetch_held(url)
            except BaseException as exc:  # noqa: BLE001 - undeclared: raised to the caller in its turn
                out = exc
            with lock:
                state["running"] -= 1
                if not isinstance(out, BaseException):
                    state["held"] += len(out.data or b"")
                done[index] = out
                has_result.notify()
                can_start.notify()  # this thread's slot is free (it takes the next URL itself if it fits)

    threads = [threading.Thread(target=fetch_thread, name=f"x2i-download-{k}", daemon=True) for k in range(workers)]
    for thread in threads:
        thread.start()
    source, pulled, given, more = iter(urls), 0, 0, True
    try:
        while True:
            while more and pulled - given < ahead:
                url = next(source, source)  # the iterator itself: a sentinel no input item can be
                if url is source:
                    more = False
                    break
                with lock:
                    todo.append((pulled, url))
                    can_start.notify()
                pulled += 1
            if given == pulled:
                return
            with lock:
                while given not in done:
                    has_result.wait()
                result = done.pop(given)
            given += 1
            if isinstance(result, BaseException):
                raise result
            try:
                yield result
            finally:
                downloader.release(result)
                with lock:
                    state["held"] -= len(result.data or b"")
                    can_start.notify()
                del result
    finally:  # also when the caller stops early: drop what has not started, wait for what has
        with lock:
            state["stop"] = True
            todo.clear()
            can_start.notify_all()
        for thread in threads:
            thread.join()
        for out in done.values():
            if not isinstance(out, BaseException):
                downloader.release(out)


# -- the `x2i download` run -----------------------------------------------------------------------------------
def parquet_schema(source: Path, url_col: str | None, caption_col: str | None):
    """(files, url column, caption column, [(other column, type)]) of a URL list in parquet."""
    import pyarrow.parquet as pq

    from x2i.core.errors import SourceError

    files = [source] if source.is_file() else sorted(source.rglob("*.parquet"))
    if not files:
        raise SourceError(source, "no parquet files found")
    schema = pq.read_schema(files[0])
    url_col = url_col or next((c for c in ("URL", "url") if c in schema.names), None)
    caption_col = caption_col or next((c for c in ("TEXT", "caption") if c in schema.names), None)
    for f in files:
        if url_col is None or url_col not in pq.read_schema(f).names:
            raise SourceError(f, f"missing column '{url_col or 'URL'}' (give --url-col)")
    extra = [(f.name, f.type) for f in schema if f.name not in (url_col, caption_col)]
    return files, url_col, caption_col, extra


def parquet_rows(files, url_col: str, caption_col: str | None, extra, limit: int | None) -> Iterator[Row]:
    """Stream (url, caption, other columns) rows: a LAION part has millions, never all in memory."""
    import pyarrow.parquet as pq

    n = 0
    for f in files:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=4096):
            for row in batch.to_pylist():
                if limit is not None and n >= limit:
                    return
                n += 1
                yield row.get(url_col), row.get(caption_col) if caption_col else None, \
                    {name: row.get(name) for name, _ in extra}


def reject_rows(build: Path, limit: int | None) -> list[Row]:
    """The failed downloads of a build's rejects ledger, each URL once, with the reason it failed."""
    import pyarrow.parquet as pq

    from x2i.core.errors import X2IError

    files = sorted((build / "rejects").glob("*.parquet"))
    if not files:
        raise X2IError(f"{build}: no rejects ledger (rejects/*.parquet) to retry from")
    rows, seen = [], set()
    for f in files:
        for r in pq.read_table(f).to_pylist():
            failed = r["reason"].startswith("download_") or r["reason"].startswith("img2dataset_failed_to_download")
            url = json.loads(r["meta"] or "{}").get("url")
            if failed and isinstance(url, str) and url not in seen:
                seen.add(url)
                rows.append((url, None, {"x2i_reject_reason": r["reason"]}))
                if limit is not None and len(rows) >= limit:
                    return rows
    return rows


@dataclass
class DownloadSummary:
    out: Path
    total: int
    statuses: Counter
    seconds: float
    peak_held_bytes: int  # most body bytes the downloader held at once (bounded by concurrency * max_bytes)

    def line(self) -> str:
        summary = ", ".join(f"{k} {v}" for k, v in self.statuses.most_common())
        return f"downloaded {self.statuses['success']}/{self.total} URLs in {self.seconds:.1f}s to {self.out}" + \
            (f" ({summary})" if summary else "")


def download_to_webdataset(source: Path, out: Path, config: DownloadConfig, *, from_rejects: bool = False,
                           url_col: str | None = None, caption_col: str | None = None, per_shard: int = 1000,
                           limit: int | None = None) -> DownloadSummary:
    """Download the URLs of a parquet URL list (or of a build's rejects ledger) into img2dataset's layout."""
    from x2i.core.errors import X2IError

    if out.exists() and any(out.iterdir()):
        raise X2IError(f"{out} exists and is not empty; choose another --out")
    if from_rejects:
        import pyarrow as pa

        rows: Iterable[Row] = reject_rows(source, limit)
        extra = [("x2i_reject_reason", pa.string())]
    else:
        files, url_col, caption_col, extra = parquet_schema(source, url_col, caption_col)
        rows = parquet_rows(files, url_col, caption_col, extra, limit)
    return write_webdataset(rows, out, extra, config, per_shard)


def write_webdataset(rows: Iterable[Row], out: Path, extra: list[tuple[str, pa.DataType]], config: DownloadConfig,
                     per_shard: int = 1000) -> DownloadSummary:
    """Fetch each row's URL and write it, in input order, to `per_shard`-record shards as the results come."""
    from x2i.download.fetch import Downloader
    from x2i.shapes.img2dataset_writer import ShardWriter

    downloader = Downloader(config)
    pending: deque[Row] = deque()  # rows whose URL went to fetch_many and whose result has not come back yet

    def urls() -> Iterator[str | None]:
        for row in rows:
            pending.append(row)
            yield row[0]

    statuses: Counter = Counter()
    started, n, writer = time.time(), 0, None
    try:
        for res in downloader.fetch_many(urls()):
            if n % per_shard == 0:
                if writer is not None:
                    writer.close()
                writer = ShardWriter(out, n // per_shard, extra, samples_per_shard=max(per_shard, 10))
            writer.add(_record(pending.popleft(), res, statuses))
            n += 1
            del res  # before asking for the next result: fetch_many counts it as ours until then
        if writer is not None:
            writer.close()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    return DownloadSummary(out, n, statuses, time.time() - started, downloader.peak_held_bytes)


def _record(row: Row, res: FetchResult, statuses: Counter) -> DownloadRecord:
    from x2i.core.imageio import ImageError, load
    from x2i.shapes.img2dataset_writer import DownloadRecord

    url, caption, additional = row
    if not res.ok:
        statuses[res.status] += 1
        return DownloadRecord(url or "", caption, None, status="failed_to_download",
                              error_message=f"{res.status}: {res.error}", additional=additional)
    try:
        image = load(res.data)
    except ImageError as exc:
        statuses[exc.reason] += 1
        return DownloadRecord(url, caption, None, status="failed_to_resize", error_message=f"{exc.reason}: {exc}",
                              additional=additional)
    statuses["success"] += 1
    return DownloadRecord(url, caption, res.data, image.width, image.height, additional=additional)
