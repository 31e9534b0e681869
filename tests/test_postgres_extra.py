"""psycopg is the ``postgres`` extra: without it, a PostgreSQL URL fails in one clear line, and
SQLite needs none of it. The relay runs as a real ``relay`` process in an interpreter where
``import psycopg`` fails, as it does where the extra was not installed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: ``relay`` with psycopg and psycopg_pool unimportable (None in sys.modules blocks an import).
WITHOUT_PSYCOPG = (
    "import sys; sys.modules['psycopg'] = sys.modules['psycopg_pool'] = None; "
    "from service.cli import main; sys.exit(main())"
)
#: ``relay`` as it is, for a stand-in psycopg put first on the path.
RELAY = "import sys; from service.cli import main; sys.exit(main())"

EXPECTED = (
    "relay: RELAY_DATABASE_URL is a PostgreSQL URL but the PostgreSQL driver (psycopg) is not"
    " installed: pip install 'callback-relay[postgres]'\n"
)


def _relay(
    code: str, *args: str, database_url: str, path: list[Path] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env["RELAY_DATABASE_URL"] = database_url
    env["RELAY_LOG_LEVEL"] = "warning"
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in [*(path or []), ROOT])
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )


#: Nothing listens on port 1: had the relay tried to connect, it would say something else.
POSTGRES_URL = "postgresql://relay@127.0.0.1:1/relay"


@pytest.mark.parametrize(
    "args",
    [
        ["serve", "--port", "1"],
        ["serve", "--workers", "2", "--port", "1"],
        ["migrate"],
        ["worker"],
        ["deliveries", "list"],
    ],
    ids=" ".join,
)
def test_postgresql_url_without_psycopg_says_how_to_install_it(args: list[str]) -> None:
    result = _relay(WITHOUT_PSYCOPG, *args, database_url=POSTGRES_URL)
    assert (result.returncode, result.stderr) == (2, EXPECTED)
    assert result.stdout == ""


def test_psycopg_without_its_binary_package_says_the_same(tmp_path: Path) -> None:
    """psycopg installed alone (no psycopg-binary, no libpq) fails on import in its own words."""
    stand_in = tmp_path / "psycopg"
    stand_in.mkdir()
    (stand_in / "__init__.py").write_text(
        'raise ImportError("no pq wrapper available.\\nAttempts:\\n'
        "- couldn't import psycopg 'c' implementation: No module named 'psycopg_c'\")\n"
    )
    result = _relay(RELAY, "migrate", database_url=POSTGRES_URL, path=[tmp_path])
    assert (result.returncode, result.stderr) == (2, EXPECTED)


def test_sqlite_needs_no_psycopg(tmp_path: Path) -> None:
    """Without psycopg, SQLite deployments migrate and run commands as before."""
    url = f"sqlite:///{tmp_path / 'relay.db'}"
    migrated = _relay(WITHOUT_PSYCOPG, "migrate", database_url=url)
    assert migrated.returncode == 0, migrated.stderr
    assert "the schema is up to date" in migrated.stderr
    listed = _relay(WITHOUT_PSYCOPG, "deliveries", "list", database_url=url)
    assert listed.returncode == 0, listed.stderr
