"""The downloader's HTTP/1.1 exchange (x2i.download.http1) against a server that writes raw bytes: every framing
the protocol allows, and every malformed answer a status and an error, never a crash or a wrong body."""
from __future__ import annotations

import socket
import threading

import pytest

from x2i.download.fetch import DownloadConfig, Downloader
from x2i.download.http1 import request_bytes

from .loopback import JPEG

OK_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\n"


def _chunked(body: bytes, size: int = 500, ext: bytes = b"") -> bytes:
    parts = [f"{len(body[i:i + size]):x}".encode() + ext + b"\r\n" + body[i:i + size] + b"\r\n"
             for i in range(0, len(body), size)]
    return b"".join(parts) + b"0\r\nX-Trailer: yes\r\n\r\n"


ANSWERS = {
    "/length": OK_HEAD + f"Content-Length: {len(JPEG)}\r\n\r\n".encode() + JPEG,
    "/length-extra": OK_HEAD + f"Content-Length: {len(JPEG)}\r\n\r\n".encode() + JPEG + b"garbage after the body",
    "/close-framed": OK_HEAD + b"\r\n" + JPEG,
    "/bare-lf": b"HTTP/1.1 200 OK\nContent-Type: image/jpeg\n" + f"Content-Length: {len(JPEG)}\n\n".encode() + JPEG,
    "/http10": b"HTTP/1.0 200 OK\r\nContent-Type: image/jpeg\r\n\r\n" + JPEG,
    "/continue": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
                 + OK_HEAD + f"Content-Length: {len(JPEG)}\r\n\r\n".encode() + JPEG,
    "/folded": b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nX-Robots-Tag: nofollow,\r\n noai\r\n\r\n" + JPEG,
    "/chunked": OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + _chunked(JPEG, ext=b";name=value"),
    "/chunked-upper": OK_HEAD + b"Transfer-Encoding: Chunked\r\n\r\n" + _chunked(JPEG).replace(b"1f4", b"1F4"),
    "/chunked-cut": OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + _chunked(JPEG, 200)[:len(JPEG) // 2],
    "/chunked-bad-size": OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n+1f4\r\n" + JPEG[:500] + b"\r\n0\r\n\r\n",
    "/chunked-underscore": OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n1_f4\r\n" + JPEG[:500] + b"\r\n0\r\n\r\n",
    "/chunked-endless-line": OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + b"1" * 5000,
    "/chunked-too-big": OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + _chunked(JPEG + b"\0" * 200_000, 40_000),
    "/two-lengths": OK_HEAD + b"Content-Length: 10\r\nContent-Length: 12\r\n\r\n" + JPEG,
    "/negative-length": OK_HEAD + b"Content-Length: -5\r\n\r\n" + JPEG,
    "/cut-length": OK_HEAD + f"Content-Length: {len(JPEG) + 100}\r\n\r\n".encode() + JPEG,
    "/bad-status": b"HTTP/1.1 OK 200\r\n\r\n" + JPEG,
    "/not-http": b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
    "/status-only": b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg",
    "/nothing": b"",
    "/huge-head": b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"a" * 70_000 + b"\r\n\r\n" + JPEG,
    "/many-fields": b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-F%d: v\r\n" % i for i in range(150)) + b"\r\n" + JPEG,
    "/switch": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
    "/redirect-lower": b"HTTP/1.1 301 Moved\r\nlocation: /length\r\nContent-Length: 0\r\n\r\n",
}


class RawServer:
    """Answers each request with the bytes ANSWERS holds for its path, then closes; keeps the requests it read."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.requests: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}{path}"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                request = b""
                while b"\r\n\r\n" not in request:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    request += chunk
                self.requests.append(request)
                path = request.split(b" ")[1].decode().split("?")[0] if request.count(b" ") >= 2 else ""
                try:
                    conn.sendall(ANSWERS.get(path, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"))
                    conn.shutdown(socket.SHUT_WR)
                except OSError:
                    pass


@pytest.fixture(scope="module")
def raw():
    server = RawServer()
    yield server
    server.sock.close()


def fetch(url: str, **kw):
    config = dict(allow_networks=("127.0.0.0/8",), timeout=3.0, retries=0, max_bytes=100_000)
    config.update(kw)
    return Downloader(DownloadConfig(**config)).fetch(url)


@pytest.mark.parametrize("path", ["/length", "/length-extra", "/close-framed", "/bare-lf", "/http10", "/continue",
                                  "/chunked", "/chunked-upper", "/redirect-lower"])
def test_every_framing_gives_the_exact_body(raw, path):
    result = fetch(raw.url(path))
    assert result.ok, result
    assert result.data == JPEG and result.http_status == 200


@pytest.mark.parametrize("path,status", [
    ("/chunked-cut", "truncated"), ("/cut-length", "truncated"), ("/chunked-too-big", "too_large"),
    ("/chunked-bad-size", "connection_error"), ("/chunked-underscore", "connection_error"),
    ("/chunked-endless-line", "connection_error"), ("/two-lengths", "connection_error"),
    ("/negative-length", "connection_error"), ("/bad-status", "connection_error"), ("/not-http", "connection_error"),
    ("/status-only", "connection_error"), ("/nothing", "connection_error"), ("/huge-head", "connection_error"),
    ("/many-fields", "connection_error"), ("/switch", "connection_error"),
])
def test_malformed_answers_are_a_status_and_an_error(raw, path, status):
    result = fetch(raw.url(path))
    assert result.status == status, result
    assert result.data is None and result.error


def test_a_folded_header_is_read_whole(raw):
    result = fetch(raw.url("/folded"))
    assert result.status == "robots_disallowed" and "noai" in result.error


def test_the_request_is_one_plain_get(raw):
    raw.requests.clear()
    assert fetch(raw.url("/length?size=large&x=1")).ok
    request = raw.requests[-1]
    lines = request.split(b"\r\n")
    assert lines[0] == b"GET /length?size=large&x=1 HTTP/1.1"
    assert f"Host: 127.0.0.1:{raw.sock.getsockname()[1]}".encode() in lines
    assert b"Connection: close" in lines and b"Accept-Encoding: identity" in lines
    assert request.endswith(b"\r\n\r\n")


def test_request_host_header_and_target_checks():
    assert request_bytes("example.com", 80, 80, "/a", {}).startswith(b"GET /a HTTP/1.1\r\nHost: example.com\r\n")
    assert b"Host: example.com:8080\r\n" in request_bytes("example.com", 8080, 80, "/a", {})
    assert b"Host: [::1]:8080\r\n" in request_bytes("::1", 8080, 443, "/a", {})
    assert b"Host: xn--bcher-kva.example\r\n" in request_bytes("bücher.example", 443, 443, "/a", {})
    for target in ("/a b", "/a\r\nX-Injected: 1", "/a\x00"):
        with pytest.raises(ValueError):
            request_bytes("example.com", 80, 80, target, {})


def test_a_url_with_a_space_is_invalid_not_sent(raw):
    result = fetch(raw.url("/length") + " HTTP/1.1\r\nX-Injected: 1")
    assert result.status == "invalid_url"
