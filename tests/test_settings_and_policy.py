"""Configuration parsing, the retry policy and outbound signatures, as units."""

from __future__ import annotations

import time

import pytest
from standardwebhooks import Webhook

from service.retention import Retention
from service.retry import next_delay
from service.settings import ConfigError, Settings
from service.signing import new_secret, sign


def test_settings_defaults_without_environment() -> None:
    """With no RELAY_* variables the relay serves SQLite with the documented defaults."""
    settings = Settings.from_env({})
    assert settings.database_url == "sqlite:///./relay.db"
    assert settings.public_url == "http://127.0.0.1:8000"
    assert settings.retry_delays == (1.0, 2.0, 4.0)
    assert settings.delivery_timeout == 10.0
    assert settings.max_body_bytes == 1024 * 1024
    assert settings.allow_private_targets is False
    assert settings.secret_keys == () and settings.admin_token is None


def test_settings_parse_lists_and_secrets() -> None:
    """Keys are newest first; CIDR lists and per-provider allowlists are parsed."""
    settings = Settings.from_env(
        {
            "RELAY_SECRET_KEY": "new, old",
            "RELAY_TRUSTED_PROXIES": "10.0.0.0/8, ::1",
            "RELAY_EVOLINK_ALLOWED_IPS": "203.0.113.0/24",
            "RELAY_RETRY_DELAYS": "0.5,5",
            "RELAY_PUBLIC_URL": "https://relay.example.com/",
            "UNRELATED": "x",
        }
    )
    assert [str(k) for k in settings.secret_keys] == ["new", "old"]
    assert "new" not in repr(settings)  # secrets never print
    assert len(settings.trusted_proxies) == 2
    assert str(settings.allowed_ips["evolink"][0]) == "203.0.113.0/24"
    assert settings.retry_delays == (0.5, 5.0)
    assert settings.public_url == "https://relay.example.com"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RELAY_MAX_BODY_BYTES", "lots"),
        ("RELAY_MAX_BODY_BYTES", "-1"),
        ("RELAY_LOG_FORMAT", "xml"),
        ("RELAY_TRUSTED_PROXIES", "10.0.0.0/33"),
        ("RELAY_RETRY_DELAYS", "1,two"),
        ("RELAY_RETRY_DELAYS", "-1"),
        ("RELAY_DELIVERY_TIMEOUT", "0"),
        ("RELAY_DELIVERY_TIMEOUT", "1,2"),
        ("RELAY_ALLOW_PRIVATE_TARGETS", "maybe"),
        ("RELAY_FAILED_RETENTION_DAYS", "soon"),
        ("RELAY_FAILED_RETENTION_DAYS", "7"),  # shorter than the 30 days of history
    ],
)
def test_settings_refuse_unusable_values(name: str, value: str) -> None:
    """A bad value is a ConfigError naming the variable, not a crash later."""
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})


def test_failed_deliveries_are_kept_for_ever_unless_told() -> None:
    """Failed deliveries wait for an operator: no limit by default, else one no shorter than
    the history's."""
    assert Settings.from_env({}).failed_retention_days is None
    settings = Settings.from_env({"RELAY_FAILED_RETENTION_DAYS": "90"})
    assert (settings.retention_days, settings.failed_retention_days) == (30, 90)
    retention = Retention(settings.retention_days, settings.failed_retention_days)
    assert retention.cutoffs(100 * 86_400) == (70 * 86_400, 10 * 86_400)
    assert Retention(30).cutoffs(100 * 86_400) == (70 * 86_400, None)


def test_retry_policy_is_one_two_four_then_give_up() -> None:
    """After 1, 2, 3 failures wait 1, 2, 4 s; after the 4th, give up."""
    delays = (1.0, 2.0, 4.0)
    assert [next_delay(delays, n) for n in range(5)] == [0.0, 1.0, 2.0, 4.0, None]
    assert next_delay((), 1) is None


def test_outbound_signature_verifies_with_standardwebhooks() -> None:
    """Our signature header verifies with the reference library, for each secret listed."""
    first, second = new_secret(), new_secret()
    body = b'{"specversion":"1.0","id":"evt_x"}'
    now = int(time.time())
    header = sign([first, second], "evt_x", now, body)
    headers = {"webhook-id": "evt_x", "webhook-timestamp": str(now), "webhook-signature": header}
    for secret in (first, second):
        Webhook(secret).verify(body, headers)
    with pytest.raises(Exception, match="signature"):
        Webhook(new_secret()).verify(body, headers)
