"""The reliability suite: crashes, storage outages, hostile input, forged callbacks, hostile
subscribers, the provider side (status APIs) and the admin surface, each run against real
relays.

Every scenario is a function ``run(ctx: Context) -> list[Row]`` in one of this package's
modules, registered in ``SECTIONS``. The same code serves two callers:

* ``tests/test_reliability.py`` runs every scenario in its short form inside ``make test``
  and fails on any row whose ``problems`` is not empty;
* ``bench/reliability`` runs the full form and writes the table of figures to
  ``bench/results/reliability.md`` and ``docs/reliability.md``.

A row never hides a bad figure: duplicates, refusals and timings are reported as measured,
and what the issue forbids (an acknowledged callback lost, a forged one forwarded, a 5xx to
hostile input, a request reaching a private address) is a problem that fails the row.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@dataclasses.dataclass
class Context:
    """What a scenario needs: its size, a scratch folder, and the PostgreSQL to use (if any)."""

    full: bool
    work_dir: Path
    postgres_url: str | None = None

    def pick(self, short: Any, full: Any) -> Any:
        """The short-form value in ``make test``, the full one in ``bench/reliability``."""
        return full if self.full else short

    @contextlib.contextmanager
    def postgres(self) -> Iterator[str]:
        """A URL of a fresh, empty schema of the test PostgreSQL, dropped afterwards.

        Skips when PostgreSQL is unreachable (fails instead when ``CI`` is set), as the
        store contract tests do.
        """
        from tests.test_store_contract import fresh_schema

        with fresh_schema() as url:
            yield url

    def scratch(self, name: str) -> Path:
        path = self.work_dir / name
        path.mkdir(parents=True, exist_ok=True)
        return path


@dataclasses.dataclass
class Row:
    """One line of the table: a scenario, what it measured, how, and what went wrong."""

    section: str
    scenario: str
    figures: dict[str, Any]
    method: str
    problems: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def expect(self, condition: bool, problem: str) -> None:
        """Record ``problem`` unless ``condition`` holds (a row collects all its problems)."""
        if not condition:
            self.problems.append(problem)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def postgres_url() -> str | None:
    return os.environ.get("RELAY_TEST_POSTGRES_URL") or None
