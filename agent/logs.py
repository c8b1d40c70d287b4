"""structlog set-up: console lines on a terminal, JSON lines otherwise (journald, files, pipes)."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable, MutableMapping
from typing import Any, TextIO

import structlog

SENSITIVE_KEYS = ("token", "password", "authorization", "secret", "credentials")
# Bearer tokens and JWTs (ServiceAccount tokens) wherever they appear in a message.
_SECRET_PATTERNS = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+|eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9._-]+")


def redact(_: object, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Secrets never reach a log line: sensitive keys are masked, tokens inside strings are cut out."""
    for key, value in list(event.items()):
        if any(word in key.lower() for word in SENSITIVE_KEYS) and not key.endswith("_file"):
            event[key] = "[redacted]"
        elif isinstance(value, str):
            event[key] = _SECRET_PATTERNS.sub(lambda m: (m.group(1) or "") + "[redacted]", value)
    return event


def configure(format: str = "auto", level: str = "info", stream: TextIO | None = None) -> None:
    out = stream or sys.stderr
    use_console = format == "console" or (format == "auto" and out.isatty())
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer(colors=False) if use_console else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    # Libraries log through the standard logging module: same format and stream. aiohttp's server logs
    # every malformed request with a traceback; over a local socket that is any user's to trigger, so
    # only its critical messages are kept.
    handler = logging.StreamHandler(out)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, redact, renderer],
        foreign_pre_chain=[structlog.processors.add_log_level,
                           structlog.processors.TimeStamper(fmt="iso", utc=True)],
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)


def get_logger(**context: object) -> structlog.typing.FilteringBoundLogger:
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger().bind(**context)
    return logger


class Problem:
    """A problem said once per distinct message while it lasts, and once more when it clears: a loop retrying
    every second through an outage writes a line when the problem starts or changes and one when it ends, not
    one per attempt. `text` is the problem now ("" while none), for status and health."""

    def __init__(self) -> None:
        self.text = ""

    def __bool__(self) -> bool:
        return bool(self.text)

    def set(self, say: Callable[..., object], message: str, **context: object) -> None:
        if message != self.text:
            say(message, **context)
        self.text = message

    def clear(self, say: Callable[..., object] | None = None, message: str = "", **context: object) -> None:
        """No problem any more; `say(message, previous_error=...)` once, if there was one."""
        if self.text and say is not None:
            say(message, previous_error=self.text, **context)
        self.text = ""
