"""A safe URL downloader for image sources (LAION and anything else with a URL column).

Each URL is fetched with:
- http/https only; the host is resolved once, every address is checked and the connection is pinned to a vetted
  address (no second lookup, so DNS rebinding cannot swap in an internal address); private, loopback,
  link-local, multicast and reserved addresses are refused unless their network is listed in `allow_networks`
  (e.g. `127.0.0.0/8` for tests on a loopback server; an explicit, narrow allowance rather than a switch);
- redirects followed by hand (at most `max_redirects`), each hop checked like the first URL;
- one wall-clock deadline per attempt covering DNS, connect, TLS, status line, headers and body: every socket
  read gets the time left, not a fresh timeout, so a server trickling any part one byte at a time is cut off;
  a byte cap checked against Content-Length first and then while reading;
- `X-Robots-Tag: noai` / `noimageai` honoured by default (also when scoped to our user agent token), as
  img2dataset does;
- the content type must be an image (or a generic binary type) and the first bytes must be a known image
  format's magic number, so HTML error pages served with 200 never become "images";
- retries with exponential backoff for what can succeed later (timeouts, dropped connections, truncated
  bodies, HTTP 429 and 5xx); 4xx, wrong types, oversize and robots refusals are final;
- a per-host circuit breaker: after `host_failures` connection-level failures in a row (refused, timed out,
  DNS) the host's other URLs fail at once as `host_unavailable`; after `host_cooldown` seconds, one probe.

Every URL yields a `FetchResult` with a status and an error message: failures are data, recorded per URL (in a
build's rejects ledger or an img2dataset-style sidecar) so they can be retried later. `fetch_many` returns
results in input order (deterministic builds) with at most `concurrency * max_bytes` body bytes held.
"""
from __future__ import annotations

import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from x2i import __version__
from x2i.download.http1 import Answer, ProtocolError, Truncated, left, request_bytes
from x2i.download.policy import USER_AGENT_TOKEN, address_allowed, image_kind, robots_disallow
from x2i.download.run import HostBreaker, fetch_ordered

# Statuses a later attempt may turn into a success; everything else is final.
RETRYABLE = {"timeout", "connection_error", "truncated", "http_retryable"}
# Failures that say nothing answered: they count towards a host's circuit breaker.
HOST_FAILURES = {"timeout", "connection_error", "dns_error"}
GENERIC_BINARY_TYPES = {"application/octet-stream", "binary/octet-stream", "application/binary"}
_REDIRECTS = {301, 302, 303, 307, 308}


@dataclass
class DownloadConfig:
    concurrency: int = 16  # requests in flight at once
    timeout: float = 10.0  # seconds per attempt, wall clock: DNS + connect + TLS + headers + whole body
    retries: int = 2  # extra attempts after the first, for retryable failures only
    backoff: float = 0.5  # seconds before the first retry, doubled for each further one
    max_backoff: float = 10.0
    max_bytes: int = 20 * 1024 * 1024
    max_redirects: int = 5
    allow_networks: tuple[str, ...] = ()  # non-public networks allowed anyway, e.g. ("127.0.0.0/8",) in tests
    respect_robots: bool = True  # honour X-Robots-Tag directives below
    disallowed_directives: tuple[str, ...] = ("noai", "noimageai")
    user_agent: str = f"{USER_AGENT_TOKEN}/{__version__} (dataset builder; honours X-Robots-Tag noai)"
    host_failures: int = 3  # consecutive connection-level failures that open a host's breaker; 0: never
    host_cooldown: float = 60.0  # seconds an open breaker refuses a host before one probe may close it


@dataclass
class FetchResult:
    url: str
    status: str  # success | invalid_url | blocked_address | dns_error | connection_error | timeout | http_error
    #              | http_retryable | too_many_redirects | robots_disallowed | not_image | too_large | truncated
    #              | host_unavailable
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
    def __init__(self, status: str, error: str, http_status: int | None = None):
        super().__init__(error)
        self.status, self.error, self.http_status = status, error, http_status


def _resolve_within(host: str, port: int, deadline: float) -> list:
    """getaddrinfo has no timeout: run it aside and stop waiting at the deadline (the lookup thread ends itself).
    An address literal needs no lookup (AI_NUMERICHOST never asks a resolver): no thread for it."""
    try:
        ipaddress.ip_address(host)
    except ValueError:  # a name (or a legacy numeric form such as 0x7f000001): look it up aside
        pass
    else:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    box: list = []

    def lookup() -> None:
        try:
            box.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except BaseException as exc:  # handed to the caller, which re-raises what it does not expect
            box.append(exc)

    thread = threading.Thread(target=lookup, name="x2i-dns", daemon=True)
    thread.start()
    thread.join(max(0.0, deadline - time.monotonic()))
    if not box:
        raise _Failure("timeout", f"DNS lookup of {host!r} did not answer in time")
    if isinstance(box[0], socket.gaierror):
        raise _Failure("dns_error", f"cannot resolve {host!r}: {box[0]}")
    if isinstance(box[0], BaseException):
        raise box[0]
    return box[0]


def _open(ip: str, port: int, host: str, deadline: float, context: ssl.SSLContext | None) -> socket.socket:
    """A connection to the vetted address itself (create_connection would look the literal up again), TLS for
    `host` when a context is given, all within the deadline."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(left(deadline))
        sock.connect((ip, port))
        if context is not None:
            sock = context.wrap_socket(sock, server_hostname=host, do_handshake_on_connect=False)
            sock.settimeout(left(deadline))
            sock.do_handshake()  # the ssl module counts this timeout down over the whole handshake
    except BaseException:
        sock.close()
        raise
    return sock


def _host_key(url: str) -> str | None:
    try:
        parts = urlsplit(url)
        return f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}" if parts.hostname else None
    except ValueError:  # a bad port: _connect reports it
        return None


class Downloader:
    """Fetch image URLs safely; thread-safe (one connection per request, one breaker per downloader)."""

    def __init__(self, config: DownloadConfig | None = None):
        self.config = config or DownloadConfig()
        self._ssl_context: ssl.SSLContext | None = None  # made at the first https URL (loading CAs: ~16 ms)
        self._ssl_lock = threading.Lock()
        self._headers = {"User-Agent": self.config.user_agent, "Accept": "image/*", "Accept-Encoding": "identity",
                         "Connection": "close"}
        self._breaker = HostBreaker(self.config.host_failures, self.config.host_cooldown)
        self._held_lock = threading.Lock()
        self.held_bytes = 0  # body bytes read and not yet released by the caller (see fetch_many)
        self.peak_held_bytes = 0

    @property
    def _ssl(self) -> ssl.SSLContext:
        with self._ssl_lock:
            if self._ssl_context is None:
                self._ssl_context = ssl.create_default_context()
            return self._ssl_context

    def _hold(self, n: int) -> None:
        with self._held_lock:
            self.held_bytes += n
            self.peak_held_bytes = max(self.peak_held_bytes, self.held_bytes)

    # -- one URL -------------------------------------------------------------------------------------------
    def fetch(self, url: str | None) -> FetchResult:
        """Fetch one URL with retries; never raises for network or content problems."""
        result = self.fetch_held(url)
        self.release(result)
        return result

    def fetch_held(self, url: str | None) -> FetchResult:
        c = self.config
        if not isinstance(url, str) or not url.strip():
            return FetchResult(str(url), "invalid_url", error=f"url is {url!r}")
        result = FetchResult(url, "connection_error")
        for attempt in range(c.retries + 1):
            latest = self._attempt(url)
            if latest.status == "host_unavailable":  # refused without trying: no attempt made
                if attempt > 0:
                    break  # the host went down meanwhile: this URL's own failure says more
                return latest
            result = latest
            result.attempts = attempt + 1
            if result.status not in RETRYABLE or attempt == c.retries:
                break
            host = _host_key(url)
            if host and self._breaker.refusal(host, probe=False):
                break  # the host just went down for this run: keep this URL's own failure, skip the retries
            time.sleep(min(c.max_backoff, c.backoff * (2 ** attempt)))
        if result.status == "http_retryable":  # retries exhausted: report it as the HTTP error it is
            result.status = "http_error"
        return result

    def _resolve(self, host: str, port: int, deadline: float) -> str:
        addresses = list(dict.fromkeys(info[4][0] for info in _resolve_within(host, port, deadline)))
        allowed = [a for a in addresses if address_allowed(a, self.config.allow_networks)]
        # A host that resolves to any refused address is refused as a whole: mixing a public and an internal
        # address in one answer is how rebinding attacks start.
        if not allowed or len(allowed) != len(addresses):
            refused = [a for a in addresses if a not in allowed]
            raise _Failure("blocked_address", f"{host} resolves to a non-public address {refused}")
        return allowed[0]

    def _connect(self, url: str, deadline: float) -> tuple[socket.socket, bytes]:
        """A connection to the URL's vetted address and the request to send on it."""
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise _Failure("invalid_url", f"only http(s) URLs with a host are fetched, got {url[:200]!r}")
        try:
            default_port = 443 if scheme == "https" else 80
            port = parts.port or default_port
        except ValueError as exc:
            raise _Failure("invalid_url", str(exc)) from None
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        try:
            request = request_bytes(parts.hostname, port, default_port, target, self._headers)
        except (ValueError, UnicodeError) as exc:
            raise _Failure("invalid_url", str(exc)) from None
        ip = self._resolve(parts.hostname, port, deadline)
        sock = _open(ip, port, parts.hostname, deadline, self._ssl if scheme == "https" else None)
        return sock, request

    def _attempt(self, url: str) -> FetchResult:
        """One attempt, redirects included; each hop's host is checked against and reported to the breaker."""
        hop: dict = {"host": None, "reached": False}
        result = self._attempt_hops(url, hop)
        if hop["host"] is not None:
            failed = result.status in HOST_FAILURES and not hop["reached"]
            self._breaker.report(hop["host"], hop["reached"], f"{result.status}: {result.error}" if failed else None)
        return result

    def _attempt_hops(self, url: str, hop: dict) -> FetchResult:
        c = self.config
        deadline = time.monotonic() + c.timeout
        current, sock = url, None
        try:
            for _ in range(c.max_redirects + 1):
                host = _host_key(current)
                why = host and self._breaker.refusal(host)
                if why:
                    raise _Failure("host_unavailable", why)
                hop.update(host=host, reached=False)
                sock, request = self._connect(current, deadline)
                sock.settimeout(left(deadline))
                sock.sendall(request)  # since Python 3.5 the timeout bounds the whole sendall
                answer = Answer(sock, deadline).read_head()
                hop["reached"] = True
                if answer.status not in _REDIRECTS:
                    return self._read(url, current, answer)
                location = answer.header("location")
                sock.close()
                sock = None
                if not location:
                    raise _Failure("http_error", f"HTTP {answer.status} without Location", answer.status)
                self._breaker.report(host, True, None)  # this hop's host answered; the next one is judged alone
                current = urljoin(current, location)
            raise _Failure("too_many_redirects", f"more than {c.max_redirects} redirects")
        except _Failure as f:
            return FetchResult(url, f.status, http_status=f.http_status, error=f.error, final_url=current)
        except TimeoutError:  # socket.timeout is TimeoutError
            return FetchResult(url, "timeout", error=f"no complete answer within {c.timeout:g}s", final_url=current)
        except Truncated as exc:
            return FetchResult(url, "truncated", error=str(exc), final_url=current)
        except (OSError, ProtocolError, ValueError) as exc:
            return FetchResult(url, "connection_error", error=f"{type(exc).__name__}: {exc}"[:300], final_url=current)
        finally:
            if sock is not None:
                sock.close()

    def _read(self, url: str, final: str, answer: Answer) -> FetchResult:
        c = self.config
        status = answer.status
        if status == 429 or status >= 500:
            raise _Failure("http_retryable", f"HTTP {status} {answer.reason}", status)
        if status != 200:
            raise _Failure("http_error", f"HTTP {status} {answer.reason}", status)
        robots = answer.headers("x-robots-tag")
        if c.respect_robots and robots_disallow(robots, c.disallowed_directives):
            raise _Failure("robots_disallowed", "X-Robots-Tag: " + "; ".join(robots), status)
        ctype = (answer.header("content-type") or "").split(";", 1)[0].strip().lower()
        if ctype and not ctype.startswith("image/") and ctype not in GENERIC_BINARY_TYPES:
            raise _Failure("not_image", f"content type {ctype!r}", status)
        expected = answer.content_length()
        if expected is not None and expected > c.max_bytes:
            raise _Failure("too_large", f"Content-Length {expected} exceeds {c.max_bytes} bytes", status)
        try:
            try:
                data = answer.read_body(c.max_bytes, self._hold)
            except OverflowError as exc:
                raise _Failure("too_large", str(exc), status) from None
            if image_kind(data) is None:
                raise _Failure("not_image", f"body is not an image (starts with {data[:12]!r}, type {ctype!r})",
                               status)
        except BaseException:
            self._hold(-answer.received)
            raise
        return FetchResult(url, "success", data, status, None, ctype or None, final)

    # -- many URLs -----------------------------------------------------------------------------------------
    def fetch_many(self, urls: Iterable[str | None]) -> Iterator[FetchResult]:
        """Results in input order; at most `concurrency` requests and `concurrency * max_bytes` body bytes held
        (see x2i.download.run.fetch_ordered)."""
        return fetch_ordered(self, urls)

    def release(self, result: FetchResult) -> None:
        """`result`'s body is the caller's now (or garbage): stop counting it as held."""
        self._hold(-len(result.data or b""))
