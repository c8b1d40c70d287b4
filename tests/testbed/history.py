"""Every version of a kind of object in a namespace, as an API watch delivers them (`kubectl get --watch
--output-watch-events -o json`): each event's type and the whole object, so a test can say what was never
published (not ready, terminating) and that an object kept its uid."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from tests.testbed.cluster import Cluster
from tests.testbed.waiting import wait_until

Body = dict[str, Any]


@dataclass(frozen=True)
class Event:
    at: float  # monotonic, when the test read it
    type: str  # ADDED, MODIFIED, DELETED
    obj: Body

    @property
    def uid(self) -> str:
        return str(self.obj["metadata"]["uid"])

    @property
    def name(self) -> str:
        return str(self.obj["metadata"]["name"])


class History:
    """Watch `resource` in `namespace` in the background from now on. Use as a context manager."""

    def __init__(self, cluster: Cluster, resource: str, namespace: str) -> None:
        self._proc = subprocess.Popen(
            [f"{cluster.env['BIN']}/kubectl", "--kubeconfig", cluster.kubeconfig, "get", resource, "-n", namespace,
             "--watch", "--output-watch-events", "-o", "json"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        self._lock = threading.Lock()
        self._events: list[Event] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        """kubectl prints one JSON document per event (on one line; pretty-printed by some versions): decode
        each as soon as it is complete."""
        assert self._proc.stdout is not None
        decoder, buffer = json.JSONDecoder(), ""
        for line in self._proc.stdout:
            buffer = (buffer + line).lstrip()
            while buffer:
                try:
                    doc, end = decoder.raw_decode(buffer)
                except ValueError:
                    break  # incomplete: wait for more lines
                buffer = buffer[end:].lstrip()
                with self._lock:
                    self._events.append(Event(time.monotonic(), doc["type"], doc["object"]))

    def events(self, matching: Callable[[Body], bool] = lambda obj: True) -> list[Event]:
        with self._lock:
            return [e for e in self._events if matching(e.obj)]

    def wait_for(self, matching: Callable[[Body], bool], timeout: float, what: str) -> Event:
        """The first event (already seen, or to come) whose object matches."""
        found: list[Event] = wait_until(lambda: self.events(matching), timeout, what)
        return found[0]

    def __repr__(self) -> str:
        return f"History({[(e.type, e.name, e.obj['metadata'].get('resourceVersion')) for e in self.events()]})"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._proc.kill()
        self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        self._reader.join(timeout=5)
