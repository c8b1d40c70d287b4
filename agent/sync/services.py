"""The shared Service of a service name, as every backend needs it: created if missing, only ever extended.

Many VMs write the same Service at once, so a change is a resourceVersion-checked replace, re-read and merged
again on 409. It is never deleted here.
"""

from __future__ import annotations

from typing import Any

import structlog

from agent.cluster.errors import Conflict, NotFound
from agent.cluster.kube import KubeClient
from agent.cluster.objects import build_service_with, extend_service
from agent.cluster.resources import SERVICES

Body = dict[str, Any]
SERVICE_UPDATE_ATTEMPTS = 5


class SharedServices:
    def __init__(self, kube: KubeClient, namespace: str, vm: str, log: structlog.typing.FilteringBoundLogger,
                 *, attempts: int = SERVICE_UPDATE_ATTEMPTS) -> None:
        self._kube = kube
        self.namespace = namespace
        self.vm = vm
        self._log = log
        self._attempts = attempts
        self._warned: set[tuple[str, str]] = set()

    async def ensure(self, name: str, ports: set[tuple[str, int]], *, selector: dict[str, str] | None = None,
                     service_account: str = "") -> Body:
        """The Service `name` with at least these (protocol, port)s, and with `selector` if it is ours to set
        (see objects.extend_service); `service_account` joins Istio's service-account annotation."""
        log = self._log.bind(service=name, object=f"service/{name}")
        for _ in range(self._attempts):
            try:
                svc = await self._kube.get(SERVICES, self.namespace, name)
            except NotFound:
                body = build_service_with(name, self.namespace, self.vm, ports, selector=selector,
                                          service_account=service_account)
                try:
                    svc = await self._kube.create(SERVICES, self.namespace, body)
                except Conflict as exc:
                    if exc.already_exists:
                        continue  # another VM created it first; merge into theirs
                    raise
                log.info("service created", ports=[p["name"] for p in svc["spec"]["ports"]],
                         selector=selector or None)
                return svc
            updated, changes = extend_service(svc, ports, selector=selector, service_account=service_account)
            if changes:
                try:
                    svc = await self._kube.replace(SERVICES, self.namespace, name, updated)
                except Conflict:
                    continue  # another VM changed it meanwhile: re-read and merge again
                except NotFound:
                    continue  # deleted meanwhile: create it
                log.info("service updated", added=changes)
            if selector:
                self._check_selector(svc, selector, log)
            return svc
        raise Conflict(f"service {name} kept changing under us ({self._attempts} attempts); will retry")

    def _check_selector(self, svc: Body, selector: dict[str, str], log: structlog.typing.FilteringBoundLogger) -> None:
        have = svc.get("spec", {}).get("selector") or {}
        if all(have.get(k) == v for k, v in selector.items()):
            return
        key = (svc["metadata"]["name"], repr(sorted(have.items())))
        if key not in self._warned:  # once per Service and selector: it is the operator's to change, not a flood
            self._warned.add(key)
            log.warning("service does not select this VM's workloads; its selector is left alone (vmesh-agent "
                        "only sets one on a selector-less Service it created)", selector=have or None,
                        needs=",".join(f"{k}={v}" for k, v in sorted(selector.items())))
