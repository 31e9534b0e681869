"""``relay`` run as a process: every wrong value of every command is one line on stderr and
exit status 2 (never a traceback); subscribers switched and rotated from a shell; the whole last
error of a failed delivery."""

from __future__ import annotations

import argparse
import io
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from service import cli
from service.cli_command import print_table
from service.cli_help import subcommands
from tests.conftest import EVOLINK_COMPLETED, RelayServer


def relay_cli(*args: str, database: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    environment.update(RELAY_DATABASE_URL=f"sqlite:///{database}", **env)
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


#: A wrong value for each command that takes one (the command, then its arguments).
WRONG = [
    ("relay", ["--database-url", "nope://x", "status"]),
    ("relay", ["no-such-command"]),
    ("relay serve", ["serve", "--port", "99999"]),
    ("relay serve", ["serve", "--port", "-1"]),
    ("relay serve", ["serve", "--workers", "0"]),
    ("relay serve", ["serve", "--admin-port", "http"]),
    ("relay prune", ["prune", "--days", "-1"]),
    ("relay mint-url", ["mint-url", "acme"]),
    ("relay mint-url", ["mint-url", "evolink", "--ttl", "0"]),
    ("relay mint-url", ["mint-url", "evolink", "--ttl", "2x"]),
    ("relay mint-url", ["mint-url", "evolink", "--meta", "no-equals-sign"]),
    ("relay subscribers add", ["subscribers", "add", "not-a-url"]),
    ("relay subscribers add", ["subscribers", "add", "https://example.com", "--provider", "x"]),
    ("relay subscribers add", ["subscribers", "add", "https://example.com", "--type", "nope"]),
    ("relay subscribers remove", ["subscribers", "remove", "sub_unknown"]),
    ("relay subscribers enable", ["subscribers", "enable", "sub_unknown"]),
    ("relay subscribers disable", ["subscribers", "disable", "sub_unknown"]),
    ("relay subscribers rotate", ["subscribers", "rotate", "sub_unknown"]),
    ("relay deliveries list", ["deliveries", "list", "--since", "2x"]),
    ("relay deliveries list", ["deliveries", "list", "--until", "yesterday"]),
    ("relay deliveries list", ["deliveries", "list", "--since", "1" + "0" * 400 + "w"]),
    ("relay deliveries list", ["deliveries", "list", "--limit", "-5"]),
    ("relay deliveries list", ["deliveries", "list", "--status", "lost"]),
    ("relay replay", ["replay", "dlv_unknown"]),
    ("relay replay", ["replay", "--failed", "--since", "2x"]),
    ("relay replay", ["replay", "--failed", "--subscriber", "sub_unknown"]),
    ("relay watch", ["watch", "acme", "t1"]),
    ("relay watch", ["watch", "rivya", "t1", "--deadline", "soon"]),
    ("relay watch", ["watch", "rivya", "t1", "--poll-after", "2x"]),
    ("relay watch", ["watch", "rivya", "t1", "--deadline", "9" * 5000]),
    ("relay watches list", ["watches", "list", "--limit", "0"]),
    ("relay watches list", ["watches", "list", "--state", "asleep"]),
    ("relay watches cancel", ["watches", "cancel", "wch_unknown"]),
    ("relay watches release", ["watches", "release", "wch_unknown"]),
    ("relay watches dismiss", ["watches", "dismiss", "wch_unknown"]),
    ("relay simulate", ["simulate", "evolink", "--callback-url", "nonsense"]),
    ("relay simulate", ["simulate", "evolink", "--callback-url", "http://x/", "--timeout", "-1"]),
    (
        "relay simulate",
        ["simulate", "evolink", "--callback-url", "http://x/", "--retry-delays", "x"],
    ),
    ("relay archive list", ["archive", "list", "--limit", "abc"]),
    ("relay archive retry", ["archive", "retry", "evt_unknown"]),
    ("relay keys create", ["keys", "create", "--scope", "root"]),
    ("relay events list", ["events", "list", "--meta", "bad key=x"]),
    ("relay events list", ["events", "list", "--status", "lost"]),
    ("relay events list", ["events", "list", "--since", "2x"]),
    ("relay deliveries list", ["deliveries", "list", "--meta", "no-equals-sign"]),
    ("relay watches list", ["watches", "list", "--meta", "tenant"]),
    ("relay subscribers add", ["subscribers", "add", "https://example.com", "--meta", "k"]),
    (
        "relay subscribers add",
        ["subscribers", "add", "https://example.com", "--max-per-second", "0"],
    ),
    (
        "relay subscribers add",
        ["subscribers", "add", "https://example.com", "--header", "Host: evil"],
    ),
    ("relay subscribers set", ["subscribers", "set", "sub_unknown", "--max-per-second", "5"]),
    ("relay subscribers set", ["subscribers", "set", "sub_unknown", "--max-per-second", "x"]),
    ("relay subscribers set", ["subscribers", "set", "sub_unknown", "--header", "no colon"]),
    ("relay keys revoke", ["keys", "revoke", "key_unknown"]),
]


def _leaves() -> dict[str, argparse.ArgumentParser]:
    return {
        name: parser
        for name, parser in subcommands(cli.build_parser()).items()
        if not any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)
    }


def test_every_command_that_takes_a_value_has_a_wrong_one_tried() -> None:
    """A command added later with an argument joins ``WRONG`` (or this fails)."""
    takes_values = {
        name
        for name, parser in _leaves().items()
        if any(a.nargs != 0 for a in parser._actions if not isinstance(a, argparse._HelpAction))
    }
    assert takes_values <= {name for name, _args in WRONG}


@pytest.mark.parametrize(("command", "args"), WRONG, ids=[" ".join(a) for _c, a in WRONG])
def test_a_wrong_value_is_one_line_and_exit_status_2(
    tmp_path: Path, command: str, args: list[str]
) -> None:
    result = relay_cli(*args, database=tmp_path / "relay.db")
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{command}: ") or lines[0].startswith("relay: "), lines[0]
    assert result.stdout == ""


@pytest.mark.parametrize("command", sorted(_leaves()))
def test_an_unknown_flag_is_one_line_and_exit_status_2(tmp_path: Path, command: str) -> None:
    words = command.split()[1:]
    result = relay_cli(*words, "--no-such-flag", database=tmp_path / "relay.db")
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith("relay") and line.endswith(" --help)"), line


def test_replaying_an_unknown_delivery_says_not_found(tmp_path: Path) -> None:
    result = relay_cli("replay", "dlv_unknown", database=tmp_path / "relay.db")
    assert result.returncode == 2
    assert result.stderr == "relay: not_found: no delivery dlv_unknown\n"
    assert result.stdout == ""  # nothing replayed, no progress bar


def test_subscribers_are_enabled_disabled_and_rotated_from_a_shell(tmp_path: Path) -> None:
    database = tmp_path / "relay.db"
    added = relay_cli(
        "subscribers",
        "add",
        "http://127.0.0.1:9/hook",
        database=database,
        RELAY_ALLOW_PRIVATE_TARGETS="true",
    )
    assert added.returncode == 0, added.stderr
    fields = dict(line.split(":", 1) for line in added.stdout.splitlines())
    sub_id, first_secret = fields["id"].strip(), fields["secret"].split()[0]

    disabled = relay_cli("subscribers", "disable", sub_id, database=database)
    assert (disabled.returncode, disabled.stdout) == (0, f"{sub_id}: disabled\n")
    listed = relay_cli("subscribers", "list", database=database).stdout.splitlines()
    assert listed[1].split()[:2] == [sub_id, "no"]

    enabled = relay_cli("subscribers", "enable", sub_id, database=database)
    assert (enabled.returncode, enabled.stdout) == (0, f"{sub_id}: enabled\n")
    listed = relay_cli("subscribers", "list", database=database).stdout.splitlines()
    assert listed[1].split()[:2] == [sub_id, "yes"]

    rotated = relay_cli("subscribers", "rotate", sub_id, database=database)
    assert rotated.returncode == 0, rotated.stderr
    lines = rotated.stdout.splitlines()
    new_secret = lines[1].split()[1]
    assert new_secret.startswith("whsec_") and new_secret != first_secret
    assert lines[2].startswith("the previous secret signs beside it until ")


def test_the_last_error_is_shown_whole(
    relay_factory: Callable[..., RelayServer], tmp_path: Path
) -> None:
    """Wrapped to the terminal's width under its column, or on its row with ``--wide``."""
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there: connection refused
    relay = relay_factory(retry_delays=(0.05,))
    relay.add_subscriber(f"http://127.0.0.1:{port}/a/long/path/for/the/hook")
    relay.post_callback(relay.mint(), EVOLINK_COMPLETED)
    (failed,) = relay.wait_deliveries(1, "failed")
    error = failed["last_error"]
    assert error == f"connection refused: 127.0.0.1:{port}"

    database = tmp_path / "relay.db"
    narrow = relay_cli("deliveries", "list", database=database, COLUMNS="100")
    assert narrow.returncode == 0, narrow.stderr
    header, *rows, total = narrow.stdout.splitlines()
    column = header.index("LAST ERROR")
    assert len(rows) > 1  # wrapped: the other columns leave it the narrowest (MIN_WRAP)
    assert " ".join(row[column:].strip() for row in rows) == error
    assert total == "1 failed deliveries"

    wide = relay_cli("deliveries", "list", "--wide", database=database, COLUMNS="100")
    header, row, total = wide.stdout.splitlines()
    assert row.endswith(error)


def test_a_table_wraps_only_its_last_column_and_keeps_every_word() -> None:
    out = io.StringIO()
    text = "word " * 40 + "https://example.com/" + "x" * 50
    print_table([["A", "LAST"], ["a-long-cell", text]], out, width=60)
    lines = out.getvalue().splitlines()
    # Within the width, but for a word too long for it, which stays whole (a URL to copy).
    assert all(len(line) <= 60 for line in lines[:-1])
    assert lines[-1] == " " * 13 + "https://example.com/" + "x" * 50
    assert lines[1].startswith("a-long-cell  word")
    assert " ".join(line[13:] for line in lines[1:]) == text.strip()
    narrow = io.StringIO()
    print_table([["A" * 50, "LAST"], ["b", "one two three"]], narrow, width=40)
    assert narrow.getvalue().splitlines()[1].endswith("one two three")  # MIN_WRAP kept
