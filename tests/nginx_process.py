"""Debian's nginx as a real subprocess, running the project's deploy/nginx.conf on loopback.

The configuration is the deployed file itself; only what cannot be the same on a test machine is
rewritten: the relays' addresses, the listening port, and the paths of the pid file, logs,
temporary files and certificate. Each rewrite must match exactly once, so a change to the file
that a test would silently stop covering fails here instead.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import bound_socket

ROOT = Path(__file__).resolve().parent.parent
NGINX_CONF = ROOT / "deploy" / "nginx.conf"
MAKE_CERT = ROOT / "deploy" / "make-cert.sh"
NGINX = Path("/usr/sbin/nginx")


def require_nginx() -> None:
    """Skip without Debian's nginx (``make test`` installs it as root); fail on CI."""
    if NGINX.exists():
        return
    message = (
        f"Debian's nginx is not installed ({NGINX}); `make test` installs it when run as root"
        " (make nginx: apt-get install nginx)"
    )
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def free_port() -> int:
    sock = bound_socket()
    port: int = sock.getsockname()[1]
    sock.close()
    return port


def make_cert(directory: Path) -> Path:
    """A self-signed pair for 127.0.0.1 by the project's script; the certificate's path."""
    subprocess.run(
        [str(MAKE_CERT), str(directory), "127.0.0.1", "localhost"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return directory / "fullchain.pem"


def render(text: str, rewrites: dict[str, str]) -> str:
    for old, new in rewrites.items():
        assert text.count(old) == 1, f"{old!r} is not in the nginx config exactly once"
        text = text.replace(old, new)
    return text


class NginxProcess:
    """nginx on ``127.0.0.1:<port>`` in front of ``upstreams`` (two ``host:port``), in ``home``.

    ``extra`` rewrites apply after the standard ones (a test's variant of the file).
    """

    def __init__(
        self,
        home: Path,
        upstreams: tuple[str, str],
        *,
        conf: Path = NGINX_CONF,
        extra: dict[str, str] | None = None,
    ) -> None:
        self.home = home
        self.port = free_port()
        self.logs = home / "logs"
        certs = home / "certs"
        for directory in (self.logs, home / "cache", certs):
            directory.mkdir(parents=True, exist_ok=True)
        self.cert = make_cert(certs)
        self.stderr = home / "nginx.stderr"
        self.conf = home / "nginx.conf"
        rewrites = {
            "pid /var/run/nginx.pid;": f"pid {home}/nginx.pid;",
            "/var/log/nginx/error.log": f"{self.logs}/error.log",
            "/var/log/nginx/access.log": f"{self.logs}/access.log",
            "/etc/nginx/certs/fullchain.pem": str(certs / "fullchain.pem"),
            "/etc/nginx/certs/privkey.pem": str(certs / "privkey.pem"),
            "listen 8443 ssl;": f"listen 127.0.0.1:{self.port} ssl;",
            "server relay-1:8000 ": f"server {upstreams[0]} ",
            "server relay-2:8000 ": f"server {upstreams[1]} ",
        }
        text = render(conf.read_text(), rewrites)
        text = text.replace("/var/cache/nginx/", f"{home}/cache/")
        self.conf.write_text(render(text, extra or {}))
        self.base = f"https://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> NginxProcess:
        with self.stderr.open("ab") as err:
            self.process = subprocess.Popen(
                [str(NGINX), "-p", str(self.home), "-c", str(self.conf), "-g", "daemon off;"],
                stdout=err,
                stderr=err,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                time.sleep(0.05)
        code = self.process.poll()
        self.stop()
        raise AssertionError(f"nginx did not start (exit {code}): {self.stderr.read_text()}")

    def stop(self) -> None:
        """A graceful stop (SIGQUIT): requests in progress finish, every log line is written."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def tls(self) -> ssl.SSLContext:
        """A client context that trusts this nginx's certificate (and checks the name)."""
        return ssl.create_default_context(cafile=str(self.cert))

    def logs_written(self) -> dict[str, str]:
        """Every file nginx wrote a log line to (its stderr too), by name."""
        files = [*sorted(self.logs.iterdir()), self.stderr]
        return {p.name: p.read_text(errors="replace") for p in files if p.exists()}

    def access_lines(self) -> list[str]:
        path = self.logs / "access.log"
        return path.read_text().splitlines() if path.exists() else []
