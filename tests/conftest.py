"""Shared fixtures: a real relay on a loopback port, real HTTP clients, a real SQLite file."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO, cast

import httpx
import pytest
import uvicorn
from starlette.datastructures import Secret

from service.app import create_app, uvicorn_options
from service.logs import configure_logging
from service.settings import Settings
from tests.log_capture import PhaseStream

ADMIN_TOKEN = "test-admin-token"

EVOLINK_COMPLETED = {
    "id": "task-unified-1756817821-4x3rx6ny",
    "object": "video.generation.task",
    "created": 1756817821,
    "model": "seedance-2.0",
    "status": "completed",
    "progress": 100,
    "results": ["https://cdn.example.com/videos/task-unified-1756817821-4x3rx6ny.mp4"],
    "type": "video",
    "task_info": {"can_cancel": False},
}


# -- logging: the relay's own configuration, its lines in pytest's capture (tests.log_capture)

LOG_STREAM = PhaseStream()


def pytest_configure(config: pytest.Config) -> None:
    configure_logging("console", "info", cast(TextIO, LOG_STREAM))


# ``trylast``: inside pytest's capture of the phase, so that it is in place when lines flow.
@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    return (yield from _log_phase())


@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    return (yield from _log_phase())


@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, None, None]:
    return (yield from _log_phase())


def _log_phase() -> Generator[None, None, None]:
    LOG_STREAM.open()
    try:
        return (yield)
    finally:
        LOG_STREAM.close()


def bound_socket(host: str = "127.0.0.1") -> socket.socket:
    """A TCP socket bound to a free port of ``host`` (any of 127/8 is loopback on Linux)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    return sock


class ServerThread:
    """Runs an ASGI app under a real uvicorn server on a loopback socket, in a thread."""

    def __init__(self, app: Any, sock: socket.socket, settings: Settings | None = None) -> None:
        self.app = app
        self.sock = sock
        self.port = sock.getsockname()[1]
        self.server = uvicorn.Server(
            uvicorn.Config(
                app,
                lifespan="on",
                **uvicorn_options(settings or Settings()),  # type: ignore[arg-type]
            )
        )
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.error: BaseException | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    async def _serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        await self.server.serve(sockets=[self.sock])

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # surfaced by start()/stop()
            self.error = exc

    def start(self) -> ServerThread:
        self.thread.start()
        for _ in range(500):
            if self.server.started or self.error or not self.thread.is_alive():
                break
            threading.Event().wait(0.01)
        if not self.server.started:
            raise RuntimeError(f"server did not start: {self.error!r}")
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        self.sock.close()


@dataclass
class RelayServer:
    """A running relay: its base URL, settings, and helpers for the admin API."""

    base_url: str
    settings: Settings
    thread: ServerThread
    client: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.client = httpx.Client(base_url=self.base_url, timeout=10)

    @property
    def admin(self) -> dict[str, str]:
        return {"authorization": f"Bearer {ADMIN_TOKEN}"}

    @property
    def relay(self) -> Any:
        return self.thread.app.state.relay

    def in_loop(self, coroutine: Any) -> Any:
        """Run a coroutine on the relay's own event loop (its store belongs to that loop)."""
        assert self.thread.loop is not None
        return asyncio.run_coroutine_threadsafe(coroutine, self.thread.loop).result(timeout=10)

    def sql(self, fn: Any) -> Any:
        """Run ``fn(connection)`` inside the relay's SQLite store, as one of its operations."""

        async def run() -> Any:
            return await self.relay.store._run(fn)

        return self.in_loop(run())

    def mint(self, provider: str = "evolink", **body: Any) -> str:
        response = self.client.post(
            "/v1/callback-urls", json={"provider": provider, **body}, headers=self.admin
        )
        assert response.status_code == 201, response.text
        url: str = response.json()["url"]
        assert url.startswith(self.base_url)
        return url

    def post_callback(self, url: str, payload: Any, **kwargs: Any) -> httpx.Response:
        return self.client.post(url, json=payload, **kwargs)

    def events(self, **params: Any) -> list[dict[str, Any]]:
        response = self.client.get("/v1/events", params=params, headers=self.admin)
        assert response.status_code == 200, response.text
        items: list[dict[str, Any]] = response.json()["items"]
        return items

    def add_subscriber(self, url: str, **body: Any) -> dict[str, Any]:
        response = self.client.post(
            "/v1/subscribers", json={"url": url, **body}, headers=self.admin
        )
        assert response.status_code == 201, response.text
        answer: dict[str, Any] = response.json()
        return answer

    def deliveries(self, **params: Any) -> list[dict[str, Any]]:
        response = self.client.get("/v1/deliveries", params=params, headers=self.admin)
        assert response.status_code == 200, response.text
        items: list[dict[str, Any]] = response.json()["items"]
        return items

    def delivery(self, delivery_id: str) -> dict[str, Any]:
        response = self.client.get(f"/v1/deliveries/{delivery_id}", headers=self.admin)
        assert response.status_code == 200, response.text
        answer: dict[str, Any] = response.json()
        return answer

    def wait_deliveries(
        self, count: int, status: str, timeout: float = 15.0, **params: Any
    ) -> list[dict[str, Any]]:
        """Wait until ``count`` deliveries have ``status``."""
        deadline = time.time() + timeout
        while True:
            items = self.deliveries(status=status, limit=500, **params)
            if len(items) >= count or time.time() > deadline:
                assert len(items) >= count, f"{len(items)} {status} deliveries, wanted {count}"
                return items
            time.sleep(0.05)

    def wait_settled(self, timeout: float = 15.0) -> None:
        """Wait until no delivery is pending: each one stored so far has been answered (or has
        given up), so its subscriber has received all it will ever receive of it.

        "Nothing more arrived" is asserted after this, against what the store holds, rather
        than after a fixed sleep: a late delivery cannot hide behind a slow machine."""
        deadline = time.time() + timeout
        while True:
            pending = self.deliveries(status="pending", limit=500)
            if not pending or time.time() > deadline:
                assert pending == [], f"{len(pending)} deliveries still pending"
                return
            time.sleep(0.02)

    def stop(self) -> None:
        self.client.close()
        self.thread.stop()
        _running_relays[:] = [server for server in _running_relays if server is not self]


#: Relays started by ``relay_factory`` and not stopped yet. pytest tears a test's fixtures down
#: in the reverse order of its parameters, so a database fixture listed after ``relay_factory``
#: ends first: ``stop_relays_on`` lets it stop the relays on its database before dropping it
#: (a relay left running claims against a schema being dropped: its claims and the DROP take
#: their table locks in different orders and deadlock).
_running_relays: list[RelayServer] = []


def stop_relays_on(database_url: str) -> None:
    """Stop the relays started by ``relay_factory`` that are still running on this database."""
    for server in [s for s in _running_relays if s.settings.database_url == database_url]:
        server.stop()


def make_settings(tmp_path: Path, port: int, **overrides: Any) -> Settings:
    base = Settings(
        database_url=f"sqlite:///{tmp_path / 'relay.db'}",
        public_url=f"http://127.0.0.1:{port}",
        admin_token=Secret(ADMIN_TOKEN),
        secret_keys=(Secret("test-signing-key"),),
        allow_private_targets=True,
        retry_delays=(1.0, 2.0, 4.0),
    )
    return base.with_changes(**overrides)


@pytest.fixture
def relay_factory(tmp_path: Path) -> Iterator[Callable[..., RelayServer]]:
    """Start relays (real uvicorn on 127.0.0.1); all are stopped after the test."""
    started: list[RelayServer] = []

    def start(**overrides: Any) -> RelayServer:
        sock = bound_socket()
        port = sock.getsockname()[1]
        settings = make_settings(tmp_path, port, **overrides)
        thread = ServerThread(create_app(settings), sock, settings).start()
        server = RelayServer(f"http://127.0.0.1:{port}", settings, thread)
        started.append(server)
        _running_relays.append(server)
        return server

    yield start
    for server in reversed(started):
        server.stop()


@pytest.fixture
def relay_server(relay_factory: Callable[..., RelayServer]) -> RelayServer:
    """One relay on a fresh SQLite file, with default settings."""
    return relay_factory()


@pytest.fixture
def emulator() -> Iterator[Any]:
    """The providers' status APIs, emulated on loopback (``tests.provider_emulators``)."""
    from tests.provider_emulators import ProviderEmulator  # it imports this module

    server = ProviderEmulator().start()
    yield server
    server.stop()


@pytest.fixture
def sink() -> Iterator[Any]:
    """A real subscriber that verifies what it receives (``tests.subscriber_server``)."""
    from tests.subscriber_server import SubscriberServer  # it imports this module

    server = SubscriberServer().start()
    yield server
    server.stop()


@pytest.fixture
def cdn() -> Iterator[Any]:
    """A provider's CDN, emulated on loopback (``tests.cdn_emulator``)."""
    from tests.cdn_emulator import CdnEmulator  # it imports this module

    with CdnEmulator() as server:
        yield server


@pytest.fixture(scope="session")
def s3_server() -> Iterator[Any]:
    """An S3-compatible server on loopback, moto's (``tests.s3_server``)."""
    from tests.s3_server import S3Server  # moto and boto3 load only for tests that use it

    with S3Server() as server:
        yield server
