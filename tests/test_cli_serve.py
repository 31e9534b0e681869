"""The first start: ``make run PORT=...``, ``relay serve --port`` and the public URL that
follows it, and a port already in use said in one line before anything is made."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx

from tests.conftest import EVOLINK_COMPLETED, bound_socket
from tests.nginx_process import free_port
from tests.relay_process import RelayProcess

ROOT = Path(__file__).resolve().parent.parent


def test_make_run_takes_a_port() -> None:
    def run_line(*args: str) -> str:
        dry = subprocess.run(
            ["make", "--no-print-directory", "-n", "-B", "run", "VENV=/nonexistent/venv", *args],  # noqa: S607
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return dry.stdout.splitlines()[-1]

    assert run_line("PORT=8080") == "/nonexistent/venv/bin/relay serve --port 8080"
    assert run_line() == "/nonexistent/venv/bin/relay serve"


def test_the_default_public_url_follows_the_port(tmp_path: Path) -> None:
    """No RELAY_PUBLIC_URL: a URL minted by the CLI reaches the relay on the port it serves."""
    relay = RelayProcess(tmp_path, free_port(), RELAY_PUBLIC_URL="")
    relay.start()
    try:
        shell = {k: v for k, v in relay.env.items() if k != "RELAY_PUBLIC_URL"}
        minted = subprocess.run(
            [sys.executable, "-m", "service", "mint-url", "evolink"],
            env=shell,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert minted.returncode == 0, minted.stderr
        url = json.loads(minted.stdout)["url"]
        assert url.startswith(f"http://127.0.0.1:{relay.port}/callbacks/evolink/")
        # (this shell's default would be port 8000: the CLI says whose it used)
        assert "the running relay's RELAY_PUBLIC_URL" in minted.stderr
        assert httpx.post(url, json=EVOLINK_COMPLETED).status_code == 200
    finally:
        relay.stop()


def test_a_port_in_use_is_one_line_before_anything_is_made(tmp_path: Path) -> None:
    taken = bound_socket()
    taken.listen()
    port = taken.getsockname()[1]
    database = tmp_path / "relay.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env["RELAY_DATABASE_URL"] = f"sqlite:///{database}"
    try:
        result = subprocess.run(
            [sys.executable, "-m", "service", "serve", "--port", str(port)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        taken.close()
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == f"relay: cannot listen on 127.0.0.1:{port}: Address already in use\n"
    assert not database.exists()  # no store, no generated admin token or keys, no URL shown
