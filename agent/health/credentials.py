"""MySQL check credentials: a small TOML file (`user`, `password`) that others may not read.

Stdlib only: the config layer validates these files at load time without importing the checks
(pymysql, aiohttp).

The password is kept out of every repr, message and log line; errors name the file and the key, never a value.
"""

from __future__ import annotations

import os
import stat
import tomllib
from dataclasses import dataclass, field

# A credentials file is a few lines; anything bigger is the wrong file.
_MAX_SIZE = 64 * 1024


class CredentialsError(ValueError):
    """A credentials file that cannot be used, said in one line that never contains the password."""


@dataclass(frozen=True)
class Credentials:
    user: str
    password: str = field(repr=False)


def load_credentials(path: str) -> Credentials:
    """Read `path`; refuse it when others can access it (group access is fine: the agent's group)."""
    try:
        # Check the mode of the file actually opened (fstat), not of whatever the path points to later.
        with open(path, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise CredentialsError(f"credentials file {path} is not a regular file")
            if info.st_mode & 0o007:
                raise CredentialsError(
                    f"credentials file {path} is accessible by others "
                    f"(mode {stat.S_IMODE(info.st_mode):04o});"
                    f" run: chmod o-rwx {path}"
                )
            raw = f.read(_MAX_SIZE + 1)
    except OSError as exc:
        raise CredentialsError(f"cannot read credentials file {path}: {exc.strerror}") from None
    if len(raw) > _MAX_SIZE:
        raise CredentialsError(f"credentials file {path} is larger than {_MAX_SIZE} bytes")
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        # `from None`: the decoder's exception can carry the document, password included.
        where = str(exc) if isinstance(exc, tomllib.TOMLDecodeError) else "not UTF-8"
        raise CredentialsError(f"credentials file {path} is not valid TOML: {where}") from None
    unknown = sorted(set(data) - {"user", "password"})
    if unknown:
        raise CredentialsError(f"credentials file {path}: unknown key {unknown[0]!r}; "
                               "expected user and password")
    user, password = data.get("user"), data.get("password")
    if not isinstance(user, str) or not user:
        raise CredentialsError(f"credentials file {path}: user must be a non-empty string")
    if not isinstance(password, str):
        raise CredentialsError(f"credentials file {path}: password must be a string")
    return Credentials(user=user, password=password)
