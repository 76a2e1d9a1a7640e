"""Downloader throughput against a loopback server, vs a plain sequential fetch loop (urllib, one at a time).

The server adds a fixed latency per response (`--latency`, default 50 ms) to stand in for the network: what
concurrency buys is overlapping those waits. With `--latency 0` it measures x2i's per-request overhead
(address checks, magic bytes, deadline-bounded reads) against urllib.

    python bench/download_bench.py --urls 400 --latency 0.05 --concurrency 8 32 64 [--json out.json]

`--dead-urls N` also times N URLs to one dead host (a closed loopback port) with the default retries and
backoff: the per-host circuit breaker should make that a few attempts, not N.
"""
from __future__ import annotations

import argparse
import io
import json
import socket
import threading
import time
import urllib.request
from pathlib import Path

from PIL import Image

from loopback import image_server
from x2i.download.fetch import DownloadConfig, Downloader


def payload(kb: int) -> bytes:
    im = Image.effect_noise((int(kb * 6), 160), 60).convert("RGB")
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def serve(body: bytes, latency: float):
    httpd = image_server(body, latency)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def sequential(urls: list[str]) -> float:
    t = time.perf_counter()
    for u in urls:
        with urllib.request.urlopen(u, timeout=10) as r:
            r.read()
    return len(urls) / (time.perf_counter() - t)


def x2i(urls: list[str], concurrency: int) -> float:
    d = Downloader(DownloadConfig(concurrency=concurrency, allow_networks=("127.0.0.0/8",), timeout=10, retries=0))
    t = time.perf_counter()
    ok = sum(r.ok for r in d.fetch_many(urls))
    rate = len(urls) / (time.perf_counter() - t)
    assert ok == len(urls), f"{len(urls) - ok} failed"
    return rate


def dead_host(n: int, concurrency: int) -> tuple[float, dict]:
    with socket.socket() as s:  # bind then release: nobody listens on this port afterwards
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    d = Downloader(DownloadConfig(concurrency=concurrency, allow_networks=("127.0.0.0/8",), timeout=10))
    t = time.perf_counter()
    statuses: dict[str, int] = {}
    for r in d.fetch_many(f"http://127.0.0.1:{port}/{i}.jpg" for i in range(n)):
        statuses[r.status] = statuses.get(r.status, 0) + 1
    return time.perf_counter() - t, statuses


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--urls", type=int, default=400)
    ap.add_argument("--latency", type=float, default=0.05)
    ap.add_argument("--kb", type=int, default=40, help="approximate image size")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[8, 32, 64])
    ap.add_argument("--dead-urls", type=int, default=0, help="also time this many URLs to one dead host")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    body = payload(a.kb)
    httpd = serve(body, a.latency)
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    urls = [f"{base}/img/{i}.jpg" for i in range(a.urls)]
    seq_n = min(len(urls), max(20, int(20 / max(a.latency, 0.001))) if a.latency else len(urls))
    results = {"urls": a.urls, "latency_s": a.latency, "bytes": len(body), "sequential_urls_per_s":
               round(sequential(urls[:seq_n]), 1)}
    print(f"plain sequential loop (urllib): {results['sequential_urls_per_s']:8.1f} URLs/s ({seq_n} URLs)")
    for c in a.concurrency:
        rate = x2i(urls, c)
        results[f"x2i_c{c}_urls_per_s"] = round(rate, 1)
        print(f"x2i downloader, concurrency {c:3d}: {rate:8.1f} URLs/s "
              f"({rate / results['sequential_urls_per_s']:.1f}x)")
    httpd.shutdown()
    if a.dead_urls:
        seconds, statuses = dead_host(a.dead_urls, a.concurrency[0])
        results["dead_host"] = {"urls": a.dead_urls, "seconds": round(seconds, 2), "statuses": statuses}
        print(f"{a.dead_urls} URLs to one dead host: {seconds:.2f}s {statuses}")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
