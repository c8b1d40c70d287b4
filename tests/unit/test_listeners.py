import socket

from agent.discovery.listeners import Listener, parse_proc_net_tcp

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
