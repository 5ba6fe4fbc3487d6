"""Where the platform may connect on a tenant's behalf."""

from __future__ import annotations

import ipaddress
import socket


def private_address(host: str, port: int | None = None) -> str | None:
    """A private, loopback, link-local or reserved address ``host`` resolves to, or None when it resolves to
    public addresses only (or not at all: connecting will say so). Blocking (DNS)."""
    try:
        infos = socket.getaddrinfo(host, port)
    except socket.gaierror:
        return None
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if address.is_private or address.is_loopback or address.is_link_local or address.is_reserved:
            return str(address)
    return None
