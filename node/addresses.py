"""Network addresses, in one place: ``host:port`` parsing, a free port, the advertised host."""

from __future__ import annotations

import socket
from dataclasses import dataclass

__all__ = ["AUTO", "Address", "advertised_host", "check_url", "free_port", "parse_address"]

# ``auto`` as a host: this machine's own address, as its name resolves (a container's IP).
AUTO = "auto"
_MAX_PORT = 65535


@dataclass(frozen=True)
class Address:
    """A ``host:port``; IPv6 hosts are kept without brackets and printed with them."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_address(text: str, *, allow_port_zero: bool = False) -> Address:
    """Parse ``host:port`` or ``[v6]:port``.

    Port 0 ("any free port") is accepted only with ``allow_port_zero``. Raises
    ``ValueError`` naming the text when it is not an address.
    """
    host, sep, port_text = text.strip().rpartition(":")
    host = host.strip("[]")
    lowest = 0 if allow_port_zero else 1
    if (
        not sep
        or not host
        or any(c.isspace() for c in host)
        or not port_text.isdigit()
        or not lowest <= int(port_text) <= _MAX_PORT
    ):
        raise ValueError(f"{text!r} is not a host:port address")
    return Address(host, int(port_text))


def check_url(text: str) -> str:
    """``text`` without a trailing slash, when it is an ``http://`` or ``https://`` URL with
    a host (a registry's base URL); ``ValueError`` naming it otherwise."""
    url = text.strip().rstrip("/")
    scheme, sep, rest = url.partition("://")
    host = rest.split("/", 1)[0]
    if scheme.lower() not in ("http", "https") or not sep or not host or " " in url:
        raise ValueError(f"{text!r} is not an http:// or https:// URL")
    return url


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago (another process may take it)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def advertised_host(host: str) -> str:
    """``auto`` becomes this machine's address as its own name resolves; others stay."""
    if host != AUTO:
        return host
    name = socket.gethostname()
    try:
        return socket.gethostbyname(name)
    except OSError:
        return name
