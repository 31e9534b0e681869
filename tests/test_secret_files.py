"""Secrets from files: every secret setting also reads from ``RELAY_<NAME>_FILE``."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.settings import DOCUMENTED, SECRET_SETTINGS, ConfigError, Settings
from tests.conftest import bound_socket
from tests.relay_process import ADMIN, RelayProcess

WHSEC = "whsec_c2VjcmV0LWZyb20tYS1maWxl"

#: Each secret setting: a value it accepts, and where ``Settings`` keeps it.
SECRETS: dict[str, tuple[str, Callable[[Settings], Any]]] = {
    "DATABASE_URL": ("postgresql://relay:pw@db/relay", lambda s: s.database_url),
    "ADMIN_TOKEN": ("admin-from-file", lambda s: str(s.admin_token)),
    "SECRET_KEY": ("key-from-file", lambda s: ",".join(str(k) for k in s.secret_keys)),
    "APIFRAME_API_KEY": ("apiframe-from-file", lambda s: str(s.apiframe_api_key)),
    "APIFRAME_WEBHOOK_SECRET": ("v1-from-file", lambda s: str(s.apiframe_webhook_secret)),
    "EVOLINK_API_KEY": ("evolink-from-file", lambda s: str(s.evolink_api_key)),
    "RIVYA_API_KEY": ("rvya_sk_from_file", lambda s: str(s.rivya_api_key)),
    "RIVYA_WEBHOOK_SECRET": (WHSEC, lambda s: str(s.rivya_webhook_secret)),
    "REVE_ART_API_KEY": ("reve-from-file", lambda s: str(s.reve_art_api_key)),
    "ARCHIVE_ACCESS_KEY_ID": ("AKIAFROMFILE", lambda s: s.archive.options["access_key_id"]),
    "ARCHIVE_SECRET_ACCESS_KEY": (
        "s3-from-file",
        lambda s: s.archive.options["secret_access_key"],
    ),
}


def _env(tmp_path: Path, **env: str) -> dict[str, str]:
    """``env`` with an archive configured, so the archive's keys are read too."""
    return {"RELAY_ARCHIVE_URL": f"file://{tmp_path / 'archive'}", **env}


def test_every_secret_setting_can_come_from_a_file() -> None:
    """The list covers every Secret field of Settings (a new one cannot be forgotten)."""
    secret_fields = {
        f.name for f in dataclasses.fields(Settings) if "Secret" in str(f.type) and f.init
    }
    read_into = {
        "admin_token",
        "secret_keys",
        "apiframe_api_key",
        "apiframe_webhook_secret",
        "evolink_api_key",
        "rivya_api_key",
        "rivya_webhook_secret",
        "reve_art_api_key",
    }
    assert secret_fields == read_into
    assert set(SECRET_SETTINGS) == set(SECRETS)
    assert "<SECRET>_FILE" in DOCUMENTED


@pytest.mark.parametrize("name", SECRET_SETTINGS)
def test_secret_read_from_its_file(tmp_path: Path, name: str) -> None:
    """The file's content is the value, less the trailing newline an editor or echo adds."""
    value, read = SECRETS[name]
    path = tmp_path / "secret"
    path.write_text(value + "\n")
    settings = Settings.from_env(_env(tmp_path, **{f"RELAY_{name}_FILE": str(path)}))
    assert read(settings) == value
    # The same value set directly gives the same settings.
    direct = Settings.from_env(_env(tmp_path, **{f"RELAY_{name}": value}))
    assert read(direct) == value


def test_file_content_kept_but_its_trailing_newlines(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("new-key,old-key\r\n\n")
    settings = Settings.from_env({"RELAY_SECRET_KEY_FILE": str(path)})
    assert [str(k) for k in settings.secret_keys] == ["new-key", "old-key"]
    (tmp_path / "token").write_bytes(b"tok en\n")
    settings = Settings.from_env({"RELAY_ADMIN_TOKEN_FILE": str(tmp_path / "token")})
    assert settings.admin_token is not None and str(settings.admin_token) == "tok en"
    assert "tok en" not in repr(settings)


def test_both_set_is_an_error_naming_both(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("from-the-file\n")
    with pytest.raises(ConfigError) as raised:
        Settings.from_env(
            {"RELAY_ADMIN_TOKEN": "from-the-env", "RELAY_ADMIN_TOKEN_FILE": str(path)}
        )
    message = str(raised.value)
    assert "RELAY_ADMIN_TOKEN and RELAY_ADMIN_TOKEN_FILE" in message
    assert "from-the-env" not in message and "from-the-file" not in message


def test_an_empty_variable_beside_the_file_is_unset(tmp_path: Path) -> None:
    """Compose files often carry ``RELAY_ADMIN_TOKEN=`` (empty): that is not a second value."""
    path = tmp_path / "token"
    path.write_text("from-the-file")
    settings = Settings.from_env({"RELAY_ADMIN_TOKEN": "", "RELAY_ADMIN_TOKEN_FILE": str(path)})
    assert str(settings.admin_token) == "from-the-file"


def _unusable_file(tmp_path: Path, case: str) -> tuple[Path, str]:
    """A path of the kind ``case`` names, and what the error says about it."""
    if case == "missing":
        return tmp_path / "nowhere" / "token", "cannot read"
    if case == "a directory":
        return tmp_path, "cannot read"
    path = tmp_path / "token"
    if case == "empty":
        path.write_text("\n")
        return path, "is empty"
    path.write_bytes(b"\xff\xfesecret-bytes")  # not UTF-8
    return path, "not UTF-8"


@pytest.mark.parametrize("case", ["missing", "a directory", "empty", "not text"])
def test_unusable_file_names_the_variable_and_path_not_the_content(
    tmp_path: Path, case: str
) -> None:
    path, says = _unusable_file(tmp_path, case)
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({"RELAY_EVOLINK_API_KEY_FILE": str(path)})
    message = str(raised.value)
    assert message.startswith("RELAY_EVOLINK_API_KEY_FILE: ")
    assert str(path) in message and says in message
    assert "secret-bytes" not in message


def test_file_values_are_checked_like_variables(tmp_path: Path) -> None:
    """A Rivya secret from a file must be a whsec_ secret, as when set directly."""
    path = tmp_path / "rivya"
    path.write_text("not-a-whsec-secret!\n")
    with pytest.raises(ConfigError, match="RELAY_RIVYA_WEBHOOK_SECRET must be a whsec_"):
        Settings.from_env({"RELAY_RIVYA_WEBHOOK_SECRET_FILE": str(path)})


def test_relay_serves_with_the_admin_token_from_a_file(tmp_path: Path) -> None:
    """A real `relay serve` with RELAY_ADMIN_TOKEN_FILE only: the admin API takes that token."""
    token_file = tmp_path / "admin-token"
    token_file.write_text("token-from-a-mounted-file\n")
    sock = bound_socket()
    port = sock.getsockname()[1]
    sock.close()
    relay = RelayProcess(tmp_path, port, RELAY_ADMIN_TOKEN_FILE=str(token_file))
    del relay.env["RELAY_ADMIN_TOKEN"]
    relay.start()
    try:
        url = f"{relay.base}/v1/subscribers"
        accepted = httpx.get(url, headers={"authorization": "Bearer token-from-a-mounted-file"})
        assert accepted.status_code == 200, accepted.text
        refused = httpx.get(url, headers={"authorization": f"Bearer {ADMIN}"})
        assert refused.status_code == 401
        # The CLI reads the same file: it prints the token the server accepts.
        printed = relay.cli("admin-token")
        assert printed.returncode == 0, printed.stderr
        assert printed.stdout.strip() == "token-from-a-mounted-file"
    finally:
        relay.stop()
