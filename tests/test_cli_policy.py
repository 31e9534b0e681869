"""The CLI and the running relay agree on policy (``service.served_policy``): a real relay
process records what it serves with in the store, and ``relay`` commands run in a shell with
other ``RELAY_*`` variables use it, and say so."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx

from tests.conftest import EVOLINK_COMPLETED
from tests.nginx_process import free_port
from tests.relay_process import ADMIN, RelayProcess


def _shell(relay: RelayProcess, **env: str) -> dict[str, str]:
    """Another shell on the same store: none of the server's settings but the store (and
    whatever ``env`` adds)."""
    shell = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    shell.update(RELAY_DATABASE_URL=relay.env["RELAY_DATABASE_URL"], **env)
    return shell


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_before_any_relay_started_the_shell_settings_are_used_and_said(tmp_path: Path) -> None:
    relay = RelayProcess(tmp_path, free_port())  # not started: its store, its settings
    refused = _cli("subscribers", "add", "http://127.0.0.1:9/hook", env=_shell(relay))
    assert refused.returncode == 2
    assert refused.stderr.startswith("relay: target_not_allowed: 127.0.0.1 is a loopback")
    allowed = _cli(
        "subscribers",
        "add",
        "http://127.0.0.1:9/hook",
        env=_shell(relay, RELAY_ALLOW_PRIVATE_TARGETS="true"),
    )
    assert allowed.returncode == 0, allowed.stderr
    assert allowed.stderr.startswith("relay: no relay has started on this store yet")


def test_the_cli_uses_the_running_relays_policy(tmp_path: Path) -> None:
    relay = RelayProcess(tmp_path, free_port())  # RELAY_ALLOW_PRIVATE_TARGETS=true
    relay.start()
    try:
        shell = _shell(
            relay,
            RELAY_PUBLIC_URL="https://shell.example",
            RELAY_SECRET_KEY=relay.env["RELAY_SECRET_KEY"],
            RELAY_ADMIN_TOKEN=ADMIN,
        )
        added = _cli("subscribers", "add", "http://127.0.0.1:9/hook", env=shell)
        assert added.returncode == 0, added.stderr
        assert added.stderr.startswith(
            "relay: using the running relay's RELAY_ALLOW_PRIVATE_TARGETS (recorded at its start,"
        )

        minted = _cli("mint-url", "evolink", env=shell)
        assert minted.returncode == 0, minted.stderr
        url = json.loads(minted.stdout)["url"]
        assert url.startswith(f"{relay.base}/callbacks/evolink/")
        assert "RELAY_PUBLIC_URL" in minted.stderr
        assert httpx.post(url, json=EVOLINK_COMPLETED).status_code == 200

        same = {**shell, "RELAY_PUBLIC_URL": relay.base}
        assert _cli("mint-url", "evolink", env=same).stderr == ""  # nothing to say

        other_key = _cli("mint-url", "evolink", env={**shell, "RELAY_SECRET_KEY": "other"})
        assert other_key.returncode == 2
        assert other_key.stdout == ""
        (line,) = other_key.stderr.splitlines()
        assert "signing key is not the running relay's" in line

        assert _cli("admin-token", env=shell).stdout.strip() == ADMIN
        other_token = _cli("admin-token", env={**shell, "RELAY_ADMIN_TOKEN": "other"})
        assert other_token.returncode == 2
        assert other_token.stdout == ""
        assert "admin token is not this shell's" in other_token.stderr

        # Restarted with private targets refused: the CLI follows.
        relay.stop()
        relay.env["RELAY_ALLOW_PRIVATE_TARGETS"] = "false"
        relay.start()
        refused = _cli(
            "subscribers",
            "add",
            "http://127.0.0.1:9/other",
            env={**shell, "RELAY_ALLOW_PRIVATE_TARGETS": "true"},
        )
        assert refused.returncode == 2
        assert "target_not_allowed" in refused.stderr
    finally:
        relay.stop()
