"""A safe URL downloader for image sources (LAION and anything else with a URL column).

Each URL is fetched with:
- http/https only; the host is resolved once, every address is checked and the connection is pinned to a vetted
  address (no second lookup, so DNS rebinding cannot swap in an internal address); private, loopback,
  link-local, multicast and reserved addresses are refused unless their network is listed in `allow_networks`
  (e.g. `127.0.0.0/8` for tests on a loopback server; an explicit, narrow allowance rather than a switch);
- redirects followed by hand (at most `max_redirects`), each hop checked like the first URL;
- one deadline per attempt covering connect, headers and the whole body (a server that trickles bytes is cut
  off), and a byte cap checked against Content-Length first and then while reading;
- `X-Robots-Tag: noai` / `noimageai` honoured by default (also when scoped to our user agent token), as
  img2dataset does;
- the content type must be an image (or a generic binary type) and the first bytes must be a known image
  format's magic number, so HTML error pages served with 200 never become "images";
- retries with exponential backoff for what can succeed later (timeouts, dropped connections, truncated
  bodies, HTTP 429 and 5xx); 4xx, wrong types, oversize and robots refusals are final.

Every URL yields a `FetchResult` with a status and an error message: failures are data, recorded per URL (in a
build's rejects ledger or an img2dataset-style sidecar) so they can be retried later. `fetch_many` runs a
bounded number of requests at once and returns results in input order (deterministic builds).
"""
from __future__ import annotations

import concurrent.futures as cf
import http.client
import ipaddress
import socket
import ssl
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from x2i import __version__

USER_AGENT_TOKEN = "x2i"
# Statuses a later attempt may turn into a success; everything else is final.
RETRYABLE = {"timeout", "connection_error", "truncated", "http_retryable"}
GENERIC_BINARY_TYPES = {"application/octet-stream", "binary/octet-stream", "application/binary"}
_REDIRECTS = {301, 302, 303, 307, 308}


@dataclass
class DownloadConfig:
    concurrency: int = 16  # requests in flight at once
    timeout: float = 10.0  # seconds per attempt: connect + headers + whole body
    retries: int = 2  # extra attempts after the first, for retryable failures only
    backoff: float = 0.5  # seconds before the first retry, doubled for each further one
    max_backoff: float = 10.0
    max_bytes: int = 20 * 1024 * 1024
    max_redirects: int = 5
    allow_networks: tuple[str, ...] = ()  # non-public networks allowed anyway, e.g. ("127.0.0.0/8",) in tests
    respect_robots: bool = True  # honour X-Robots-Tag directives below
    disallowed_directives: tuple[str, ...] = ("noai", "noimageai")
    user_agent: str = f"{USER_AGENT_TOKEN}/{__version__} (dataset builder; honours X-Robots-Tag noai)"


@dataclass
class FetchResult:
    url: str
    status: str  # success | invalid_url | blocked_address | dns_error | connection_error | timeout | http_error
    #              | http_retryable | too_many_redirects | robots_disallowed | not_image | too_large | truncated
    data: bytes | None = None
    http_status: int | None = None
    error: str | None = None
    content_type: str | None = None
    final_url: str | None = None
    attempts: int = 0

    @property
    def ok(self) -> bool:
        return self.status == "success"


class _Failure(Exception):
    def __init__(self, status: str, error: str, http_status: int | None = None, retry_after: float | None = None):
        super().__init__(error)
        self.status, self.error, self.http_status, self.retry_after = status, error, http_status, retry_after


def image_kind(data: bytes) -> str | None:
    """The image format named by the first bytes, or None when they are not a known image signature."""
    head = data[:16]
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:2] == b"BM":
        return "bmp"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    return None


def address_allowed(ip: str, allow_networks: tuple[str, ...] = ()) -> bool:
    """Public unicast addresses only, plus addresses inside an explicitly allowed network."""
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if addr.is_multicast or addr.is_unspecified:
        return False
    if any(addr in ipaddress.ip_network(net, strict=False) for net in allow_networks):
        return True
    return addr.is_global and not (addr.is_private or addr.is_loopback or addr.is_link_local or addr.is_reserved)


def robots_disallow(values: list[str], directives: tuple[str, ...], token: str = USER_AGENT_TOKEN) -> bool:
    """True when an X-Robots-Tag value forbids use, for all agents or scoped to `token` ("x2i: noai")."""
    for value in values:
        scope, sep, rest = value.partition(":")
        # "noai, noimageai" has no scope; "otherbot: noai" applies to that bot only.
        if sep and " " not in scope.strip() and "," not in scope:
            if scope.strip().lower() != token.lower():
                continue
            items = rest
        else:
            items = value
        if any(d.strip().lower() in directives for d in items.split(",")):
            return True
    return False


class _PinnedHTTP(http.client.HTTPConnection):
    """An HTTP connection to a pre-vetted address (the Host header still names the host)."""

    def __init__(self, host: str, port: int, ip: str, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self._ip = ip

    def connect(self) -> None:
        self.sock = socket.create_connection((self._ip, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, ip: str, timeout: float, context: ssl.SSLContext):
        super().__init__(host, port, timeout=timeout, context=context)
        self._ip = ip

    def connect(self) -> None:
        sock = socket.create_connection((self._ip, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


class Downloader:
    """Fetch image URLs safely; thread-safe (one connection per request)."""

    def __init__(self, config: DownloadConfig | None = None):
        self.config = config or DownloadConfig()
        self._ssl = ssl.create_default_context()

    # -- one URL -------------------------------------------------------------------------------------------
    def fetch(self, url: str | None) -> FetchResult:
        """Fetch one URL with retries; never raises for network or content problems."""
        c = self.config
        if not isinstance(url, str) or not url.strip():
            return FetchResult(str(url), "invalid_url", error=f"url is {url!r}")
        result = FetchResult(url, "connection_error")
        for attempt in range(c.retries + 1):
            result = self._attempt(url)
            result.attempts = attempt + 1
            if result.status not in RETRYABLE or attempt == c.retries:
                break
            delay = min(c.max_backoff, c.backoff * (2 ** attempt))
            time.sleep(delay)
        if result.status == "http_retryable":  # retries exhausted: report it as the HTTP error it is
            result.status = "http_error"
        return result

    def _resolve(self, host: str, port: int) -> str:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise _Failure("dns_error", f"cannot resolve {host!r}: {exc}") from None
        addresses = list(dict.fromkeys(info[4][0] for info in infos))
        allowed = [a for a in addresses if address_allowed(a, self.config.allow_networks)]
        # A host that resolves to any refused address is refused as a whole: mixing a public and an internal
        # address in one answer is how rebinding attacks start.
        if not allowed or len(allowed) != len(addresses):
            refused = [a for a in addresses if a not in allowed]
            raise _Failure("blocked_address", f"{host} resolves to a non-public address {refused}")
        return allowed[0]

    def _connect(self, url: str, deadline: float) -> tuple[http.client.HTTPConnection, str]:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise _Failure("invalid_url", f"only http(s) URLs with a host are fetched, got {url[:200]!r}")
        try:
            port = parts.port or (443 if scheme == "https" else 80)
        except ValueError as exc:
            raise _Failure("invalid_url", str(exc)) from None
        ip = self._resolve(parts.hostname, port)
        left = max(0.001, deadline - time.monotonic())
        if scheme == "https":
            conn: http.client.HTTPConnection = _PinnedHTTPS(parts.hostname, port, ip, left, self._ssl)
        else:
            conn = _PinnedHTTP(parts.hostname, port, ip, left)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        return conn, target

    def _attempt(self, url: str) -> FetchResult:
        c = self.config
        deadline = time.monotonic() + c.timeout
        current = url
        response = None
        conn = None
        try:
            for _hop in range(c.max_redirects + 1):
                conn, target = self._connect(current, deadline)
                conn.request("GET", target, headers={"User-Agent": c.user_agent, "Accept": "image/*",
                                                     "Accept-Encoding": "identity", "Connection": "close"})
                if conn.sock is not None:  # headers must also arrive within this attempt's deadline
                    conn.sock.settimeout(max(0.001, deadline - time.monotonic()))
                response = conn.getresponse()
                if response.status in _REDIRECTS:
                    location = response.getheader("Location")
                    conn.close()
                    if not location:
                        raise _Failure("http_error", f"HTTP {response.status} without Location", response.status)
                    current = urljoin(current, location)
                    continue
                break
            else:
                raise _Failure("too_many_redirects", f"more than {c.max_redirects} redirects")
            return self._read(url, current, response, conn, deadline)
        except _Failure as f:
            return FetchResult(url, f.status, http_status=f.http_status, error=f.error, final_url=current)
        except (socket.timeout, TimeoutError):
            return FetchResult(url, "timeout", error=f"no complete answer within {c.timeout:g}s", final_url=current)
        except http.client.IncompleteRead as exc:
            return FetchResult(url, "truncated", error=f"connection closed after {len(exc.partial)} bytes",
                               final_url=current)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            return FetchResult(url, "connection_error", error=f"{type(exc).__name__}: {exc}"[:300], final_url=current)
        finally:
            if conn is not None:
                conn.close()

    def _read(self, url: str, final: str, response: http.client.HTTPResponse, conn, deadline: float) -> FetchResult:
        c = self.config
        status = response.status
        if status == 429 or status >= 500:
            raise _Failure("http_retryable", f"HTTP {status} {response.reason}", status)
        if status != 200:
            raise _Failure("http_error", f"HTTP {status} {response.reason}", status)
        if c.respect_robots and robots_disallow(response.headers.get_all("X-Robots-Tag") or [],
                                                 c.disallowed_directives):
            raise _Failure("robots_disallowed", "X-Robots-Tag: " + "; ".join(response.headers.get_all("X-Robots-Tag")),
                           status)
        ctype = (response.getheader("Content-Type") or "").split(";", 1)[0].strip().lower()
        if ctype and not ctype.startswith("image/") and ctype not in GENERIC_BINARY_TYPES:
            raise _Failure("not_image", f"content type {ctype!r}", status)
        length = response.getheader("Content-Length")
        expected = int(length) if length and length.strip().isdigit() else None
        if expected is not None and expected > c.max_bytes:
            raise _Failure("too_large", f"Content-Length {expected} exceeds {c.max_bytes} bytes", status)
        chunks, total = [], 0
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout()
            if conn.sock is not None:
                conn.sock.settimeout(left)
            # read1 returns what one socket read gives, so a trickling server still hits the deadline check.
            chunk = response.read1(65536)
            if not chunk:
                break
            total += len(chunk)
            if total > c.max_bytes:
                raise _Failure("too_large", f"body exceeds {c.max_bytes} bytes", status)
            chunks.append(chunk)
        data = b"".join(chunks)
        if expected is not None and total < expected:
            raise _Failure("truncated", f"received {total} of {expected} bytes", status)
        if image_kind(data) is None:
            raise _Failure("not_image", f"body is not an image (starts with {data[:12]!r}, type {ctype!r})", status)
        return FetchResult(url, "success", data, status, None, ctype or None, final)

    # -- many URLs -----------------------------------------------------------------------------------------
    def fetch_many(self, urls: Iterable[str | None]) -> Iterator[FetchResult]:
        """Results in input order, at most `concurrency` requests in flight (and a bounded read-ahead)."""
        workers = max(1, int(self.config.concurrency))
        with cf.ThreadPoolExecutor(workers, thread_name_prefix="x2i-download") as pool:
            pending: deque[cf.Future] = deque()
            for url in urls:
                pending.append(pool.submit(self.fetch, url))
                if len(pending) >= 2 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
