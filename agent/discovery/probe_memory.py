"""What each listening socket was found to be: definite answers are kept for the socket's life, silence is
asked again after a doubling delay (a MariaDB busy at boot answers later), MAX_PROBES times in all per socket:
then it is taken as silent for the socket's life (a restarted server has a new socket and is probed afresh).
So no listener is connected to more than MAX_PROBES times, whatever it is."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection

from agent.discovery.identify import Identity
from agent.discovery.listeners import Listener

RETRY_FIRST = 1.0  # seconds after the first silence; then doubling
RETRY_CAP = 300.0
# Probes of one socket at most: 1 + 2 + 4 + 8 + 16 s of retries, the last about half a minute after the first.
MAX_PROBES = 6


class ProbeMemory:
    def __init__(self, clock: Callable[[], float] = time.monotonic, first: float = RETRY_FIRST,
                 cap: float = RETRY_CAP, max_probes: int = MAX_PROBES) -> None:
        self._clock = clock
        self._first, self._cap, self._max_probes = first, cap, max_probes
        self._settled: dict[Listener, Identity] = {}
        self._unsettled: dict[Listener, tuple[Identity, float, int]] = {}  # last answer, retry due, silences

    def recall(self, listener: Listener) -> Identity | None:
        """The identity to use without probing, or None when the listener is due for a probe."""
        if listener in self._settled:
            return self._settled[listener]
        if listener in self._unsettled:
            identity, due, _ = self._unsettled[listener]
            if self._clock() < due:
                return identity
        return None

    def forget_unprobed(self) -> None:
        """Drop what was decided without connecting (NOT_PROBED): the allow-list it depended on changed."""
        self._settled = {lst: i for lst, i in self._settled.items() if i.probed}

    def record(self, listener: Listener, identity: Identity) -> None:
        if not identity.unsettled:
            self._settled[listener] = identity
            self._unsettled.pop(listener, None)
            return
        silences = self._unsettled[listener][2] + 1 if listener in self._unsettled else 1
        if silences >= self._max_probes:
            reason = identity.unsettled.removesuffix("; will retry")
            self._settled[listener] = Identity(identity.protocol, "", identity.probed, silent=(
                f"{reason}, {silences} times; not probed again until it listens anew"))
            self._unsettled.pop(listener, None)
            return
        delay = min(self._cap, self._first * 2.0 ** (silences - 1))
        self._unsettled[listener] = (identity, self._clock() + delay, silences)

    def keep_only(self, live: Collection[Listener]) -> None:
        """Forget sockets that are gone: a restarted server (new inode) is probed afresh."""
        alive = set(live)
        self._settled = {k: v for k, v in self._settled.items() if k in alive}
        self._unsettled = {k: v for k, v in self._unsettled.items() if k in alive}
