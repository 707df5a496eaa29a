"""The engine's settings come from Django's (the environment, in ruddervirt/settings.py)."""

from __future__ import annotations

from django.test import override_settings

from builds.services import engine_config


@override_settings(RUDDERVIRT_BOOT_KEY_INTERVAL_MS=250, RUDDERVIRT_BOOT_KEY_HOLD_MS=40)
def test_the_boot_command_pace_is_a_setting():
    config = engine_config()
    assert config.boot_key_interval_s == 0.25
    assert config.boot_key_hold_ms == 40


def test_the_default_pace_is_a_tenth_of_a_second_per_key():
    assert engine_config().boot_key_interval_s == 0.1
