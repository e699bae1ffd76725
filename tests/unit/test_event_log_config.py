"""``[state] keep_applied_days``: the event log's retention for `crmsync events purge`."""

from __future__ import annotations

import pytest

from crmsync.config import load_settings
from crmsync.errors import ConfigError


def test_the_default_is_30_days_and_the_environment_overrides_it(tmp_path) -> None:
    assert load_settings(None, env={}).state.keep_applied_days == 30
    path = tmp_path / "crmsync.toml"
    path.write_text("[state]\nkeep_applied_days = 90\n")
    assert load_settings(str(path), env={}).state.keep_applied_days == 90
    assert load_settings(str(path), env={"CRMSYNC_STATE_KEEP_APPLIED_DAYS": "7"}).state.keep_applied_days == 7


def test_less_than_a_day_is_refused_naming_the_key() -> None:
    with pytest.raises(ConfigError, match="state.keep_applied_days"):
        load_settings(None, env={"CRMSYNC_STATE_KEEP_APPLIED_DAYS": "0"})
