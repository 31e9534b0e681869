"""The reliability suite in its short form (``bench/reliability`` runs the full one).

Each scenario runs real relays, subscribers and clients (see ``tests/reliability``); a test
fails when any of its rows reports a problem, and the message carries the row's figures.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability import Context, postgres_url
from tests.reliability.suite import Scenario, scenarios

CASES = list(scenarios())


@pytest.mark.slow
@pytest.mark.reliability
@pytest.mark.parametrize(
    ("section", "scenario"),
    CASES,
    ids=[f"{f.__module__.rsplit('.', 1)[1]}:{f.__name__}" for _, f in CASES],
)
def test_scenario(
    section: str, scenario: Scenario, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # These scenarios judge latency (a provider's p99 under attack, recovery times): the relays
    # they start run without the coverage tracer `make test` puts in other subprocesses, which
    # costs about 1.65x the CPU and would make the limits measure the tracer.
    monkeypatch.delenv("COVERAGE_PROCESS_CONFIG", raising=False)
    rows = scenario(Context(full=False, work_dir=tmp_path, postgres_url=postgres_url()))
    assert rows, "a scenario must report at least one row"
    for row in rows:
        assert row.section == section
        assert row.ok, f"{row.scenario}: {row.problems} (figures: {row.figures})"
