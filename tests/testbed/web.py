"""A real HTTP server inside a VM, on one address and port, as a web application listens: Python's http.server
answering every GET with 200. An IPv6 address (an IPv4-mapped one too, as Java binds) gets an IPv6 socket."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator

from tests.testbed.vm import VM

SERVER = r"""
import http.server, socket, sys

host, port = sys.argv[1], int(sys.argv[2])


class Server(http.server.HTTPServer):
    address_family = socket.AF_INET6 if ":" in host else socket.AF_INET


class Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"ok\n")

    def log_message(self, *args):
        pass


server = Server((host, port), Ok)
print("up", flush=True)
server.serve_forever()
"""


@contextlib.contextmanager
def http_server(vm: VM, host: str, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """Listening on `host`:`port` inside `vm` once entered; killed on exit (or earlier by the test: kill())."""
    proc = subprocess.Popen(["ip", "netns", "exec", vm.netns, sys.executable, "-c", SERVER, host, str(port)],
                            stdout=subprocess.PIPE)
    assert proc.stdout is not None
    try:
        assert proc.stdout.readline() == b"up\n", f"http.server on {host}:{port} in {vm.name} did not start"
        yield proc
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
