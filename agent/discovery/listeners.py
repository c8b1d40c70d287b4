"""Listening TCP sockets of this network namespace.

Reading (/proc/net/tcp, /proc/net/tcp6) is kept apart from parsing, which is a pure function tested on
literal text. The kernel already filters by namespace; the state column selects listeners.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

_TCP_LISTEN = "0A"


@dataclass(frozen=True, order=True)
class Listener:
    address: str  # as bound: "0.0.0.0", "::", "127.0.0.1", "10.0.0.5", ...
    port: int
    inode: int = 0

    @property
    def is_wildcard(self) -> bool:
        return ipaddress.ip_address(self.address).is_unspecified

    @property
    def is_loopback(self) -> bool:
        ip = ipaddress.ip_address(self.address)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            return ip.ipv4_mapped.is_loopback
        return ip.is_loopback


def parse_proc_net_tcp(text: str, family: int) -> list[Listener]:
    """Parse /proc/net/tcp (family AF_INET) or /proc/net/tcp6 (AF_INET6) into its listeners."""
    found: list[Listener] = []
    for line in text.splitlines()[1:]:
        cols = line.split()
        if len(cols) < 10 or cols[3] != _TCP_LISTEN:
            continue
        hex_addr, hex_port = cols[1].split(":")
        found.append(Listener(_decode_address(hex_addr, family), int(hex_port, 16), int(cols[9])))
    return found


def _decode_address(hex_addr: str, family: int) -> str:
    # The kernel prints each 32-bit word in host byte order.
    raw = bytes.fromhex(hex_addr)
    words = struct.unpack(f"={len(raw) // 4}I", raw)
    packed = struct.pack(f"!{len(words)}I", *words)
    return socket.inet_ntop(family, packed)


def scan_listeners(proc: Path = Path("/proc")) -> list[Listener]:
    """All TCP listeners visible in this network namespace, IPv4 first, sorted and de-duplicated."""
    found: set[Listener] = set()
    for name, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        try:
            text = (proc / "net" / name).read_text()
        except FileNotFoundError:  # IPv6 disabled
            continue
        found.update(parse_proc_net_tcp(text, family))
    return sorted(found, key=lambda lst: (":" in lst.address, lst.port, lst.address))
