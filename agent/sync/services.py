"""The shared Service of a service name, as every backend needs it: created if missing, only ever extended.

Many VMs write the same Service at once, so a change goes through the conflict-safe write path (update.py):
resourceVersion-checked, re-read and merged again on 409. It is never deleted here.
"""

from __future__ import annotations

from typing import Any

import structlog

from agent.cluster.kube import KubeClient
from agent.cluster.objects import build_service_with, extend_service
from agent.cluster.resources import SERVICES
from agent.sync.update import UPDATE_ATTEMPTS, Change, Put, read, update

Body = dict[str, Any]


class SharedServices:
    def __init__(self, kube: KubeClient, namespace: str, vm: str, log: structlog.typing.FilteringBoundLogger,
                 *, attempts: int = UPDATE_ATTEMPTS) -> None:
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
        added: list[str] = []

        def decide(current: Body | None) -> Change:
            nonlocal added
            if current is None:
                return Put(build_service_with(name, self.namespace, self.vm, ports, selector=selector,
                                              service_account=service_account))
            updated, added = extend_service(current, ports, selector=selector,
                                            service_account=service_account)
            return Put(updated) if added else None

        outcome = await update(self._kube, SERVICES, self.namespace, name, decide,
                               current=await read(self._kube, SERVICES, self.namespace, name),
                               attempts=self._attempts)
        svc = outcome.obj
        assert svc is not None  # a Put leaves the object in place
        if outcome.verb == "created":
            log.info("service created", ports=[p["name"] for p in svc["spec"]["ports"]],
                     selector=selector or None)
        elif outcome.verb == "updated":
            log.info("service updated", added=added)
        if selector:
            self._check_selector(svc, selector, log)
        return svc

    def _check_selector(self, svc: Body, selector: dict[str, str],
                        log: structlog.typing.FilteringBoundLogger) -> None:
        have = svc.get("spec", {}).get("selector") or {}
        if all(have.get(k) == v for k, v in selector.items()):
            return
        key = (svc["metadata"]["name"], repr(sorted(have.items())))
        # once per Service and selector: it is the operator's to change, not a flood
        if key not in self._warned:
            self._warned.add(key)
            log.warning("service does not select this VM's workloads; its selector is left alone "
                        "(vmesh-agent only sets one on a selector-less Service it created)",
                        selector=have or None,
                        needs=",".join(f"{k}={v}" for k, v in sorted(selector.items())))
