"""The agent trusts the cluster's CA as kubectl does, whichever CPython runs it: a CA certificate without the
keyUsage extension (what `openssl req -x509` makes; the test cluster's is one) is accepted on 3.13, whose
ssl.create_default_context() turned on X509_STRICT, as on 3.11 (it was refused on Debian 13 until this)."""

from __future__ import annotations

import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from agent.cluster.kube import Endpoint, KubeClient
from agent.cluster.resources import LEASES
from agent.config import ClusterSettings
from tests.unit.cluster.test_kube_transport import serving


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=no-key-usage-ca",
            "-keyout", "ca.key", "-out", "ca.crt")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=old-ca",
            "-keyout", "old-ca.key", "-out", "old-ca.crt")  # a CA the cluster was rotated away from
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=kube-apiserver", "-keyout", "server.key",
            "-out", "server.csr")
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
            "-extfile", "server.ext", "-out", "server.crt")
    text = subprocess.run(["openssl", "x509", "-in", d / "ca.crt", "-noout", "-text"], capture_output=True,
                          text=True, check=True).stdout
    assert "Key Usage" not in text  # the case under test
    return d


@pytest.fixture
def server(pki: Path) -> Iterator[int]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki / "server.crt", pki / "server.key")
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # closed
            try:
                with context.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)
            except (OSError, ssl.SSLError):
                pass  # the client refused the certificate

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    listener.close()
    thread.join(timeout=5)


def _handshake(context: ssl.SSLContext, port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        tls.sendall(b"x")


def test_a_ca_without_key_usage_is_trusted_even_where_python_is_strict_by_default(
        pki: Path, server: int, monkeypatch: pytest.MonkeyPatch) -> None:
    default = ssl.create_default_context

    def as_on_python_313(cafile: str | None = None) -> ssl.SSLContext:
        context = default(cafile=cafile)
        context.verify_flags |= ssl.VERIFY_X509_STRICT | ssl.VERIFY_X509_PARTIAL_CHAIN
        return context

    monkeypatch.setattr(ssl, "create_default_context", as_on_python_313)
    strict = as_on_python_313(cafile=str(pki / "ca.crt"))
    with pytest.raises(ssl.SSLCertVerificationError, match="key usage"):
        _handshake(strict, server)  # what CPython 3.13 alone does with this CA
    endpoint = Endpoint(server=f"https://127.0.0.1:{server}", authorization=str, ca_file=str(pki / "ca.crt"))
    _handshake(endpoint.ssl_context(), server)


def test_the_cluster_ca_still_decides(pki: Path, server: int, tmp_path: Path) -> None:
    other = tmp_path / "other.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=other",
                    "-keyout", tmp_path / "other.key", "-out", other], check=True, capture_output=True)
    endpoint = Endpoint(server=f"https://127.0.0.1:{server}", authorization=str, ca_file=str(other))
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(endpoint.ssl_context(), server)


async def test_a_rotated_ca_file_is_read_again_when_the_server_no_longer_verifies(pki: Path, tmp_path: Path) -> None:
    """Issue 20: the CA file was loaded once; a cluster whose CA was rotated (and ca.crt replaced on the VM)
    stayed unreachable until a restart. The first request that fails verification reads it again."""
    ca_file = tmp_path / "ca.crt"
    ca_file.write_bytes((pki / "old-ca.crt").read_bytes())  # what the VM trusted before the rotation
    token = tmp_path / "token"
    token.write_text("t")

    async def handle(request: web.Request) -> web.Response:
        return web.json_response({"kind": "List", "metadata": {"resourceVersion": "1"}, "items": []})

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki / "server.crt", pki / "server.key")  # the cluster, already on the new CA
    async with serving(handle, context) as url:
        kube = await KubeClient.connect(ClusterSettings(server=url, ca_file=str(ca_file), token_file=str(token)))
        try:
            ca_file.write_bytes((pki / "ca.crt").read_bytes())  # the admin replaced ca.crt on the VM
            assert await kube.list(LEASES, "vm") == []
        finally:
            await kube.close()
