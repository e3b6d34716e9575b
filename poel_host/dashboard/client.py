"""Who is asking: the client's address and whether it came over HTTPS.

Neither is taken from headers a client can write unless the direct peer is a proxy named
in ``POEL_DASHBOARD_TRUSTED_PROXIES``. Otherwise anyone could put another address in
``X-Forwarded-For`` and so slip past the sign-in limit or write a false address into the
audit log (bottle's own ``remote_addr`` believes that header from anyone).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from typing import Any

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _trusted(address: str, proxies: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in proxies)


def _from_proxy(environ: Mapping[str, Any], proxies: Sequence[Network]) -> bool:
    return bool(proxies) and _trusted(environ.get("REMOTE_ADDR") or "", proxies)


def address(environ: Mapping[str, Any], proxies: Sequence[Network]) -> str:
    """The client's address: the peer's, or behind trusted proxies the nearest address in
    ``X-Forwarded-For`` that is not itself one of them (the ones before it could be
    written by the client)."""
    peer = str(environ.get("REMOTE_ADDR") or "")
    if not _from_proxy(environ, proxies):
        return peer
    hops = [hop.strip() for hop in str(environ.get("HTTP_X_FORWARDED_FOR", "")).split(",")]
    hops = [hop for hop in hops if hop]
    for hop in reversed(hops):
        if not _trusted(hop, proxies):
            return hop[:100]
    return hops[0][:100] if hops else peer


def https(environ: Mapping[str, Any], proxies: Sequence[Network]) -> bool:
    """Whether the browser reached us over HTTPS: this server's own scheme (a WSGI server
    or the application mounting the dashboard), or ``X-Forwarded-Proto`` from a trusted
    proxy (its last value: the one the nearest proxy set)."""
    if environ.get("wsgi.url_scheme") == "https":
        return True
    if not _from_proxy(environ, proxies):
        return False
    forwarded = str(environ.get("HTTP_X_FORWARDED_PROTO", "")).split(",")[-1]
    return forwarded.strip().lower() == "https"


def limit_key(address: str) -> str:
    """What sign-in attempts are counted under: the address, or an IPv6 client's /64 (one
    client commonly holds a whole /64, and would otherwise get a fresh limit per address)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address[:100]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)
