"""ServiceAccount token files: what a token says about itself, which of the agent's two files to use, and
writing a renewed one.

The enrolled token sits in `cluster.token_file` (/etc/vmesh-agent/token, read-only under
ProtectSystem=strict); the agent's renewals go to `<state_dir>/token`. The one in use is the newest (by its
`iat` claim) that has not expired, so a renewed token takes over from the enrolled one, and a fresh one an
admin puts in token_file takes over from an old renewal. The claims are read, never verified: only the
apiserver decides whether a token is good; they give the renewal its schedule and an error its date.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.files import write_atomically

SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"
RENEWED_TOKEN = "token"  # the file name in state_dir


@dataclass(frozen=True)
class TokenClaims:
    """What a JWT's payload says. Zero times: the claim is absent (a legacy Secret token never expires)."""

    subject: str = ""
    audiences: tuple[str, ...] = ()
    issued_at: float = 0.0
    expires_at: float = 0.0

    @property
    def lifetime(self) -> float:
        return self.expires_at - self.issued_at if self.expires_at and self.issued_at else 0.0

    @property
    def service_account(self) -> tuple[str, str] | None:
        """(namespace, name) of the ServiceAccount the token is for, if it is one's."""
        return service_account_of(self.subject)

    def expired(self, now: float) -> bool:
        return bool(self.expires_at) and now >= self.expires_at


def service_account_of(username: str) -> tuple[str, str] | None:
    """`system:serviceaccount:<ns>:<name>` → (ns, name); anything else → None."""
    if not username.startswith(SERVICE_ACCOUNT_PREFIX):
        return None
    namespace, _, name = username[len(SERVICE_ACCOUNT_PREFIX):].partition(":")
    return (namespace, name) if namespace and name else None


def parse_claims(token: str) -> TokenClaims | None:
    """The payload of a JWT, unverified; None when the token is not a JWT (then nothing is known of it)."""
    parts = token.strip().split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError):
        return None
    if not isinstance(payload, dict):
        return None
    audiences = payload.get("aud") or ()
    audiences = (audiences,) if isinstance(audiences, str) else tuple(str(a) for a in audiences)

    def number(key: str) -> float:
        value = payload.get(key)
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0

    return TokenClaims(str(payload.get("sub") or ""), audiences, number("iat"), number("exp"))


def utc(moment: float) -> str:
    """A token time for a person: "2026-12-31 09:15:00 UTC"."""
    return datetime.datetime.fromtimestamp(moment, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@dataclass(frozen=True)
class Token:
    value: str
    path: str
    claims: TokenClaims | None
    modified: float  # the file's mtime: the order of tokens that carry no iat


class TokenFiles:
    """The token the agent uses now, among the enrolled file and the renewed one. `current()` stats the files
    on each call (every API request asks) and re-reads only a file that changed.

    A file that changed but cannot be read (a bundle unpacked as root over the old token, mode 0600: issue 20)
    does not take the agent's credentials away: the token read from it before stays in use, `problem` says why
    and what to do, and `warn` is called once per new problem."""

    def __init__(self, paths: Sequence[str], clock: Callable[[], float] = time.time,
                 warn: Callable[[str], None] | None = None) -> None:
        self.paths = tuple(p for p in paths if p)
        self._clock = clock
        self._warn = warn
        self._read: dict[str, tuple[tuple[int, int, int], Token | None]] = {}
        self._refused: set[str] = set()  # token values the cluster refused (401)
        self.problem = ""

    def refuse(self, value: str) -> None:
        """The cluster refused this token: another one, if there is one, is used instead."""
        self._refused.add(value)
        if len(self._refused) > 8:  # old refusals of tokens long replaced
            self._refused.pop()

    @property
    def renewed_path(self) -> str:
        """Where a renewal is written: the last path (state_dir/token), when there are two."""
        return self.paths[-1] if len(self.paths) > 1 else ""

    def _load(self, path: str) -> Token | None:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            self._read.pop(path, None)
            return None
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        cached = self._read.get(path)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        try:
            value = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            if cached is None or cached[1] is None:
                raise
            self._say(f"cannot read the new token in {path} ({exc.strerror or exc}); still using the one "
                      f"read from it before. Make it the agent's: chgrp vmesh-agent {path} && "
                      f"chmod 0640 {path}")
            return cached[1]
        if self.problem and path in self.problem:
            self._say("")
        token = Token(value, path, parse_claims(value), st.st_mtime) if value else None
        self._read[path] = (stamp, token)
        return token

    def _say(self, problem: str) -> None:
        if problem != self.problem and problem and self._warn is not None:
            self._warn(problem)
        self.problem = problem

    def current_or_none(self) -> Token | None:
        """current(), or None while no token can be read (`problem` says why): for those that can wait."""
        try:
            return self.current()
        except OSError:
            return None

    def current(self) -> Token:
        """The newest token that has not expired and was not refused; failing that, the newest. A renewal for
        another account than the enrolled token's is not used (a golden image's left-over, or a renewal of an
        earlier enrollment under another name). OSError if none can be read."""
        found: list[Token] = []
        unreadable: OSError | None = None
        for path in self.paths:
            try:
                token = self._load(path)
            except OSError as exc:  # one file that cannot be read does not stop the other from working
                unreadable, token = unreadable or exc, None
            if token is not None:
                found.append(token)
        if not found:
            if unreadable is not None:
                raise unreadable
            raise FileNotFoundError(f"no token in {', '.join(self.paths)}")
        if unreadable is not None:
            self._say(f"cannot read {unreadable.filename} ({unreadable.strerror or unreadable}); "
                      f"using the token in {found[0].path}. Make it the agent's: chgrp vmesh-agent "
                      f"{unreadable.filename} && chmod 0640 {unreadable.filename}")
        enrolled = found[0].claims.subject if found[0].path == self.paths[0] and found[0].claims else ""
        foreign = [t for t in found[1:] if enrolled and t.claims and t.claims.subject not in ("", enrolled)]
        if foreign:
            whose = foreign[0].claims.subject if foreign[0].claims else ""
            self._say(f"not using {foreign[0].path}: a token of {whose}, while {self.paths[0]} holds one of "
                      f"{enrolled} (left by another VM or an earlier enrollment); "
                      "the next renewal replaces it")
            found = [t for t in found if t not in foreign]
        now = self._clock()
        usable = [t for t in found if t.value not in self._refused] or found
        valid = [t for t in usable if not (t.claims and t.claims.expired(now))] or usable
        # iat has whole seconds: a renewal made in the second its predecessor was minted ties with it, and the
        # file written last (the renewal) wins, or the agent would renew again at once.
        return max(valid, key=lambda t: (
            t.claims.issued_at if t.claims and t.claims.issued_at else t.modified, t.modified))


def agent_token_files(token_file: str, state_dir: str,
                      warn: Callable[[str], None] | None = None) -> TokenFiles:
    """The enrolled token, then the agent's own renewals of it."""
    return TokenFiles([token_file, os.path.join(state_dir, RENEWED_TOKEN)], warn=warn)


def write_token(path: str, token: str) -> None:
    """Write atomically, mode 0600: a temporary file in the same directory, flushed, renamed over the old one.
    A crash leaves the old token or the new one, never half of one."""
    os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
    write_atomically(path, token.encode() + b"\n", 0o600)
