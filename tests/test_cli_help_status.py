"""`relay --help` (every command, every flag's default) and `relay status` (the overview)."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from service.cli import build_parser
from service.cli_help import subcommands
from tests.conftest import EVOLINK_COMPLETED, RelayServer
from tests.subscriber_server import SubscriberServer


def relay_cli(*args: str, database: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    if database is not None:
        env["RELAY_DATABASE_URL"] = f"sqlite:///{database}"
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_help_lists_every_command_and_every_setting() -> None:
    result = relay_cli("--help")
    assert result.returncode == 0
    parser = build_parser()
    commands = [name.split()[1] for name in subcommands(parser) if name.count(" ") == 1]
    assert {"serve", "status", "replay", "deliveries", "subscribers", "prune"} <= set(commands)
    for command in commands:
        assert f"\n    {command} " in result.stdout, command
    from service.settings import DOCUMENTED, PREFIX

    for name in DOCUMENTED:
        assert f"{PREFIX}{name}" in result.stdout


def test_every_flag_says_its_default() -> None:
    """No flag anywhere leaves an operator guessing what happens without it."""
    parser = build_parser()
    flags = 0
    for command, sub in subcommands(parser).items():
        for action in sub._actions:
            if not action.option_strings or action.dest in ("help", "version"):
                continue
            flags += 1
            assert action.help and "[" in action.help and "default" in action.help, (
                command,
                action.option_strings,
            )
            assert "default" in sub.format_help()
    assert flags > 20
    database = parser._option_string_actions["--database-url"]
    assert "RELAY_DATABASE_URL" in str(database.help)


def test_status_prints_the_overview(
    relay_factory: Callable[..., RelayServer], tmp_path: Path
) -> None:
    sink = SubscriberServer(script=lambda n: (500, 0.0)).start()
    try:
        relay = relay_factory(retry_delays=(0.1,))
        relay.add_subscriber(sink.url)
        url = relay.mint()
        relay.post_callback(url, EVOLINK_COMPLETED)
        late = copy.deepcopy(EVOLINK_COMPLETED) | {"status": "processing", "progress": 50}
        relay.post_callback(url, late)  # superseded
        relay.wait_deliveries(1, "failed")
    finally:
        sink.stop()
    database = tmp_path / "relay.db"
    result = relay_cli("status", database=database)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("callback-relay status at ") and lines[0].endswith("(sqlite)")
    rows = {" ".join(line.split()) for line in lines}
    assert "SECTION WHAT COUNT" in rows
    assert "callbacks, last hour accepted 1" in rows
    assert "callbacks, last hour superseded 1" in rows
    assert "events, last hour generation.succeeded emitted 1" in rows
    assert "events, last hour generation.running superseded 1" in rows
    assert "deliveries, last hour failed 1" in rows
    assert "now failed deliveries 1" in rows
    assert "now pending deliveries 0" in rows
    assert any("relay replay --failed" in line for line in lines)

    as_json = relay_cli("--database-url", f"sqlite:///{database}", "status", "--json")
    assert as_json.returncode == 0, as_json.stderr
    summary = json.loads(as_json.stdout)
    assert summary["failed"] == 1
    assert summary["callbacks"] == {"accepted": 1, "superseded": 1}
    assert summary["counts_refusals"] is False


def test_migrate_shows_each_migration(tmp_path: Path) -> None:
    database = tmp_path / "fresh.db"
    first = relay_cli("migrate", database=database)
    assert first.returncode == 0, first.stderr
    from service.store.sqlite import MIGRATIONS

    for number, name in enumerate(MIGRATIONS, start=1):
        assert f"applying migration {number}/{len(MIGRATIONS)}: {name}" in first.stderr
    assert f"({len(MIGRATIONS)} applied)" in first.stderr
    again = relay_cli("migrate", database=database)
    assert "applying" not in again.stderr and "(0 applied)" in again.stderr


@pytest.mark.postgres
def test_migrate_shows_each_migration_on_postgres() -> None:
    from service.store.postgres import MIGRATIONS
    from tests.test_store_contract import fresh_schema

    with fresh_schema() as url:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
        result = subprocess.run(
            [sys.executable, "-m", "service", "--database-url", url, "migrate"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("applying migration") == len(MIGRATIONS)
