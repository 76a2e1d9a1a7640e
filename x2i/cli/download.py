"""`x2i download`: fetch the images of a URL list into img2dataset's webdataset layout, with x2i's safe downloader.

Input is a parquet file or folder with a URL column (LAION's URL/TEXT, or url/caption), or, with
`--from-rejects`, a build folder whose rejects ledger lists failed downloads (`download_*` and img2dataset
`failed_to_download` rows keep their URL): retrying failed URLs later is one command. The output is what
img2dataset writes (`{shard:05d}.tar` + sidecar parquet with status/error_message per URL + `_stats.json`), so
a build reads it as `--images` next to the LAION parquet (rows joined on URL). The run itself lives in
x2i.download.run; this module only maps options onto it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from x2i.cli.common import user_errors


@user_errors
def download_command(
    source: Path = typer.Argument(..., help="Parquet file/folder with a URL column, or a build folder with --from-rejects."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (img2dataset webdataset layout)."),
    from_rejects: bool = typer.Option(False, "--from-rejects", help="Retry the failed downloads listed in SOURCE's rejects ledger."),
    url_col: Optional[str] = typer.Option(None, "--url-col", help="URL column (default: URL or url)."),
    caption_col: Optional[str] = typer.Option(None, "--caption-col", help="Caption column (default: TEXT or caption)."),
    concurrency: int = typer.Option(16, "--concurrency", "-c", min=1, help="Requests in flight."),
    timeout: float = typer.Option(10.0, "--timeout", help="Seconds per attempt, wall clock (DNS + connect + headers + whole body)."),
    retries: int = typer.Option(2, "--retries", min=0, help="Extra attempts for retryable failures."),
    max_bytes: int = typer.Option(20 * 1024 * 1024, "--max-bytes", help="Largest body accepted."),
    host_failures: int = typer.Option(3, "--host-failures", min=0, help="Connection failures in a row after which a host's other URLs fail fast as host_unavailable (0: never)."),
    allow_network: list[str] = typer.Option([], "--allow-network", help="Non-public network to allow, e.g. 127.0.0.0/8 (repeatable)."),
    ignore_robots: bool = typer.Option(False, "--ignore-robots", help="Do not honour X-Robots-Tag noai/noimageai."),
    per_shard: int = typer.Option(1000, "--per-shard", min=1, help="URLs per output shard."),
    limit: Optional[int] = typer.Option(None, "--limit", "-n", min=0, help="Only the first N URLs."),
) -> None:
    """Download image URLs safely into an img2dataset-style output (per-URL status and error recorded)."""
    from x2i.download.fetch import DownloadConfig
    from x2i.download.run import download_to_webdataset

    config = DownloadConfig(concurrency=concurrency, timeout=timeout, retries=retries, max_bytes=max_bytes,
                            host_failures=host_failures, allow_networks=tuple(allow_network),
                            respect_robots=not ignore_robots)
    summary = download_to_webdataset(source, out, config, from_rejects=from_rejects, url_col=url_col,
                                     caption_col=caption_col, per_shard=per_shard, limit=limit)
    typer.echo(summary.line())


def register(app: typer.Typer) -> None:
    app.command("download")(download_command)
