"""Addresses: the one rule for reaching a listener from the same host. Standard library only
(``deploy/`` reads profiles with a bare Python)."""

from __future__ import annotations

WILDCARDS = frozenset({"", "0.0.0.0", "::", "[::]"})


def loopback_url(host: str, port: int | str) -> str:
    """``http://host:port`` for a client on this host: a wildcard bind is reached on loopback."""
    if host in WILDCARDS:
        host = "127.0.0.1"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"  # a literal IPv6 address
    return f"http://{host}:{port}"
