import os
import socket
from pathlib import Path

import pytest

from agent.discovery import listeners
from agent.discovery.listeners import (
    Listener,
    PortListeners,
    _proc_listeners,
    parse_proc_net_tcp,
    parse_sock_diag,
    port_filter,
    scan_listeners,
)

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


def test_port_filter_bytecode() -> None:
    # sport >= 3306 (yes: go on 8 bytes, no: 20 = past the end by 4, reject), then sport <= 3306 (no: 12, the
    # same place); each test's op is followed by one holding the port in its `no` field.
    assert port_filter(3306) == bytes.fromhex("02081400" "0000ea0c" "03080c00" "0000ea0c")


def _listen(family: int, address: str, port: int = 0) -> socket.socket:
    server = socket.socket(family, socket.SOCK_STREAM)
    server.bind((address, port))
    server.listen(8)
    return server


def test_port_listeners_asks_the_kernel_for_one_port_only() -> None:
    """Real sockets: the listeners of the port in both families, not another port's, not the port's
    established connections; the accept queue as the full scan reads it. The kept netlink socket serves every
    call."""
    with _listen(socket.AF_INET, "127.0.0.1") as server, _listen(socket.AF_INET, "127.0.0.1") as other:
        port = server.getsockname()[1]
        try:
            v6: socket.socket | None = _listen(socket.AF_INET6, "::1", port)
        except OSError:  # no IPv6 on this host
            v6 = None
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()  # an established socket with the local port `port`
        waiting = socket.create_connection(("127.0.0.1", port))  # completed by the kernel, not accepted
        reader = PortListeners(port)
        try:
            expected = [Listener("127.0.0.1", port, extra_inode(server), 1)]
            if v6 is not None:
                expected.append(Listener("::1", port, extra_inode(v6)))
            for _ in range(2):
                found = reader()
                assert found == expected
                assert [lst.accept_queue for lst in found] == [1] + [0] * (v6 is not None)
            assert sorted(found) == sorted(lst for lst in scan_listeners() if lst.port == port)
            assert other.getsockname()[1] not in {lst.port for lst in reader()}
            server.close()
            assert reader() == expected[1:]
        finally:
            reader.close()
            for sock in (client, accepted, waiting, *([v6] if v6 else [])):
                sock.close()


class _NoNetlink:
    """The socket module where netlink is refused (a sandbox without AF_NETLINK)."""

    def __getattr__(self, name: str) -> object:
        return getattr(socket, name)

    @staticmethod
    def socket(*args: object) -> socket.socket:
        raise PermissionError(13, "Permission denied")


def test_port_listeners_fall_back_to_proc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "tcp").write_text(TCP)
    (tmp_path / "net" / "tcp6").write_text(TCP6)
    monkeypatch.setattr(listeners, "socket", _NoNetlink())
    assert PortListeners(3306, proc=tmp_path)() == [Listener("0.0.0.0", 3306, 21823)]
    assert PortListeners(22, proc=tmp_path)() == [Listener("::", 22, 19155)]
