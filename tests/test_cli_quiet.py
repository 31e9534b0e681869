"""``relay simulate`` and ``relay watch`` print their own lines only; the relay's log lines
(JSON on stderr) come with ``--verbose``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.nginx_process import free_port
from tests.relay_process import RelayProcess


def _cli(relay: RelayProcess, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        env={**relay.env, "RELAY_LOG_LEVEL": "info", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_simulate_prints_its_own_lines_only(tmp_path: Path) -> None:
    relay = RelayProcess(tmp_path, free_port())
    relay.start()
    try:
        minted = _cli(relay, "mint-url", "evolink")
        url = json.loads(minted.stdout)["url"]
        simulated = _cli(relay, "simulate", "evolink", "--callback-url", url)
        assert simulated.returncode == 0, simulated.stderr
        assert simulated.stderr == ""
        lines = simulated.stdout.splitlines()
        assert lines[0].startswith("simulating evolink: task ")
        assert lines[-1] == "delivered on attempt 1 of 4"
        assert not any(line.startswith("{") for line in lines)
    finally:
        relay.stop()


def test_watch_logs_only_with_verbose(tmp_path: Path) -> None:
    relay = RelayProcess(tmp_path, free_port())  # not started: the command works on the store
    quiet = _cli(relay, "watch", "rivya", "task_1", RELAY_RIVYA_API_KEY="k")
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == ""
    assert json.loads(quiet.stdout)["task_id"] == "task_1"

    verbose = _cli(relay, "watch", "rivya", "task_2", "--verbose", RELAY_RIVYA_API_KEY="k")
    assert verbose.returncode == 0, verbose.stderr
    (logged,) = [json.loads(line) for line in verbose.stderr.splitlines()]
    assert logged["event"] == "watch_created"
    assert logged["task_id"] == "task_2"
