"""`x2i download`: fetch the images of a URL list into img2dataset's webdataset layout, with x2i's safe downloader.

Input is a parquet file or folder with a URL column (LAION's URL/TEXT, or url/caption), or, with
`--from-rejects`, a build folder whose rejects ledger lists failed downloads (`download_*` and img2dataset
`failed_to_download` rows keep their URL): retrying failed URLs later is one command. The output is what
img2dataset writes (`{shard:05d}.tar` + sidecar parquet with status/error_message per URL + `_stats.json`), so
a build reads it as `--images` next to the LAION parquet (rows joined on URL).
"""
from __future__ import annotations

import itertools
import json
import time
from collections import Counter
from pathlib import Path
from typing import Optional

import typer

from x2i.cli.common import fail, user_errors


def _parquet_schema(source: Path, url_col: Optional[str], caption_col: Optional[str]):
    """(files, url column, caption column, [(other column, type)]) of a URL list in parquet."""
    import pyarrow.parquet as pq

    from x2i.errors import SourceError

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


def _parquet_rows(files, url_col: str, caption_col: Optional[str], extra, limit: Optional[int]):
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


def _reject_rows(build: Path, limit: Optional[int]):
    import pyarrow.parquet as pq

    from x2i.errors import X2IError

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


@user_errors
def download_command(
    source: Path = typer.Argument(..., help="Parquet file/folder with a URL column, or a build folder with --from-rejects."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (img2dataset webdataset layout)."),
    from_rejects: bool = typer.Option(False, "--from-rejects", help="Retry the failed downloads listed in SOURCE's rejects ledger."),
    url_col: Optional[str] = typer.Option(None, "--url-col", help="URL column (default: URL or url)."),
    caption_col: Optional[str] = typer.Option(None, "--caption-col", help="Caption column (default: TEXT or caption)."),
    concurrency: int = typer.Option(16, "--concurrency", "-c", min=1, help="Requests in flight."),
    timeout: float = typer.Option(10.0, "--timeout", help="Seconds per attempt (connect + whole body)."),
    retries: int = typer.Option(2, "--retries", min=0, help="Extra attempts for retryable failures."),
    max_bytes: int = typer.Option(20 * 1024 * 1024, "--max-bytes", help="Largest body accepted."),
    allow_network: list[str] = typer.Option([], "--allow-network", help="Non-public network to allow, e.g. 127.0.0.0/8 (repeatable)."),
    ignore_robots: bool = typer.Option(False, "--ignore-robots", help="Do not honour X-Robots-Tag noai/noimageai."),
    per_shard: int = typer.Option(1000, "--per-shard", min=1, help="URLs per output shard."),
    limit: Optional[int] = typer.Option(None, "--limit", "-n", min=0, help="Only the first N URLs."),
) -> None:
    """Download image URLs safely into an img2dataset-style output (per-URL status and error recorded)."""
    from x2i.download import DownloadConfig, Downloader
    from x2i.imageio import ImageError, load
    from x2i.shapes.img2dataset_writer import DownloadRecord, write_shard

    if out.exists() and any(out.iterdir()):
        fail(f"{out} exists and is not empty; choose another --out")
    if from_rejects:
        import pyarrow as pa

        rows = iter(_reject_rows(source, limit))
        extra = [("x2i_reject_reason", pa.string())]
    else:
        files, url_col, caption_col, extra = _parquet_schema(source, url_col, caption_col)
        rows = _parquet_rows(files, url_col, caption_col, extra, limit)
    config = DownloadConfig(concurrency=concurrency, timeout=timeout, retries=retries, max_bytes=max_bytes,
                            allow_networks=tuple(allow_network), respect_robots=not ignore_robots)
    downloader = Downloader(config)
    statuses: Counter = Counter()
    started = time.time()
    total, shard = 0, 0
    while chunk := list(itertools.islice(rows, per_shard)):
        total += len(chunk)
        records = []
        for (url, caption, additional), res in zip(chunk, downloader.fetch_many([u for u, _, _ in chunk])):
            if not res.ok:
                statuses[res.status] += 1
                records.append(DownloadRecord(url or "", caption, None, status="failed_to_download",
                                              error_message=f"{res.status}: {res.error}", additional=additional))
                continue
            try:
                image = load(res.data)
            except ImageError as exc:
                statuses[exc.reason] += 1
                records.append(DownloadRecord(url, caption, None, status="failed_to_resize",
                                              error_message=f"{exc.reason}: {exc}", additional=additional))
                continue
            statuses["success"] += 1
            records.append(DownloadRecord(url, caption, res.data, image.width, image.height, additional=additional))
        write_shard(out, shard, records, extra, samples_per_shard=max(per_shard, 10))
        shard += 1
    seconds = time.time() - started
    summary = ", ".join(f"{k} {v}" for k, v in statuses.most_common())
    typer.echo(f"downloaded {statuses['success']}/{total} URLs in {seconds:.1f}s to {out}" +
               (f" ({summary})" if summary else ""))


def register(app: typer.Typer) -> None:
    app.command("download")(download_command)
