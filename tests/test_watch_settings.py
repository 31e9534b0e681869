"""Settings of the provider APIs, watches and Rivya webhooks; the watch back-off schedule."""

from __future__ import annotations

import pytest

from service.settings import DOCUMENTED, ConfigError, Settings
from service.signing import new_secret
from service.watch_service import backoff_delay

NEW = (
    "EVOLINK_BASE_URL",
    "EVOLINK_API_KEY",
    "EVOLINK_CONFIRM",
    "APIFRAME_BASE_URL",
    "RIVYA_BASE_URL",
    "RIVYA_API_KEY",
    "RIVYA_WEBHOOK_SECRET",
    "REVE_ART_BASE_URL",
    "REVE_ART_API_KEY",
    "WATCH_BACKOFF",
    "WATCH_DEADLINE",
    "PROVIDER_TIMEOUT",
    "EVOLINK_API_RATE",
    "APIFRAME_API_RATE",
    "RIVYA_API_RATE",
    "REVE_ART_API_RATE",
    "API_RATE_WINDOW",
)


def test_defaults_are_the_providers_real_apis() -> None:
    settings = Settings.from_env({})
    assert settings.evolink_base_url == "https://api.evolink.ai"
    assert settings.apiframe_base_url == "https://api.apiframe.ai"
    assert settings.rivya_base_url == "https://rivya.ai"
    assert settings.reve_art_base_url == "https://reve-art.com"
    assert (settings.watch_backoff, settings.watch_deadline, settings.provider_timeout) == (
        (2.0, 60.0),
        86_400.0,
        10.0,
    )
    assert settings.evolink_confirm and not settings.evolink_confirmation  # no key, no check
    # Reve Art allows 10 requests a minute per account: most are left for the user's own.
    assert settings.api_rates == {"evolink": 60, "apiframe": 60, "rivya": 60, "reve-art": 4}
    assert settings.api_rate_window == 60.0
    assert all(
        DOCUMENTED[f"{p.upper().replace('-', '_')}_API_RATE"][0] == str(rate)
        for p, rate in settings.api_rates.items()
    )
    assert all(name in DOCUMENTED for name in NEW)
    assert DOCUMENTED["EVOLINK_BASE_URL"][0] == settings.evolink_base_url


def test_values_from_the_environment() -> None:
    secret = new_secret()
    settings = Settings.from_env(
        {
            "RELAY_EVOLINK_BASE_URL": "http://127.0.0.1:9000/",
            "RELAY_EVOLINK_API_KEY": " ek ",
            "RELAY_RIVYA_WEBHOOK_SECRET": secret,
            "RELAY_REVE_ART_API_KEY": "rk",
            "RELAY_WATCH_BACKOFF": "0.5, 30",
            "RELAY_WATCH_DEADLINE": "3600",
            "RELAY_PROVIDER_TIMEOUT": "2.5",
            "RELAY_REVE_ART_API_RATE": "8",
            "RELAY_API_RATE_WINDOW": "5",
        }
    )
    assert (settings.api_rates["reve-art"], settings.api_rates["rivya"]) == (8, 60)
    assert settings.api_rate_window == 5.0
    assert settings.evolink_base_url == "http://127.0.0.1:9000"
    assert str(settings.evolink_api_key) == "ek" and settings.evolink_confirmation
    assert str(settings.rivya_webhook_secret) == secret
    assert str(settings.reve_art_api_key) == "rk"
    assert settings.watch_backoff == (0.5, 30.0)
    assert (settings.watch_deadline, settings.provider_timeout) == (3600.0, 2.5)
    off = Settings.from_env({"RELAY_EVOLINK_API_KEY": "ek", "RELAY_EVOLINK_CONFIRM": "false"})
    assert not off.evolink_confirmation
    assert "ek" not in repr(settings)  # secrets stay out of reprs


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("EVOLINK_BASE_URL", "api.evolink.ai"),
        ("REVE_ART_BASE_URL", "ftp://reve-art.com"),
        ("EVOLINK_CONFIRM", "maybe"),
        ("RIVYA_WEBHOOK_SECRET", "whsec_not*base64"),
        ("WATCH_BACKOFF", "2"),
        ("WATCH_BACKOFF", "60,2"),
        ("WATCH_BACKOFF", "0,60"),
        ("WATCH_BACKOFF", "2,x"),
        ("WATCH_DEADLINE", "0"),
        ("WATCH_DEADLINE", "99999999"),
        ("PROVIDER_TIMEOUT", "fast"),
        ("PROVIDER_TIMEOUT", "301"),
        ("REVE_ART_API_RATE", "0"),
        ("EVOLINK_API_RATE", "many"),
        ("API_RATE_WINDOW", "0"),
    ],
)
def test_unusable_values_are_refused(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({f"RELAY_{name}": value})
    assert f"RELAY_{name}" in str(caught.value)


def test_backoff_doubles_up_to_the_cap() -> None:
    assert [backoff_delay((2.0, 60.0), step) for step in range(7)] == [2, 4, 8, 16, 32, 60, 60]
    assert backoff_delay((2.0, 60.0), 10_000) == 60
    assert backoff_delay((0.05, 0.2), 1) == 0.1
