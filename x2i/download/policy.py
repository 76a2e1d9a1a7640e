"""What the downloader accepts, as pure functions: which addresses may be connected to, which bytes are an image,
and which X-Robots-Tag values forbid use (x2i.download.fetch applies them to every request and redirect hop)."""
from __future__ import annotations

import functools
import ipaddress

USER_AGENT_TOKEN = "x2i"

_MAGIC = ((b"\xff\xd8\xff", "jpeg"), (b"\x89PNG\r\n\x1a\n", "png"), (b"GIF87a", "gif"), (b"GIF89a", "gif"),
          (b"BM", "bmp"), (b"II*\x00", "tiff"), (b"MM\x00*", "tiff"))


def image_kind(data: bytes) -> str | None:
    """The image format named by the first bytes, or None when they are not a known image signature."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return next((kind for magic, kind in _MAGIC if data.startswith(magic)), None)


@functools.lru_cache(maxsize=64)
def _networks(allow_networks: tuple[str, ...]) -> tuple:
    """The allowed networks parsed once, not once per request."""
    return tuple(ipaddress.ip_network(net, strict=False) for net in allow_networks)


def address_allowed(ip: str, allow_networks: tuple[str, ...] = ()) -> bool:
    """Public unicast addresses only, plus addresses inside an explicitly allowed network."""
    return _address_allowed(ip, tuple(allow_networks))


@functools.lru_cache(maxsize=4096)
def _address_allowed(ip: str, allow_networks: tuple[str, ...]) -> bool:
    """address_allowed, remembered: a host's every URL resolves to the same few addresses, and ipaddress's
    is_global / is_private walk lists of networks each time (~15 us an address)."""
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if addr.is_multicast or addr.is_unspecified:
        return False
    if any(addr in net for net in _networks(tuple(allow_networks))):
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
