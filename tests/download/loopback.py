"""A local HTTP server on 127.0.0.1 serving every kind of answer the downloader must survive."""
from __future__ import annotations

import io
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image


def jpeg_bytes(color=(200, 30, 30), size=(64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def png_bytes(color=(30, 200, 30), size=(40, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


JPEG = jpeg_bytes()
PNG = png_bytes()
TRICKLE = 0.5  # seconds per byte of the trickling answers: far below any per-read timeout the tests use
BIG = jpeg_bytes(size=(64, 48)) + b"\0" * 300_000  # a JPEG header followed by padding: big but image-like


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hits: dict[str, int] = {}
    files: dict[str, bytes] = {}  # extra paths served as image/jpeg (e.g. a LAION parquet's URLs)
    lock = threading.Lock()

    def log_message(self, *args):  # keep test output clean
        pass

    def _send(self, code: int, body: bytes, ctype: str | None = "image/jpeg", headers: dict | None = None,
              length: int | None = None):
        self.send_response(code)
        if ctype:
            self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802 (http.server naming)
        path = self.path.split("?", 1)[0]
        with self.lock:
            self.hits[path] = self.hits.get(path, 0) + 1
            hit = self.hits[path]
        if path in self.files:
            return self._send(200, self.files[path])
        if path.startswith("/good") and path.endswith(".jpg"):
            return self._send(200, JPEG)
        if path == "/good.png":
            return self._send(200, PNG, "image/png")
        if path == "/octet":
            return self._send(200, JPEG, "application/octet-stream")
        if path == "/notfound":
            return self._send(404, b"<html>not found</html>", "text/html")
        if path == "/html":
            return self._send(200, b"<!doctype html><html><body>hello</body></html>", "text/html; charset=utf-8")
        if path == "/fake-image":  # says image/jpeg, serves HTML
            return self._send(200, b"<html>an error page</html>", "image/jpeg")
        if path == "/big":
            return self._send(200, BIG)
        if path == "/big-chunked":  # no Content-Length: the cap must hold while reading
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(BIG)
            self.close_connection = True
            return None
        if path == "/chunked":  # Transfer-Encoding: chunked, as many CDNs answer
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(0, len(JPEG), 700):
                part = JPEG[i:i + 700]
                self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
            return None
        if path == "/slow":  # headers at once, then the body trickles far beyond any sane deadline
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(JPEG)))
            self.end_headers()
            try:
                for i in range(len(JPEG)):
                    self.wfile.write(JPEG[i:i + 1])
                    self.wfile.flush()
                    time.sleep(0.05)
            except (BrokenPipeError, ConnectionResetError):
                pass
            return None
        if path in ("/trickle-status", "/trickle-headers"):  # 1 byte per TRICKLE seconds, for at most ~20 s
            head = b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\n"
            pad = b"X-Pad: " + b"a" * 30 + b"\r\n"
            sent_at_once = b"" if path == "/trickle-status" else head
            trickled = (head if path == "/trickle-status" else b"") + pad
            try:
                self.wfile.write(sent_at_once)
                for i in range(min(len(trickled), int(20 / TRICKLE))):
                    self.wfile.write(trickled[i:i + 1])
                    time.sleep(TRICKLE)
                self.wfile.write(f"Content-Length: {len(JPEG)}\r\nConnection: close\r\n\r\n".encode() + JPEG)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up, as it should
            self.close_connection = True
            return None
        if path == "/truncated":  # promises more bytes than it sends, then hangs up
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(JPEG) * 2))
            self.end_headers()
            self.wfile.write(JPEG)
            self.close_connection = True
            return None
        if path == "/noai":
            return self._send(200, JPEG, headers={"X-Robots-Tag": "noai, noimageai"})
        if path == "/noai-otherbot":
            return self._send(200, JPEG, headers={"X-Robots-Tag": "otherbot: noai"})
        if path == "/noai-x2i":
            return self._send(200, JPEG, headers={"X-Robots-Tag": "x2i: noimageai"})
        if path == "/redirect":
            return self._send(302, b"", None, headers={"Location": "/good-redirected.jpg"})
        if path == "/redirect-loop":
            return self._send(302, b"", None, headers={"Location": "/redirect-loop"})
        if path == "/redirect-internal":
            return self._send(302, b"", None, headers={"Location": "http://10.255.255.1/internal"})
        if path == "/flaky":  # fails twice, then works: retries must get it
            if hit <= 2:
                return self._send(503, b"busy", "text/plain")
            return self._send(200, JPEG)
        if path == "/always-500":
            return self._send(500, b"broken", "text/plain")
        return self._send(404, b"", "text/plain")


class LoopbackServer:
    def __init__(self, files: dict[str, bytes] | None = None):
        Handler.hits = {}
        Handler.files = dict(files or {})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def url(self, path: str) -> str:
        return self.base + path

    def hits(self, path: str) -> int:
        return Handler.hits.get(path, 0)

    def __enter__(self) -> "LoopbackServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released): connecting is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SilentServer:
    """Accepts connections on 127.0.0.1 and never answers: each request can only end at the client's deadline."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.sock.settimeout(0.2)  # so the accept loop sees the stop flag
        self.accepted: list[socket.socket] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.accepted.append(conn)

    def __enter__(self) -> "SilentServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(5)
        for conn in self.accepted:
            conn.close()
        self.sock.close()
