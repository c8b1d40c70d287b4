import io
import json

import structlog

from agent.logs import configure, get_logger

JWT = "eyJhbGciOiJSUzI1NiIsImtpZCI6IjEifQ.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQifQ.c2lnbmF0dXJl"


def test_secrets_never_reach_a_line() -> None:
    out = io.StringIO()
    configure("json", "debug", out)
    try:
        log = get_logger(vm="a")
        log.info("request", authorization=f"Bearer {JWT}", password="hunter2", token_file="/etc/vmesh-agent/token",
                 error=f"401 for Authorization: Bearer {JWT} and token {JWT}")
    finally:
        structlog.reset_defaults()
    line = json.loads(out.getvalue())
    assert JWT not in out.getvalue() and "hunter2" not in out.getvalue()
    assert line["password"] == "[redacted]"
    assert line["token_file"] == "/etc/vmesh-agent/token"  # paths are fine to show
    assert line["error"] == "401 for Authorization: Bearer [redacted] and token [redacted]"
    assert line["vm"] == "a"
