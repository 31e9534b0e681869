"""How ``relay`` dispatches, and its argument types, in one process (no server).

The commands themselves run end to end in ``test_cli_help_status.py``,
``test_admin_and_cli.py`` and ``test_watches.py``.
"""

from __future__ import annotations

import argparse
import ast
import os
from pathlib import Path

import pytest

from service import cli
from service.cli_args import parse_duration, parse_meta, parse_when
from service.cli_help import subcommands
from service.settings import Settings
from tests.fakes import FakeClock

SERVICE = Path(__file__).resolve().parent.parent / "service"


def _leaf_parsers() -> dict[str, argparse.ArgumentParser]:
    """Every command a person can run: parsers without sub-commands of their own."""
    return {
        name: parser
        for name, parser in subcommands(cli.build_parser()).items()
        if not any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)
    }


def test_every_command_names_its_handler() -> None:
    leaves = _leaf_parsers()
    assert {"relay serve", "relay prune", "relay deliveries list", "relay watches dismiss"} <= set(
        leaves
    )
    for name, parser in leaves.items():
        assert callable(parser.get_default("func")), name


def test_the_command_modules_do_not_import_the_entry_point() -> None:
    """``service.cli`` imports the command modules; none imports it back, not even inside a
    function (the cycle that once hid ``parse_duration`` there)."""
    for path in sorted(SERVICE.glob("cli_*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                imported = {node.module or ""} | {
                    f"{node.module}.{alias.name}" for alias in node.names
                }
            elif isinstance(node, ast.Import):
                imported = {alias.name for alias in node.names}
            else:
                continue
            assert "service.cli" not in imported, f"{path.name} imports service.cli"


def test_durations() -> None:
    assert [parse_duration(t) for t in ("90", "90s", " 15m ", "2h", "7 d", "1w")] == [
        90,
        90,
        900,
        7200,
        7 * 86400,
        604800,
    ]
    for wrong in ("", "h", "2y", "-1h", "1.5h", "2h30m"):
        with pytest.raises(argparse.ArgumentTypeError, match="not a duration"):
            parse_duration(wrong)


def test_meta_pairs() -> None:
    assert parse_meta("user=u1") == ("user", "u1")
    assert parse_meta("note=a=b") == ("note", "a=b")
    assert parse_meta("empty=") == ("empty", "")
    for wrong in ("user", "=u1"):
        with pytest.raises(argparse.ArgumentTypeError, match="key=value"):
            parse_meta(wrong)


def test_when_is_a_duration_ago_or_a_time() -> None:
    clock = FakeClock()
    assert parse_when("2h", clock) == clock.now - 7200
    assert parse_when("90", clock) == clock.now - 90
    assert parse_when("2026-11-21T03:00:00Z", clock) == 1795230000.0
    assert parse_when("2026-11-21T04:00:00+01:00", clock) == 1795230000.0
    for wrong in ("yesterday", "2026-11-21T03:00:00", "2026-13-01T00:00:00Z"):
        with pytest.raises(argparse.ArgumentTypeError, match="not a duration or a time"):
            parse_when(wrong, clock)


@pytest.fixture
def no_relay_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """``relay`` in this process: no ``RELAY_*`` variable from outside, logging left alone."""
    for name in list(os.environ):
        if name.startswith("RELAY_"):
            monkeypatch.delenv(name)
    monkeypatch.setattr(cli, "configure_logging", lambda *_args: None)


@pytest.mark.usefixtures("no_relay_environment")
def test_a_wrong_time_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """Said in one line on stderr and exit status 2, like every other wrong flag (it used to
    be a stack trace, then the whole usage block before the line that matters)."""
    with pytest.raises(SystemExit) as exit_:
        cli.main(["deliveries", "list", "--since", "2026-11-21T03:00:00"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == (
        "relay deliveries list: argument --since: not a duration or a time:"
        " '2026-11-21T03:00:00' (try 2h or 2026-11-21T03:00:00Z)"
        " (see relay deliveries list --help)\n"
    )


@pytest.mark.usefixtures("no_relay_environment")
def test_flags_override_the_settings_the_command_gets(monkeypatch: pytest.MonkeyPatch) -> None:
    got: list[Settings] = []

    def serve(settings: Settings, _args: argparse.Namespace) -> int:
        got.append(settings)
        return 7

    monkeypatch.setattr(cli, "_serve", serve)
    assert cli.main(["serve"]) == 7
    assert cli.main(["--database-url", "sqlite:///x.db", "serve", "--no-worker"]) == 7
    assert cli.main(["serve", "--no-migrate"]) == 7
    defaults, no_worker, no_migrate = got
    assert (defaults.run_worker, defaults.migrate_on_start) == (True, True)
    assert (no_worker.run_worker, no_worker.migrate_on_start) == (False, True)
    assert no_worker.database_url == "sqlite:///x.db"
    assert (no_migrate.run_worker, no_migrate.migrate_on_start) == (True, False)


@pytest.mark.usefixtures("no_relay_environment")
def test_prune_reports_progress(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    database = f"sqlite:///{tmp_path / 'relay.db'}"
    assert cli.main(["--database-url", database, "prune", "--days", "3"]) == 0
    assert capsys.readouterr().out == "\rpruned 0 events older than 3 days\n"
