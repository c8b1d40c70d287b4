"""The project's own error types for cluster calls, so callers never import the client library."""

from __future__ import annotations


class ClusterError(Exception):
    """A call to the cluster failed. `transient` errors are worth retrying as they are."""

    transient = False

    def __init__(self, message: str, *, status: int = 0, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


class NotFound(ClusterError):
    pass


class Conflict(ClusterError):
    """409: a stale resourceVersion, or (reason AlreadyExists) a create of an existing object."""

    @property
    def already_exists(self) -> bool:
        return self.reason == "AlreadyExists"


class Gone(ClusterError):
    """410: a watch's resourceVersion is too old; list again."""


class Forbidden(ClusterError):
    """403: RBAC does not allow the call. The message is one actionable line."""


class Unauthorized(ClusterError):
    """401: the token is missing, expired or not trusted by this cluster."""


class Invalid(ClusterError):
    """422 or 400: the object was rejected; retrying the same request will not help."""


class Unavailable(ClusterError):
    """Connection refused or reset, timeout, 429 or 5xx: try again later."""

    transient = True

    def __init__(self, message: str, *, status: int = 0, reason: str = "", retry_after: float | None = None):
        super().__init__(message, status=status, reason=reason)
        self.retry_after = retry_after
