"""One HTTP/1.1 GET over a connected socket, for the downloader (x2i.download.fetch): the request in one send,
the answer read straight off the socket, every read given the attempt's time left.

Why not http.client: the downloader needs a sliver of it (a GET, a status, a few headers, a body framed by
Content-Length, chunks or the close) and paid for the rest on every URL: the request built header by header,
the headers parsed by the email package (68 str.lower calls a URL), reads through a BufferedReader over a Python
raw stream. `python bench/e2e_parts.py --images 600` (loopback, 80 KB JPEGs, 16 threads): fetch_many 0.37 ->
0.23 CPU ms a URL, where connecting, one GET and reading to the close cost 0.16 with no checks at all.
Limits: status line and headers together at most 64 KiB and 100 fields (http.client's), a chunk-size line at
most 1 KiB; anything malformed is a ProtocolError.
"""
from __future__ import annotations

import re
import socket
import time

MAX_HEAD = 64 * 1024
MAX_FIELDS = 100
MAX_CHUNK_LINE = 1024
RECV = 65536  # under glibc's mmap threshold: each read is a heap block, not a fresh mapping
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_STATUS = re.compile(r"HTTP/1\.[0-9] ([0-9]{3})(?: (.*))?")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,15}")
_BAD_TARGET = re.compile(r"[\x00-\x20\x7f]")  # http.client's check: no whitespace or controls in the target


class ProtocolError(Exception):
    """An answer that is not HTTP/1.x as written."""


class Truncated(Exception):
    """The connection closed before the body's announced end."""

    def __init__(self, received: int):
        super().__init__(f"connection closed after {received} bytes")
        self.received = received


def left(deadline: float) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("attempt deadline passed")
    return remaining


def request_bytes(host: str, port: int, default_port: int, target: str, headers: dict[str, str]) -> bytes:
    """The GET request: Host names the host (and port when not the scheme's), as http.client writes it."""
    if _BAD_TARGET.search(target):
        raise ValueError(f"URL path can't contain control characters or spaces: {target[:100]!r}")
    try:
        name = host.encode("ascii").decode()
    except UnicodeEncodeError:
        name = host.encode("idna").decode()
    if ":" in name:  # an IPv6 literal
        name = f"[{name}]"
    if port != default_port:
        name = f"{name}:{port}"
    lines = [f"GET {target} HTTP/1.1", f"Host: {name}", *(f"{k}: {v}" for k, v in headers.items()), "", ""]
    return "\r\n".join(lines).encode("latin-1")


class Answer:
    """The status and headers of an answer, and the socket its body is still to be read from."""

    def __init__(self, sock: socket.socket, deadline: float):
        self.sock, self.deadline = sock, deadline
        self.buffer = bytearray()  # read past the headers: the body's first bytes
        self.status, self.reason = 0, ""
        self.fields: list[tuple[str, str]] = []  # (lower-case name, value) in order
        self.received = 0  # body bytes taken in so far

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.fields if k == name), None)

    def headers(self, name: str) -> list[str]:
        return [v for k, v in self.fields if k == name]

    def content_length(self) -> int | None:
        """The announced body size; None when there is none (or chunks frame the body)."""
        if "chunked" in (self.header("transfer-encoding") or "").lower():
            return None
        lengths = {v.strip() for v in self.headers("content-length")}
        if len(lengths) > 1 or any(not v.isdigit() for v in lengths):
            raise ProtocolError(f"bad Content-Length {sorted(lengths)}")
        return int(lengths.pop()) if lengths else None

    # -- reading -------------------------------------------------------------------------------------------
    def _recv(self) -> bytes:
        self.sock.settimeout(left(self.deadline))
        return self.sock.recv(RECV)

    def read_head(self) -> Answer:
        """Status line and headers; informational (1xx) answers before the real one are skipped."""
        while True:
            searched = 0
            while (end := _HEAD_END.search(self.buffer, searched)) is None:
                if len(self.buffer) > MAX_HEAD:
                    raise ProtocolError(f"status line and headers exceed {MAX_HEAD} bytes")
                searched = max(0, len(self.buffer) - 3)
                chunk = self._recv()
                if not chunk:
                    raise ProtocolError("the server closed the connection without a complete answer"
                                        if self.buffer else "the server closed the connection without an answer")
                self.buffer += chunk
            if end.start() > MAX_HEAD:
                raise ProtocolError(f"status line and headers exceed {MAX_HEAD} bytes")
            head = bytes(self.buffer[:end.start()]).decode("latin-1")
            del self.buffer[:end.end()]
            self._parse_head(head)
            if self.status >= 200:
                return self
            if self.status == 101:
                raise ProtocolError("the server switched protocols")

    def _parse_head(self, head: str) -> None:
        status_line, *lines = head.split("\n")
        match = _STATUS.fullmatch(status_line.rstrip("\r"))
        if match is None or int(match[1]) < 100:
            raise ProtocolError(f"bad status line {status_line[:100]!r}")
        self.status, self.reason, self.fields = int(match[1]), (match[2] or "").strip(), []
        for line in lines:
            line = line.rstrip("\r")
            if line[:1] in (" ", "\t") and self.fields:  # an obsolete folded continuation
                name, value = self.fields[-1]
                self.fields[-1] = (name, f"{value} {line.strip()}")
                continue
            name, sep, value = line.partition(":")
            if sep and name and name == name.strip():
                self.fields.append((name.lower(), value.strip()))
            if len(self.fields) > MAX_FIELDS:
                raise ProtocolError(f"more than {MAX_FIELDS} header fields")

    def read_body(self, max_bytes: int, hold) -> bytes:
        """The body as framed by Transfer-Encoding: chunked, else Content-Length, else the close. `hold(n)` is
        told of every n bytes taken in (the caller's memory bound; `received` counts them) and may raise to stop;
        more than `max_bytes` raises OverflowError."""
        pieces: list[bytes] = []

        def take(data: bytes) -> None:
            if self.received + len(data) > max_bytes:
                raise OverflowError(f"body exceeds {max_bytes} bytes")
            hold(len(data))
            self.received += len(data)
            pieces.append(data)

        expected = self.content_length()
        if "chunked" in (self.header("transfer-encoding") or "").lower():
            self._read_chunked(take)
        else:
            data = bytes(self.buffer[:expected] if expected is not None else self.buffer)
            self.buffer.clear()
            if data:
                take(data)
            while expected is None or self.received < expected:
                chunk = self._recv()
                if not chunk:
                    if expected is not None:
                        raise Truncated(self.received)
                    break
                take(chunk if expected is None else chunk[:expected - self.received])
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def _read_chunked(self, take) -> None:
        while True:
            line = self._line()
            size_text = line.split(b";", 1)[0].strip()
            if _HEX.fullmatch(size_text) is None:
                raise ProtocolError(f"bad chunk size {bytes(line[:40])!r}")
            size = int(size_text, 16)
            if size == 0:
                return  # trailers, if any, are not read: the connection is closed next
            while size:
                if not self.buffer and not self._fill():
                    raise Truncated(self.received)
                part = bytes(self.buffer[:size])
                del self.buffer[:size]
                size -= len(part)
                take(part)
            self._line()  # the CRLF that ends the chunk's data

    def _fill(self) -> bool:
        chunk = self._recv()
        self.buffer += chunk
        return bool(chunk)

    def _line(self) -> bytearray:
        while (end := self.buffer.find(b"\n")) < 0:
            if len(self.buffer) > MAX_CHUNK_LINE:
                raise ProtocolError(f"a chunk-size line exceeds {MAX_CHUNK_LINE} bytes")
            if not self._fill():
                raise Truncated(self.received)
        line = self.buffer[:end].rstrip(b"\r")
        del self.buffer[:end + 1]
        return line
