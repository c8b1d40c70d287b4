import io
import json

import structlog

from agent.logs import Problem, configure, get_logger

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


def test_a_problem_is_said_once_while_it_lasts_again_when_it_changes_and_once_when_it_clears() -> None:
    said: list[tuple[str, dict[str, object]]] = []

    def say(message: str, **context: object) -> None:
        said.append((message, context))

    problem = Problem()
    problem.clear(say, "works again")  # nothing to clear: nothing said
    for _attempt in range(3):
        problem.set(say, "cannot reach the apiserver", retry_in=1)
    problem.set(say, "forbidden")
    assert problem and problem.text == "forbidden"
    problem.clear(say, "works again")
    problem.clear(say, "works again")
    assert not problem and problem.text == ""
    assert said == [("cannot reach the apiserver", {"retry_in": 1}), ("forbidden", {}),
                    ("works again", {"previous_error": "forbidden"})]
