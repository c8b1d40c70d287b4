"""Durations written as strings with a unit ("500ms", "5s", "1m", "1h30m")."""

import re

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Return the duration in seconds; raise ValueError with a hint when the text is not one."""
    compact = text.strip()
    parts = list(_PART.finditer(compact))
    if not compact or "".join(p.group(0) for p in parts) != compact:
        raise ValueError(f"{text!r} is not a duration; write it with a unit, e.g. \"500ms\", \"5s\", \"1m\"")
    return sum(float(p.group(1)) * _UNIT_SECONDS[p.group(2)] for p in parts)
