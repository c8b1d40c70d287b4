"""The VM's addresses, listed exactly as `hostname -I` lists them, and the one to advertise.

`hostname -I` walks getifaddrs(3) in kernel order and prints each IPv4/IPv6 address of an interface
that is up, skipping loopback interfaces and IPv6 link-local addresses. We call the same libc function.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_IFF_UP = 0x1
_IFF_LOOPBACK = 0x8
# Interfaces that belong to containers or hypervisor bridges on this host, not to the VM's network.
_VIRTUAL_IFACE = re.compile(
    r"^(docker\d*|br-[0-9a-f]+|cni\d*|cni-|virbr\d*|lxcbr\d*|lxdbr\d*|podman\d*|cali|flannel|vxlan|"
    r"weave|cilium|kube-|tunl\d|veth|vnet\d|tap|tun\d|zt)"
)


@dataclass(frozen=True)
class Candidate:
    interface: str
    address: IPAddress


@dataclass(frozen=True)
class AddressChoice:
    address: IPAddress | None
    interface: str
    reason: str
    candidates: tuple[Candidate, ...]


class _SockAddr(ctypes.Structure):
    _fields_ = (("sa_family", ctypes.c_ushort), ("sa_data", ctypes.c_ubyte * 14))


class _SockAddrIn(ctypes.Structure):
    _fields_ = (("sin_family", ctypes.c_ushort), ("sin_port", ctypes.c_uint16),
                ("sin_addr", ctypes.c_ubyte * 4))


class _SockAddrIn6(ctypes.Structure):
    _fields_ = (("sin6_family", ctypes.c_ushort), ("sin6_port", ctypes.c_uint16),
                ("sin6_flowinfo", ctypes.c_uint32), ("sin6_addr", ctypes.c_ubyte * 16),
                ("sin6_scope_id", ctypes.c_uint32))


class _IfAddrs(ctypes.Structure):
    pass


_IfAddrs._fields_ = (
    ("ifa_next", ctypes.POINTER(_IfAddrs)),
    ("ifa_name", ctypes.c_char_p),
    ("ifa_flags", ctypes.c_uint),
    ("ifa_addr", ctypes.POINTER(_SockAddr)),
    ("ifa_netmask", ctypes.POINTER(_SockAddr)),
    ("ifa_ifu", ctypes.POINTER(_SockAddr)),
    ("ifa_data", ctypes.c_void_p),
)


def address_candidates() -> list[Candidate]:
    """What `hostname -I` would print in this network namespace, in the same order."""
    # The process's own symbols, libc's among them: find_library("c") would fork ldconfig on every pass.
    libc = ctypes.CDLL(None, use_errno=True)
    head = ctypes.POINTER(_IfAddrs)()
    if libc.getifaddrs(ctypes.byref(head)) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"getifaddrs failed: {os.strerror(errno)}")
    found: list[Candidate] = []
    try:
        node = head
        while node:
            entry = node.contents
            node = entry.ifa_next
            if not entry.ifa_addr or entry.ifa_flags & _IFF_LOOPBACK or not entry.ifa_flags & _IFF_UP:
                continue
            family = entry.ifa_addr.contents.sa_family
            address: IPAddress
            if family == socket.AF_INET:
                sin = ctypes.cast(entry.ifa_addr, ctypes.POINTER(_SockAddrIn)).contents
                address = ipaddress.IPv4Address(bytes(sin.sin_addr))
            elif family == socket.AF_INET6:
                sin6 = ctypes.cast(entry.ifa_addr, ctypes.POINTER(_SockAddrIn6)).contents
                address = ipaddress.IPv6Address(bytes(sin6.sin6_addr))
                if address.is_link_local or (address.is_multicast and (address.packed[1] & 0x0F) == 2):
                    continue
            else:
                continue
            found.append(Candidate((entry.ifa_name or b"").decode(), address))
    finally:
        libc.freeifaddrs(head)
    return found


def choose_address(
    candidates: Sequence[Candidate], *, address: str = "", interface: str = "", cidr: str = ""
) -> AddressChoice:
    """Pick the advertised address: explicit > first on interface > first in cidr > first non-virtual."""
    cands = tuple(candidates)
    if address:
        ip = ipaddress.ip_address(address)
        local = next((c for c in cands if c.address == ip), None)
        where = f"on {local.interface}" if local else "not on any local interface (NAT or floating IP?)"
        return AddressChoice(ip, local.interface if local else "", f"set by address.address, {where}", cands)
    if interface:
        match = next((c for c in cands if c.interface == interface), None)
        if match is None:
            return AddressChoice(None, "", f"no address on interface {interface!r} (address.interface)",
                                 cands)
        return AddressChoice(match.address, match.interface,
                             f"first address on {interface} (address.interface)", cands)
    if cidr:
        net = ipaddress.ip_network(cidr, strict=False)
        match = next((c for c in cands if c.address in net), None)
        if match is None:
            return AddressChoice(None, "", f"no address inside {cidr} (address.cidr)", cands)
        return AddressChoice(match.address, match.interface,
                             f"first address inside {cidr} (address.cidr)", cands)
    if not cands:
        return AddressChoice(None, "", "no address: no interface is up with a non-loopback address", cands)
    physical = next((c for c in cands if not _VIRTUAL_IFACE.match(c.interface)), None)
    if physical is None:
        return AddressChoice(None, "", "only container/virtual bridge addresses; set address.interface",
                             cands)
    skipped = [c.interface for c in cands[: cands.index(physical)]]
    why = f"first address not on a container/virtual bridge (skipped {', '.join(skipped)})" if skipped else \
        "first address, as `hostname -I` lists it"
    return AddressChoice(physical.address, physical.interface, f"{why}: {physical.interface}", cands)
