"""The downloader's limits against real loopback servers: one deadline per attempt, a per-host circuit breaker,
and bounded memory. Every server here is on 127.0.0.1 and every wait is bounded."""
from __future__ import annotations

import socket
import ssl
import subprocess
import time
import tracemalloc

import pyarrow.parquet as pq
import pytest

from x2i.download.fetch import DownloadConfig, Downloader
from x2i.download.run import HostBreaker, write_webdataset

from .loopback import JPEG, TRICKLE, LoopbackServer, SilentServer, closed_port, jpeg_bytes

LARGE = jpeg_bytes(size=(32, 32)) + b"\0" * 1_000_000  # image-like, ~1 MB
MAX = 1_100_000


@pytest.fixture(scope="module")
def server():
    files = {f"/large/{i}.jpg": LARGE for i in range(60)} | {f"/img/{i}.jpg": jpeg_bytes((i, 9, 99)) for i in range(10)}
    with LoopbackServer(files) as s:
        yield s


def make(**kw) -> Downloader:
    base = dict(allow_networks=("127.0.0.0/8",), timeout=2.0, retries=0, backoff=0.01, max_bytes=MAX, concurrency=4)
    return Downloader(DownloadConfig(**{**base, **kw}))


# -- one deadline per attempt ---------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/trickle-status", "/trickle-headers"])
def test_trickled_status_line_or_headers_cut_at_the_deadline(server, path):
    assert TRICKLE < 2.0  # each byte comes well within a per-read timeout: only a deadline can stop this
    started = time.monotonic()
    r = make(timeout=2.0).fetch(server.url(path))
    elapsed = time.monotonic() - started
    assert r.status == "timeout" and r.data is None and r.attempts == 1, r
    assert 1.9 < elapsed < 2.0 + 1.5, elapsed


def test_hanging_dns_lookup_cut_at_the_deadline(monkeypatch):
    real = socket.getaddrinfo

    def slow(host, *args, **kwargs):  # a resolver that answers after the deadline
        time.sleep(3)
        return real("127.0.0.1", *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", slow)
    started = time.monotonic()
    r = make(timeout=1.0).fetch("http://slow-dns.invalid/a.jpg")
    assert r.status == "timeout" and "DNS" in r.error and time.monotonic() - started < 2.0, r


# -- per-host circuit breaker ---------------------------------------------------------------------------------
def test_closed_port_fails_fast_after_a_few_attempts(server):
    dead = f"http://127.0.0.1:{closed_port()}"
    urls = [f"{dead}/{i}.jpg" for i in range(200)]
    urls[::20] = [server.url(f"/img/{i}.jpg") for i in range(10)]  # another host on the same address keeps working
    started = time.monotonic()
    results = list(make(concurrency=16, retries=2, host_failures=3).fetch_many(urls))
    assert time.monotonic() - started < 5
    assert [r.url for r in results] == urls
    live = [r for r in results if "/img/" in r.url]
    assert len(live) == 10 and all(r.ok for r in live)
    dead_results = [r for r in results if "/img/" not in r.url]
    statuses = [r.status for r in dead_results]
    assert set(statuses) <= {"connection_error", "host_unavailable"}
    assert statuses.count("host_unavailable") >= 190 - 16
    skipped = next(r for r in dead_results if r.status == "host_unavailable")
    assert dead.removeprefix("http://") in skipped.error and "Connection" in skipped.error and skipped.attempts == 0


def test_silent_listener_costs_one_timeout_not_one_per_url():
    with SilentServer() as silent:
        urls = [f"{silent.base}/{i}.jpg" for i in range(200)]
        started = time.monotonic()
        results = list(make(concurrency=16, timeout=1.0, retries=2, host_failures=3).fetch_many(urls))
        elapsed = time.monotonic() - started
        connections = len(silent.accepted)
    statuses = [r.status for r in results]
    assert elapsed < 4, elapsed  # one wave of timeouts; without the breaker: 200/16 waves x 3 attempts
    assert set(statuses) == {"timeout", "host_unavailable"}
    assert statuses.count("timeout") <= 16 + 3 and connections <= 16 + 3, (statuses.count("timeout"), connections)
    assert all("timeout" in r.error for r in results if r.status == "host_unavailable")


def test_breaker_probe_after_cooldown():
    b = HostBreaker(threshold=2, cooldown=0.2)
    b.report("h:80", False, "connection_error: refused")
    assert b.refusal("h:80") is None  # one failure is not a pattern
    b.report("h:80", False, "timeout: slow")
    assert "2 connection failures" in b.refusal("h:80") and "refused" in b.refusal("h:80")
    time.sleep(0.25)
    assert b.refusal("h:80") is None  # the probe
    assert b.refusal("h:80") is not None  # while the probe runs, others still fail fast
    b.report("h:80", True, None)
    assert b.refusal("h:80") is None and b.refusal("h:80") is None
    never = HostBreaker(threshold=0, cooldown=60)
    for _ in range(10):
        never.report("h:80", False, "timeout")
    assert never.refusal("h:80") is None


# -- bounded memory -------------------------------------------------------------------------------------------
def test_fetch_many_holds_at_most_concurrency_times_max_bytes(server):
    d = make(concurrency=4)
    urls = [server.url(f"/large/{i}.jpg") for i in range(60)]
    for r in d.fetch_many(urls):
        assert r.ok and r.data == LARGE
        time.sleep(0.01)  # a consumer slower than the network: unbounded read-ahead would pile bodies up here
        assert d.held_bytes <= 4 * MAX
    assert len(LARGE) <= d.peak_held_bytes <= 4 * MAX, d.peak_held_bytes
    assert d.held_bytes == 0


def test_download_run_streams_to_the_shard_writer(server, tmp_path):
    rows = [(server.url(f"/large/{i}.jpg"), f"c{i}", {}) for i in range(30)]
    config = DownloadConfig(allow_networks=("127.0.0.0/8",), timeout=5, retries=0, max_bytes=MAX, concurrency=2)
    write_webdataset(rows[:2], tmp_path / "warm", [], config)  # first-use imports (pyarrow, pandas) are not bodies
    tracemalloc.start()
    try:
        summary = write_webdataset(rows, tmp_path / "out", [], config, per_shard=1000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert summary.statuses == {"success": 30} and summary.peak_held_bytes <= 2 * MAX
    # 30 MB of bodies went into one shard; holding them for the shard would peak above 30 MB
    assert peak < 10 * MAX, peak
    assert (tmp_path / "out" / "00000.tar").stat().st_size > 30 * len(LARGE)


def test_run_output_is_the_same_whatever_the_concurrency(server, tmp_path):
    paths = ["/img/1.jpg", "/notfound", "/large/0.jpg", "/html", "/img/2.jpg", "/big", "/img/3.jpg", "/noai"] * 3
    rows = [(server.url(p), f"caption {i}", {}) for i, p in enumerate(paths)]
    outs = []
    for n, c in enumerate((1, 8)):
        config = DownloadConfig(allow_networks=("127.0.0.0/8",), timeout=5, retries=0, max_bytes=MAX, concurrency=c)
        write_webdataset(rows, tmp_path / str(n), [], config, per_shard=5)
        outs.append({f.name: f.read_bytes() for f in sorted((tmp_path / str(n)).iterdir())})
    assert outs[0] == outs[1] and len(outs[0]) == 15  # 5 shards x (tar, parquet, stats)
    side = pq.read_table(tmp_path / "0" / "00000.parquet").to_pylist()
    assert [r["status"] for r in side] == ["success", "failed_to_download", "success", "failed_to_download",
                                           "success"]
    assert side[1]["error_message"].startswith("http_error:") and JPEG


# -- TLS: the handshake and the encrypted reads run under the same deadline -----------------------------------
@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    """(https server on 127.0.0.1, client context trusting its self-signed certificate)."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    with LoopbackServer() as s:
        s.httpd.socket = server_ctx.wrap_socket(s.httpd.socket, server_side=True)
        yield s.base.replace("http://", "https://"), ssl.create_default_context(cafile=str(cert))


def test_https_fetch_and_deadlines(tls):
    base, client_ctx = tls
    d = make(timeout=1.0)
    d._ssl_context = client_ctx  # trust the test certificate; verification itself stays on
    assert d.fetch(base + "/good.jpg").data == JPEG
    started = time.monotonic()
    assert d.fetch(base + "/slow").status == "timeout" and time.monotonic() - started < 2.5
    with SilentServer() as silent:  # accepts TCP, never answers the TLS hello
        started = time.monotonic()
        r = d.fetch(silent.base.replace("http://", "https://") + "/a.jpg")
    assert r.status == "timeout" and time.monotonic() - started < 2.5, r
    r = make().fetch(base + "/good.jpg")  # the default context does not trust a self-signed certificate
    assert r.status == "connection_error" and "CERTIFICATE" in r.error.upper(), r
