"""The proxy's own listening addresses, so a registration can never point it at itself.

A backend registered at the proxy's own data port would send every request it is
given straight back into the proxy, which would route it to that "backend" again:
one request becomes thousands of nested hops. Registrations (and ``--backend-servers``)
naming one of the proxy's own listening sockets are refused: the same IP and port,
or, when the proxy listens on a wildcard address, any address of this host
(loopback, ``localhost``, the wildcard itself, an interface's address) with its port.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable

from inferno.schemas.registration import WILDCARD_HOSTS


def normal_ip(host: str) -> str | None:
    """The canonical text of an IP literal (IPv4-mapped IPv6 as IPv4), or None for a name."""
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


def is_local_ip(ip: str) -> bool:
    """True if ``ip`` is an address of this host: binding a socket to it succeeds.

    No packet is sent; the kernel answers from its own address table.
    """
    canonical = normal_ip(ip)
    if canonical is None:
        return False
    address = ipaddress.ip_address(canonical)
    if address.is_loopback or address.is_unspecified:
        return True
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((canonical, 0))
    except OSError:
        return False
    return True


class OwnAddresses:
    """The ``(host, port)`` pairs the proxy listens on, filled in once its ports are bound."""

    def __init__(self, is_local: Callable[[str], bool] = is_local_ip) -> None:
        self._is_local = is_local
        #: port -> the IPs bound on it (None: a wildcard, every local address)
        self._by_port: dict[int, set[str | None]] = {}

    def set(self, bound: Iterable[tuple[str, int]]) -> None:
        self._by_port = {}
        for host, port in bound:
            ip = None if host in WILDCARD_HOSTS or normal_ip(host) in ("0.0.0.0", "::") else normal_ip(host)
            self._by_port.setdefault(port, set()).add(ip)

    def contains(self, ip: str, port: int) -> bool:
        """``ip`` (an IP literal, resolved already) and ``port`` reach one of the proxy's sockets."""
        ips = self._by_port.get(port)
        if not ips:
            return False
        canonical = normal_ip(ip)
        if canonical is None:
            return False
        if canonical in ips:
            return True
        return None in ips and self._is_local(canonical)
