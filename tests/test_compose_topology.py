"""deploy/docker-compose.yml's topology run without Docker: the processes it names, on loopback.

The one-shot ``migrate`` service, then the two relay services (their command and environment,
secrets read from files as Docker mounts them) on a fresh PostgreSQL schema, then the proxy
(Debian's nginx with the file the compose mounts). Only what a container network gives for
free is translated: host names and ports to loopback ones, ``/run/secrets/<name>`` to files
here, the proxy's fixed address to 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.nginx_process import NginxProcess, free_port, require_nginx
from tests.relay_process import ADMIN, RelayProcess
from tests.subscriber_server import SubscriberServer
from tests.test_proxy import payload, wait_until
from tests.test_store_contract import fresh_schema

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
COMPOSE = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
#: Settings the test adds to the compose environment: the subscriber is on loopback, and a short
#: delivery timeout makes a killed replica's leases lapse in seconds.
TEST_ONLY = {"RELAY_ALLOW_PRIVATE_TARGETS": "true", "RELAY_DELIVERY_TIMEOUT": "1"}


@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_schema() as url:
        yield url


class Topology:
    """The compose services as processes; ``environment(service)`` is their translated env."""

    def __init__(self, home: Path, pg_url: str) -> None:
        self.home = home
        self.pg_url = pg_url
        self.secrets = home / "secrets"
        self.secrets.mkdir(parents=True)
        self.values = {"relay_admin_token": ADMIN, "relay_secret_key": "compose-signing-key"}
        for name in COMPOSE["secrets"]:
            (self.secrets / name).write_text(self.values[name] + "\n")
        self.ports = {name: free_port() for name in ("relay-1", "relay-2")}
        self.admin_ports = {name: free_port() for name in ("relay-1", "relay-2")}
        (conf,) = [
            v.split(":")[0] for v in SERVICES["proxy"]["volumes"] if ":/etc/nginx/nginx.conf" in v
        ]
        self.nginx = NginxProcess(
            home / "proxy",
            (f"127.0.0.1:{self.ports['relay-1']}", f"127.0.0.1:{self.ports['relay-2']}"),
            conf=DEPLOY / conf,
        )

    def environment(self, service: str) -> dict[str, str]:
        spec = SERVICES[service]
        env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
        for key, value in spec["environment"].items():
            value = str(value)
            if key == "RELAY_DATABASE_URL":
                assert value.startswith("postgresql://") and "@postgres:5432/" in value
                value = self.pg_url
            elif key == "RELAY_PUBLIC_URL":
                value = self.nginx.base
            elif key == "RELAY_TRUSTED_PROXIES":
                proxy_address = SERVICES["proxy"]["networks"]["relay"]["ipv4_address"]
                assert value == f"{proxy_address}/32"  # the proxy, and only the proxy
                value = "127.0.0.1/32"
            elif key == "RELAY_ADMIN_LISTEN":
                assert value == "0.0.0.0:9000"
                value = f"127.0.0.1:{self.admin_ports.get(service, free_port())}"
            elif key.endswith("_FILE"):
                name = value.removeprefix("/run/secrets/")
                assert name in spec["secrets"] and name in COMPOSE["secrets"]
                value = str(self.secrets / name)
            env[key] = value
        return {**env, **TEST_ONLY}

    def migrate(self) -> None:
        """The ``migrate`` service: its command, run to completion (exit 0)."""
        command = SERVICES["migrate"]["command"]
        assert command == ["migrate"]
        done = subprocess.run(
            [sys.executable, "-m", "service", *command],
            env=self.environment("migrate"),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr

    def relay(self, service: str, tmp_path: Path) -> RelayProcess:
        """A relay service: its command with loopback host and port, its environment."""
        command = SERVICES[service]["command"]
        assert command[:1] == ["serve"] and "--port" in command
        args = [
            "127.0.0.1" if a == "0.0.0.0" else str(self.ports[service]) if a == "8000" else a
            for a in command[1:]
        ]
        relay = RelayProcess(tmp_path, self.ports[service], *args)
        relay.env = self.environment(service)
        relay.admin_base = f"http://{relay.env['RELAY_ADMIN_LISTEN']}"
        assert relay.env["RELAY_MIGRATE_ON_START"] == "false"
        return relay


def post_like_a_provider(client: httpx.Client, url: str, n: int) -> str | None:
    """POST until answered 200 (as providers retry); the event id, or None if never."""
    for _ in range(10):
        try:
            answer = client.post(url, json=payload(n))
        except httpx.TransportError:
            continue
        if answer.status_code == 200:
            event_id: str = answer.json()["event_id"]
            return event_id
        time.sleep(0.2)  # a provider's back-off
    return None


def test_the_compose_topology_delivers_through_the_proxy_and_loses_nothing_to_a_kill(
    tmp_path: Path, pg_url: str
) -> None:
    """migrate, relay-1, relay-2 and the proxy as compose names them: a callback over https
    reaches the subscriber; relay-1 SIGKILLed while callbacks arrive, every callback that was
    answered 200 is still delivered (by relay-2, once relay-1's leases lapse)."""
    require_nginx()
    topology = Topology(tmp_path / "compose", pg_url)
    with contextlib.ExitStack() as running:
        topology.migrate()
        relays = {}
        for service in ("relay-1", "relay-2"):
            relays[service] = topology.relay(service, tmp_path).start()
            running.callback(relays[service].stop)
        running.callback(topology.nginx.stop)
        topology.nginx.start()
        # A slow subscriber: when relay-1 dies it holds deliveries in flight (leased).
        sink = SubscriberServer(script=lambda n: (204, 0.2)).start()
        running.callback(sink.stop)

        admin = relays["relay-1"].admin_base
        headers = {"authorization": f"Bearer {ADMIN}"}
        answer = httpx.post(f"{admin}/v1/subscribers", json={"url": sink.url}, headers=headers)
        assert answer.status_code in (200, 201), answer.text
        sink.secrets.append(answer.json()["secret"])
        minted = httpx.post(
            f"{admin}/v1/callback-urls",
            json={"provider": "evolink", "reusable": True},
            headers=headers,
        )
        url = minted.json()["url"]
        assert url.startswith(topology.nginx.base + "/callbacks/evolink/")
        # The public port (the proxy's upstream) has no admin surface.
        public = relays["relay-1"].base
        assert httpx.get(f"{public}/v1/subscribers", headers=headers).status_code == 404

        with httpx.Client(verify=topology.nginx.tls(), timeout=30) as client:
            first = post_like_a_provider(client, url, 0)
            assert first is not None
            assert wait_until(lambda: first in sink.accepted_ids(), timeout=30)

            numbers = itertools.count(1)
            killed = threading.Event()

            def send(_: int) -> str | None:
                n = next(numbers)
                if n == 40:
                    relays["relay-1"].kill()
                    killed.set()
                return post_like_a_provider(client, url, n)

            with ThreadPoolExecutor(8) as pool:
                acked: set[Any] = set(pool.map(send, range(120)))
        assert killed.is_set() and None not in acked, "a callback was never answered 200"
        # Lease = 3 x RELAY_DELIVERY_TIMEOUT + 10 s: what relay-1 held comes back to relay-2.
        assert wait_until(lambda: acked <= sink.accepted_ids(), timeout=90), (
            f"{len(acked - sink.accepted_ids())} acknowledged callbacks never delivered"
        )
        assert relays["relay-2"].process is not None
        assert relays["relay-2"].process.poll() is None
