"""A relay as a real subprocess (``python -m service serve``), for crash and replica tests."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ADMIN = "crash-admin-token"


class RelayProcess:
    """``relay serve`` on ``port`` with test settings; keyword arguments override RELAY_*."""

    def __init__(self, tmp_path: Path, port: int, *args: str, **env: str) -> None:
        self.args = args
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
        self.env.update(
            RELAY_DATABASE_URL=f"sqlite:///{tmp_path / 'crash.db'}",
            RELAY_PUBLIC_URL=self.base,
            RELAY_ADMIN_TOKEN=ADMIN,
            RELAY_SECRET_KEY="crash-signing-key",
            RELAY_ALLOW_PRIVATE_TARGETS="true",
            RELAY_LOG_LEVEL="warning",
        )
        self.env.update(env)
        #: Where the admin API answers: the admin listener's address when RELAY_ADMIN_LISTEN
        #: sets one (host:port), else the one port. (Set it when a flag moves the listener.)
        admin_listen = self.env.get("RELAY_ADMIN_LISTEN")
        self.admin_base = f"http://{admin_listen}" if admin_listen else self.base
        self.process: subprocess.Popen[bytes] | None = None
        #: Where the relay's output goes (appended across restarts); None discards it.
        self.log_path: Path | None = None
        #: The relay's open-file limit (soft and hard, RLIMIT_NOFILE); None keeps ours.
        self.open_files: int | None = None

    def start(self) -> RelayProcess:
        log = self.log_path.open("ab") if self.log_path is not None else None
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service", "serve", "--port", str(self.port), *self.args],
            env=self.env,
            stdout=log or subprocess.DEVNULL,
            stderr=subprocess.STDOUT if log else subprocess.DEVNULL,
            preexec_fn=self._limit_open_files if self.open_files is not None else None,
        )
        if log is not None:
            log.close()  # the child holds its own descriptor
        # A generous bound: it only matters when the relay cannot start, and a busy two-core
        # machine (another suite beside this one, coverage measuring) starts it slowly.
        deadline = time.time() + 60
        bases = dict.fromkeys([self.base, self.admin_base])  # both listeners, when apart
        while time.time() < deadline and self.process.poll() is None:
            try:
                if all(httpx.get(f"{b}/healthz", timeout=1).status_code == 200 for b in bases):
                    return self
            except httpx.TransportError:
                time.sleep(0.05)
        code = self.process.poll()
        self.kill()  # not left running (or unreaped) behind the failure
        raise AssertionError(f"relay did not start (exit status {code})")

    def _limit_open_files(self) -> None:
        assert self.open_files is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.open_files, self.open_files))

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "service", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    @property
    def admin(self) -> dict[str, str]:
        return {"authorization": f"Bearer {ADMIN}"}

    def all_deliveries(self, status: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        params: dict[str, Any] = {"status": status, "limit": 500}
        while True:
            page = httpx.get(
                f"{self.admin_base}/v1/deliveries", params=params, headers=self.admin
            ).json()
            items += page["items"]
            if page["next_cursor"] is None:
                return items
            params["cursor"] = page["next_cursor"]
