import pytest

from agent.durations import parse_duration


@pytest.mark.parametrize(("text", "seconds"), [("500ms", 0.5), ("5s", 5), ("1m", 60), ("1h30m", 5400), ("1.5s", 1.5)])
def test_parses(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5", "s", "5 s", "5x", "-1s", "1s2"])
def test_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)
