import os
import socket
from pathlib import Path

import pytest

from agent.discovery.listeners import Listener, _proc_listeners, parse_proc_net_tcp, parse_sock_diag, scan_listeners

# Captured from /proc/net/tcp and /proc/net/tcp6 on a Debian 12 host with MariaDB and sshd.
TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0CEA 00000000:0000 0A 00000000:00000000 00:00000000 00000000   105        0 21823 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 21830 1 0000000000000000 100 0 0 10 0
   2: 0A00020F:0016 0100000A:C350 01 00000000:00000000 02:000A8C6E 00000000     0        0 30001 4 0000000000000000 20 4 29 10 -1
"""
TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 19155 1 0000000000000000 100 0 0 10 0
   1: 00000000000000000000000001000000:18EB 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 19156 1 0000000000000000 100 0 0 10 0
"""


def test_ipv4_listeners_only() -> None:
    assert parse_proc_net_tcp(TCP, socket.AF_INET) == [
        Listener("0.0.0.0", 3306, 21823),
        Listener("127.0.0.1", 8080, 21830),
    ]


def test_ipv6_listeners() -> None:
    found = parse_proc_net_tcp(TCP6, socket.AF_INET6)
    assert found == [Listener("::", 22, 19155), Listener("::1", 6379, 19156)]
    assert found[0].is_wildcard
    assert found[1].is_loopback


def test_garbage_lines_are_ignored() -> None:
    assert parse_proc_net_tcp("header\nnot a line\n\n", socket.AF_INET) == []


# sock_diag dumps captured in a network namespace with listeners on 0.0.0.0:3306 and [::1]:6379.
DIAG_V4 = bytes.fromhex(
    "7c0000001400020001000000f2500000020a00000cea000000000000000000000000000000000000000000000000000000000000"
    "00000000000000000200000000000000000000000000000080000000000000007dbb0000050008000000000008000f0000000000"
    "0c00150001000000000000000600160052000000"
)
DIAG_V6 = bytes.fromhex(
    "840000001400020001000000f25000000a0a000018eb00000000000000000000000000000000000100000000000000000000000000"
    "000000000000000300000000000000000000000000000080000000000000007ebb0000050008000000000005000b000100000008"
    "000f00000000000c00150001000000000000000600160012000000"
)
DIAG_DONE = bytes.fromhex("140000000300020001000000f250000000000000")


def test_sock_diag_dump() -> None:
    assert parse_sock_diag(DIAG_V4) == ([Listener("0.0.0.0", 3306, 47997)], False)
    assert parse_sock_diag(DIAG_V6) == ([Listener("::1", 6379, 47998)], False)
    assert parse_sock_diag(DIAG_V4 + DIAG_DONE) == ([Listener("0.0.0.0", 3306, 47997)], True)


def test_sock_diag_error_message() -> None:
    error = bytes.fromhex("24000000020000000100000000000000") + (-22).to_bytes(4, "little", signed=True) + bytes(16)
    with pytest.raises(OSError, match="Invalid argument"):
        parse_sock_diag(error)


def test_scan_matches_proc_net_tcp() -> None:
    """The netlink scan and the /proc fallback agree on this host."""
    with socket.socket() as extra:
        extra.bind(("127.0.0.1", 0))
        extra.listen()
        found = scan_listeners()
        assert Listener("127.0.0.1", extra.getsockname()[1], extra_inode(extra)) in found
        assert sorted(set(found)) == sorted(set(_proc_listeners(Path("/proc"))))


def extra_inode(sock: socket.socket) -> int:
    return os.fstat(sock.fileno()).st_ino


def test_the_accept_queue_is_read_and_not_part_of_the_identity() -> None:
    # MariaDB SIGSTOPped with three connections waiting: rx_queue 3 (the accept queue), tx_queue 80 (backlog).
    line = ("   0: 00000000:0CEA 00000000:0000 0A 00000050:00000003 00:00000000 00000000   105        0 21823 1 "
            "0000000000000000 100 0 0 10 0\n")
    (found,) = parse_proc_net_tcp(TCP.splitlines()[0] + "\n" + line, socket.AF_INET)
    assert found.accept_queue == 3
    assert found == Listener("0.0.0.0", 3306, 21823)  # the same socket, whatever its queue


def test_sock_diag_reads_the_accept_queue_of_a_real_listener() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        port = server.getsockname()[1]
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
        try:
            (found,) = [lst for lst in scan_listeners() if lst.port == port]
            assert found.accept_queue == 2
            server.accept()[0].close()
            (found,) = [lst for lst in scan_listeners() if lst.port == port]
            assert found.accept_queue == 1
        finally:
            for client in clients:
                client.close()
