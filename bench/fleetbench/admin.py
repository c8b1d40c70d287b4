"""The cluster as the admin sees it, from outside the fleet's namespace: the apiserver on 127.0.0.1.

Not tests.testbed.cluster.Cluster's kubectl: the bench watches and scrapes /metrics, and polls every 0.5 s."""

from __future__ import annotations

import http.client
import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from typing import Any


class Admin:
    """Plain HTTPS to the apiserver on 127.0.0.1 with the admin token: LISTs, watches and /metrics."""

    def __init__(self, url: str, token: str, ca_file: str) -> None:
        self.url = url
        self._headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        self._ssl = ssl.create_default_context(cafile=ca_file)

    def open(self, path: str, timeout: float = 10.0) -> Any:
        request = urllib.request.Request(self.url + path, headers=self._headers)
        return urllib.request.urlopen(request, timeout=timeout, context=self._ssl)

    def text(self, path: str, timeout: float = 10.0) -> str:
        with self.open(path, timeout) as response:
            body: bytes = response.read()
        return body.decode()

    def post(self, path: str, body: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        request = urllib.request.Request(self.url + path, data=json.dumps(body).encode(), method="POST",
                                         headers={**self._headers, "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout, context=self._ssl) as response:
            found: dict[str, Any] = json.loads(response.read())
        return found

    def json(self, path: str, timeout: float = 10.0) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = json.loads(self.text(path, timeout))
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise
        return found

    def list(self, path: str, selector: str = "") -> tuple[list[dict[str, Any]], str]:
        query = "?" + urllib.parse.urlencode({"labelSelector": selector}) if selector else ""
        found = self.json(path + query, timeout=30.0) or {}
        return found.get("items") or [], str((found.get("metadata") or {}).get("resourceVersion", ""))

    def ready(self) -> bool:
        try:
            return self.text("/readyz", timeout=2.0).strip() == "ok"
        except (OSError, http.client.HTTPException):
            return False


def leases_path(ns: str) -> str:
    return f"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases"


def slices_path(ns: str) -> str:
    return f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices"
