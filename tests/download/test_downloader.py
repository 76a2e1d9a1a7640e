"""The downloader against a loopback server: every failure mode yields a status and an error, never a crash."""
from __future__ import annotations

import pytest

from x2i.download.fetch import DownloadConfig, Downloader, address_allowed, image_kind, robots_disallow

from .loopback import JPEG, PNG, LoopbackServer


@pytest.fixture(scope="module")
def server():
    with LoopbackServer() as s:
        yield s


def make(**kw) -> Downloader:
    base = dict(allow_networks=("127.0.0.0/8",), timeout=1.5, retries=0, backoff=0.01, max_bytes=100_000, concurrency=4)
    base.update(kw)
    return Downloader(DownloadConfig(**base))


def test_good_images_and_generic_binary_type(server):
    d = make()
    r = d.fetch(server.url("/good.jpg"))
    assert r.ok and r.data == JPEG and r.http_status == 200 and r.content_type == "image/jpeg"
    assert d.fetch(server.url("/good.png")).data == PNG
    assert d.fetch(server.url("/octet")).ok  # application/octet-stream passes on its magic bytes
    assert d.fetch(server.url("/chunked")).data == JPEG


@pytest.mark.parametrize("path,status", [
    ("/notfound", "http_error"), ("/html", "not_image"), ("/fake-image", "not_image"), ("/big", "too_large"),
    ("/big-chunked", "too_large"), ("/truncated", "truncated"), ("/noai", "robots_disallowed"),
    ("/noai-x2i", "robots_disallowed"), ("/redirect-loop", "too_many_redirects"),
    ("/redirect-internal", "blocked_address"), ("/always-500", "http_error"),
])
def test_failures_have_a_status_and_an_error(server, path, status):
    r = make().fetch(server.url(path))
    assert r.status == status, (path, r)
    assert r.data is None and r.error


def test_slow_body_is_cut_at_the_deadline(server):
    r = make(timeout=0.4).fetch(server.url("/slow"))
    assert r.status == "timeout" and r.data is None


def test_robots_scoped_to_another_agent_is_not_ours(server):
    assert make().fetch(server.url("/noai-otherbot")).ok
    assert make(respect_robots=False).fetch(server.url("/noai")).ok


def test_redirect_followed_and_rechecked(server):
    r = make().fetch(server.url("/redirect"))
    assert r.ok and r.final_url.endswith("/good-redirected.jpg")


def test_retries_with_backoff_recover_a_flaky_server(server):
    r = make(retries=3).fetch(server.url("/flaky"))
    assert r.ok and r.attempts == 3
    before = server.hits("/notfound")
    r = make(retries=3).fetch(server.url("/notfound"))
    assert r.attempts == 1 and server.hits("/notfound") == before + 1  # a 404 is final: no retry


def test_loopback_refused_unless_allowed(server):
    r = Downloader(DownloadConfig(timeout=1.0, retries=0)).fetch(server.url("/good.jpg"))
    assert r.status == "blocked_address" and r.data is None


@pytest.mark.parametrize("url", [None, "", "ftp://example.com/a.jpg", "file:///etc/passwd", "javascript:alert(1)",
                                 "http://", "http://[::1"])
def test_invalid_urls(url):
    r = make().fetch(url)
    assert r.status in ("invalid_url", "connection_error") and r.error


def test_fetch_many_keeps_order_and_bounds(server):
    urls = [server.url(p) for p in ("/good.jpg", "/notfound", "/good.png", "/html", "/good1.jpg")] * 3
    results = list(make(concurrency=3).fetch_many(urls))
    assert [r.url for r in results] == urls
    assert [r.status for r in results[:5]] == ["success", "http_error", "success", "not_image", "success"]


def test_address_policy():
    for ip in ("127.0.0.1", "10.1.2.3", "192.168.0.1", "172.16.5.4", "169.254.169.254", "::1", "fe80::1",
               "fc00::1", "100.64.0.1", "::ffff:127.0.0.1", "0.0.0.0", "224.0.0.1", "240.0.0.1"):
        assert not address_allowed(ip), ip
    assert address_allowed("93.184.216.34") and address_allowed("2606:4700::1111")
    loop = ("127.0.0.0/8",)
    assert address_allowed("127.0.0.1", loop) and not address_allowed("169.254.169.254", loop)
    assert not address_allowed("224.0.0.1", ("224.0.0.0/4",))


def test_robots_parsing_and_magic_bytes():
    assert robots_disallow(["noindex, NoAI"], ("noai", "noimageai"))
    assert not robots_disallow(["noindex, nofollow"], ("noai", "noimageai"))
    assert not robots_disallow(["googlebot: noai"], ("noai",)) and robots_disallow(["x2i: noai"], ("noai",))
    assert image_kind(JPEG) == "jpeg" and image_kind(PNG) == "png" and image_kind(b"<html>") is None
    assert image_kind(b"RIFF\0\0\0\0WEBPVP8 ") == "webp" and image_kind(b"GIF89a...") == "gif"


def test_an_ipv6_address_is_vetted_and_connected_to_as_is():
    """The connection goes to the vetted address itself (no second lookup), IPv6 included."""
    import http.server
    import socket
    import threading

    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(PNG)))
            self.end_headers()
            self.wfile.write(PNG)

        def log_message(self, *args):
            pass

    class Server6(http.server.ThreadingHTTPServer):
        address_family = socket.AF_INET6

    try:
        httpd = Server6(("::1", 0), Handler)
    except OSError:
        pytest.skip("cannot listen on ::1")
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://[::1]:{httpd.server_address[1]}/a.png"
        assert make(allow_networks=("::1/128",)).fetch(url).data == PNG
        assert make(allow_networks=("127.0.0.0/8",)).fetch(url).status == "blocked_address"
    finally:
        httpd.shutdown()
        httpd.server_close()
