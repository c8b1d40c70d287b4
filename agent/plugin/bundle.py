"""The enrolled bundle: what `kubectl vmesh enroll VM` hands over to put in /etc/vmesh-agent/ on the VM.

config.toml (vm_name, namespace, the cluster's server, CA and token paths, declared services), token (mode
0600) and ca.crt, written to a directory or, for a name ending in .tar.gz, a tarball whose members sit at
its top level (`tar -xzf X.tar.gz -C /etc/vmesh-agent`). Pure apart from writing the files.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from agent import protocols

CONFIG_DIR = "/etc/vmesh-agent"


@dataclass(frozen=True)
class DeclaredService:
    """`--service NAME[:PORT]`: with a port, a [[service]] entry of config.toml; without, only recorded."""

    name: str
    port: int = 0

    @classmethod
    def parse(cls, text: str) -> DeclaredService:
        name, colon, port = text.partition(":")
        if not name or (colon and not (port.isdigit() and 0 < int(port) < 65536)):
            raise ValueError(f"--service {text!r}: write NAME or NAME:PORT, e.g. mysqldb:3306")
        return cls(name, int(port) if port else 0)

    @property
    def protocol(self) -> str:
        return protocols.by_port(self.port)


@dataclass(frozen=True)
class Bundle:
    vm_name: str
    namespace: str
    server: str
    token: str
    ca_certificate: bytes
    services: tuple[DeclaredService, ...] = ()
    cidrs: tuple[str, ...] = ()
    header: str = field(default="")  # a comment on top of config.toml: who wrote it, when the token expires

    def config_toml(self) -> str:
        def q(value: str) -> str:
            return json.dumps(value)  # a TOML basic string is a JSON string

        lines = [f"# {line}" for line in self.header.splitlines()]
        lines += [f"vm_name = {q(self.vm_name)}", f"namespace = {q(self.namespace)}", "",
                  "[cluster]", f"server = {q(self.server)}"]
        if self.ca_certificate:
            lines.append(f"ca_file = {q(CONFIG_DIR + '/ca.crt')}")
        lines.append(f"token_file = {q(CONFIG_DIR + '/token')}")
        if self.cidrs:
            # The advertised address is taken inside the first range the VM was enrolled for.
            lines += ["", "[address]", f"cidr = {q(self.cidrs[0])}"]
        for service in self.services:
            if service.port:
                lines += ["", "[[service]]", f"name = {q(service.name)}", f"port = {service.port}",
                          f"protocol = {q(service.protocol)}"]
        return "\n".join(lines) + "\n"

    def files(self) -> list[tuple[str, bytes, int]]:
        """(name, content, mode) of each file, in the order they are written."""
        # The agent's user reads config.toml (its directory, root:vmesh-agent 0750, keeps others out); the
        # token is root's until the package's postinst hands it to the agent's group.
        found = [("config.toml", self.config_toml().encode(), 0o644),
                 ("token", self.token.encode() + b"\n", 0o600)]
        if self.ca_certificate:
            found.append(("ca.crt", self.ca_certificate, 0o644))
        return found

    def write(self, output: Path) -> None:
        if output.name.endswith((".tar.gz", ".tgz")):
            self._write_tarball(output)
        else:
            self._write_directory(output)

    def _write_directory(self, directory: Path) -> None:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        for name, content, mode in self.files():
            path = directory / name
            # Created with its mode, never briefly readable by others; an old file's mode is corrected too.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
            with os.fdopen(fd, "wb") as fh:
                fh.write(content)
            path.chmod(mode)

    def _write_tarball(self, path: Path) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds the token
        with os.fdopen(fd, "wb") as fh, tarfile.open(fileobj=fh, mode="w:gz") as tar:
            for name, content, mode in self.files():
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(content), mode, int(time.time())
                info.uname = info.gname = "root"
                if name == "token":
                    # `tar -xzf` as root restores owners by name: on a VM where the package is installed
                    # (a re-enrollment) the token is then root:vmesh-agent 0640, readable by the running
                    # agent; before the package, the group is not known, it stays root's and the postinst
                    # hands it over.
                    info.gname, info.mode = "vmesh-agent", 0o640
                tar.addfile(info, io.BytesIO(content))
