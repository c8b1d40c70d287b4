"""Every state an EndpointSlice went through, seen by a watch (polling would miss a state that lasts 12 ms)."""

from __future__ import annotations

import subprocess
import threading
from types import TracebackType

from tests.testbed.cluster import Cluster

SERVICE_LABEL = r"kubernetes\.io/service-name"


class SliceHistory:
    """`kubectl get endpointslices --watch` of one namespace in the background: (service, readiness) per
    version, readiness as kubectl prints it ("true", "false", "true,false", "<none>" when no endpoints)."""

    def __init__(self, cluster: Cluster, namespace: str) -> None:
        columns = f"SERVICE:.metadata.labels.{SERVICE_LABEL},READY:.endpoints[*].conditions.ready"
        self._proc = subprocess.Popen(
            [f"{cluster.env['BIN']}/kubectl", "--kubeconfig", cluster.kubeconfig, "get", "endpointslices",
             "-n", namespace, "--watch", "--no-headers", "-o", f"custom-columns={columns}"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        self._lock = threading.Lock()
        self._versions: list[tuple[str, str]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            fields = line.split()
            if len(fields) == 2:
                with self._lock:
                    self._versions.append((fields[0], fields[1]))

    def __repr__(self) -> str:
        with self._lock:
            return f"SliceHistory({self._versions!r})"

    def of(self, service: str) -> list[str]:
        with self._lock:
            return [ready for name, ready in self._versions if name == service]

    def __enter__(self) -> SliceHistory:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._proc.kill()
        self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()
