"""The stop's settings: the drain is part of the stop deadline."""

from __future__ import annotations

import pytest

from agent.config import ConfigError, parse_settings


def test_the_drain_defaults_to_a_second_and_must_fit_the_stop_deadline() -> None:
    settings = parse_settings('vm_name = "a"', require_cluster=False)
    assert settings.sync.drain == 1.0 and settings.sync.stop_deadline == 10.0
    with pytest.raises(ConfigError, match=r"^sync\.drain: must be shorter than sync\.stop_deadline \(3s\)"):
        parse_settings('vm_name = "a"\n[sync]\nstop_deadline = "3s"\ndrain = "3s"\n', require_cluster=False)
