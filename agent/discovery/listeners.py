"""Listening TCP sockets of this network namespace.

The kernel does the filtering: a sock_diag netlink dump asks only for sockets in state LISTEN, so
thousands of established connections cost nothing (`ss -ltn` asks the same way); a health check that looks
every second asks for its port only (`PortListeners`: a bytecode filter, over a netlink socket it keeps), so
other listeners cost nothing either. /proc/net/tcp{,6}, which lists every socket, is the fallback where
sock_diag is unavailable. Reading is kept apart from parsing; the parsers and the filter's bytecode are pure
functions tested on captured bytes and text.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from dataclasses import dataclass, field
from pathlib import Path

_TCP_LISTEN = "0A"


@dataclass(frozen=True, order=True)
class Listener:
    address: str  # as bound: "0.0.0.0", "::", "127.0.0.1", "10.0.0.5", ...
    port: int
    inode: int = 0
    # Connections the kernel has completed that the server has not accept()ed yet (the accept queue, what
    # `ss -ltn` shows as Recv-Q). A reading of the moment: not part of the socket's identity.
    accept_queue: int = field(default=0, compare=False)

    @property
    def ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        """The address it accepts connections on: an IPv4-mapped one (`::ffff:10.0.0.5`, as Java binds an IPv4
        address on an IPv6 socket) is that IPv4 address."""
        ip = ipaddress.ip_address(self.address)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        return ip

    @property
    def is_wildcard(self) -> bool:
        return ipaddress.ip_address(self.address).is_unspecified

    @property
    def is_loopback(self) -> bool:
        return self.ip.is_loopback


def parse_proc_net_tcp(text: str, family: int) -> list[Listener]:
    """Parse /proc/net/tcp (family AF_INET) or /proc/net/tcp6 (AF_INET6) into its listeners."""
    found: list[Listener] = []
    for line in text.splitlines()[1:]:
        cols = line.split()
        if len(cols) < 10 or cols[3] != _TCP_LISTEN:
            continue
        hex_addr, hex_port = cols[1].split(":")
        # tx_queue:rx_queue; a listener's rx_queue is its accept queue
        rx_queue = int(cols[4].split(":")[1], 16)
        found.append(Listener(_decode_address(hex_addr, family), int(hex_port, 16), int(cols[9]), rx_queue))
    return found


def _decode_address(hex_addr: str, family: int) -> str:
    # The kernel prints each 32-bit word in host byte order.
    raw = bytes.fromhex(hex_addr)
    words = struct.unpack(f"={len(raw) // 4}I", raw)
    packed = struct.pack(f"!{len(words)}I", *words)
    return socket.inet_ntop(family, packed)


# linux/netlink.h, linux/sock_diag.h, linux/inet_diag.h
_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST, _NLM_F_DUMP = 0x1, 0x300
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_TCP_LISTEN_STATE = 10
_NLMSG_HDR = struct.Struct("=IHHII")
_INET_DIAG_REQ_V2 = struct.Struct("=BBBxI48x")
_NLATTR = struct.Struct("=HH")
_INET_DIAG_REQ_BYTECODE = 1
# inet_diag_bc_op: code, yes, no (byte offsets to go on with when the test holds / fails). A port comparison
# is two ops: the test, then one whose `no` holds the port.
_BC_OP = struct.Struct("=BBH")
_BC_S_GE, _BC_S_LE = 2, 3
# inet_diag_msg: family, state, timer, retrans; sockid (sport, dport big-endian; src, dst 16 bytes each;
# interface; cookie); expires, rqueue, wqueue, uid, inode. Ports are in network order: "2s", not "H".
_INET_DIAG_MSG = struct.Struct("=BBBB2s2s16s16sI8sIIIII")


def parse_sock_diag(data: bytes) -> tuple[list[Listener], bool]:
    """Parse one recv() of a sock_diag dump. Returns the listeners and whether the dump is complete."""
    found: list[Listener] = []
    offset = 0
    while offset + _NLMSG_HDR.size <= len(data):
        length, msg_type, _flags, _seq, _pid = _NLMSG_HDR.unpack_from(data, offset)
        if length < _NLMSG_HDR.size:
            raise OSError("sock_diag: malformed netlink message")
        if msg_type == _NLMSG_DONE:
            return found, True
        if msg_type == _NLMSG_ERROR:
            errno = -struct.unpack_from("=i", data, offset + _NLMSG_HDR.size)[0]
            raise OSError(errno, f"sock_diag: {os.strerror(errno)}")
        if msg_type == _SOCK_DIAG_BY_FAMILY and length >= _NLMSG_HDR.size + _INET_DIAG_MSG.size:
            (family, state, _, _, sport, _, src, _, _, _, _, rqueue, _, _,
             inode) = _INET_DIAG_MSG.unpack_from(data, offset + _NLMSG_HDR.size)
            if state == _TCP_LISTEN_STATE and family in (socket.AF_INET, socket.AF_INET6):
                raw = src[: 4 if family == socket.AF_INET else 16]
                # For a listener, idiag_rqueue is its accept queue's length (idiag_wqueue its backlog).
                found.append(Listener(socket.inet_ntop(family, raw), int.from_bytes(sport, "big"),
                                      inode, rqueue))
        offset += (length + 3) & ~3
    return found, False


def port_filter(port: int) -> bytes:
    """INET_DIAG_REQ_BYTECODE that keeps the sockets whose local port is `port`: `sport >= port`, then
    `sport <= port` (ops every kernel has; `ss` builds the same). Each op goes on to the next when its test
    holds (`yes` 8: the op and the one holding the port) and jumps 4 bytes past the end when it fails, which
    rejects; reaching the end exactly accepts."""
    return (_BC_OP.pack(_BC_S_GE, 8, 20) + _BC_OP.pack(0, 0, port)
            + _BC_OP.pack(_BC_S_LE, 8, 12) + _BC_OP.pack(0, 0, port))


def _dump_request(family: int, bytecode: bytes = b"") -> bytes:
    """A SOCK_DIAG_BY_FAMILY dump request for TCP listeners of `family`, filtered by `bytecode` if given."""
    request = _INET_DIAG_REQ_V2.pack(family, socket.IPPROTO_TCP, 0, 1 << _TCP_LISTEN_STATE)
    if bytecode:
        request += _NLATTR.pack(_NLATTR.size + len(bytecode), _INET_DIAG_REQ_BYTECODE) + bytecode
    header = _NLMSG_HDR.pack(_NLMSG_HDR.size + len(request), _SOCK_DIAG_BY_FAMILY,
                             _NLM_F_REQUEST | _NLM_F_DUMP, 1, 0)
    return header + request


def _dump(nl: socket.socket, request: bytes) -> list[Listener]:
    nl.send(request)
    found: list[Listener] = []
    while True:
        batch, done = parse_sock_diag(nl.recv(1 << 17))
        found.extend(batch)
        if done:
            return found


def _sock_diag_listeners(family: int) -> list[Listener]:
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_SOCK_DIAG) as nl:
        return _dump(nl, _dump_request(family))


def _proc_listeners(proc: Path) -> list[Listener]:
    found: list[Listener] = []
    for name, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        try:
            text = (proc / "net" / name).read_text()
        except FileNotFoundError:  # IPv6 disabled
            continue
        found.extend(parse_proc_net_tcp(text, family))
    return found


def scan_listeners(proc: Path = Path("/proc")) -> list[Listener]:
    """All TCP listeners visible in this network namespace, IPv4 first, sorted and de-duplicated."""
    try:
        found = _sock_diag_listeners(socket.AF_INET) + _sock_diag_listeners(socket.AF_INET6)
    except OSError:
        found = _proc_listeners(proc)
    return sorted(set(found), key=lambda lst: (":" in lst.address, lst.port, lst.address))


class PortListeners:
    """The TCP listeners on one port, for a check that looks every second: the kernel filters by state and
    port, and the netlink socket is kept between calls (one dump per family, nothing else: about a third of a
    full scan's CPU with a few listeners, a tenth with hundreds). Falls back to /proc like `scan_listeners`.

    Calls are synchronous and one at a time (the event loop's thread), so a kept socket never holds a reply
    of an earlier request: any error closes it, and the next call opens a new one."""

    def __init__(self, port: int, proc: Path = Path("/proc")) -> None:
        self.port = port
        self._proc = proc
        self._requests = [_dump_request(family, port_filter(port))
                          for family in (socket.AF_INET, socket.AF_INET6)]
        self._socket: socket.socket | None = None

    def __call__(self) -> list[Listener]:
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_SOCK_DIAG)
            return [lst for request in self._requests for lst in _dump(self._socket, request)]
        except OSError:
            self.close()
            return [lst for lst in _proc_listeners(self._proc) if lst.port == self.port]
        except BaseException:  # cut short mid-reply: the kept socket may hold the rest of it
            self.close()
            raise

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
