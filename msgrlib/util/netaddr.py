"""One way to write a network address for people and logs: ``host:port``,
with an IPv6 address in brackets (``[::1]:8765``), as URLs and ssh do."""

from __future__ import annotations

__all__ = ["host_port"]


def host_port(host: str, port: int | str) -> str:
    """``host:port``; an IPv6 address (it contains ``:``) goes in brackets.

    A host already in brackets is not bracketed twice; a zone id stays
    (``[fe80::1%eth0]:8765``).
    """
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
