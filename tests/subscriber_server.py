"""A real subscriber for tests: a uvicorn server that checks each delivery as a customer would.

It verifies the Standard Webhooks signature with the ``standardwebhooks`` package and parses the
body with the ``cloudevents`` SDK. What it answers is scripted per request.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cloudevents.core.bindings.http import HTTPMessage, from_http_event
from standardwebhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.conftest import ServerThread, bound_socket


@dataclass
class Receipt:
    at: float
    headers: dict[str, str]
    body: bytes
    event: Any
    verified_with: list[str]
    status: int

    @property
    def event_id(self) -> str:
        return str(self.event.get_id())

    @property
    def data(self) -> dict[str, Any]:
        return self.event.get_data()  # type: ignore[no-any-return]


@dataclass
class SubscriberServer:
    """Records deliveries; ``script(n)`` gives (status, delay seconds) for the n-th request.

    ``host`` is the loopback address it listens on (127.0.0.2 and up are not 127.0.0.1, so a
    relay may allow them while loopback stays forbidden).
    """

    script: Callable[[int], tuple[int, float]] = lambda n: (204, 0.0)
    secrets: list[str] = field(default_factory=list)
    receipts: list[Receipt] = field(default_factory=list)
    requests: int = 0
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    thread: ServerThread | None = None
    host: str = "127.0.0.1"
    #: The body of every answer but 204s (default: ``answer <n>``).
    answer_body: bytes | None = None
    #: Headers of the n-th answer (default: none), e.g. a ``Retry-After``.
    answer_headers: Callable[[int], dict[str, str]] = lambda n: {}

    @property
    def url(self) -> str:
        assert self.thread is not None
        return f"http://{self.host}:{self.thread.port}/hook"

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        with self.lock:
            number = self.requests
            self.requests += 1
        headers = {k.lower(): v for k, v in request.headers.items()}
        verified = []
        for secret in list(self.secrets):
            try:
                Webhook(secret).verify(body, headers)
                verified.append(secret)
            except Exception:  # noqa: S112 - a secret that does not verify is simply not listed
                continue
        try:
            event = from_http_event(HTTPMessage(headers=headers, body=body))
        except Exception as exc:
            self.errors.append(f"not a CloudEvent: {exc}")
            return Response(status_code=400)
        if self.secrets and not verified:
            self.errors.append(f"signature did not verify for {event.get_id()}")
            return Response(status_code=401)
        status, delay = self.script(number)
        if delay:
            await asyncio.sleep(delay)
        with self.lock:
            self.receipts.append(Receipt(time.time(), headers, body, event, verified, status))
        answer = self.answer_body if self.answer_body is not None else f"answer {number}".encode()
        return Response(
            None if status == 204 else answer,
            status_code=status,
            headers=self.answer_headers(number),
        )

    def start(self) -> SubscriberServer:
        app = Starlette(routes=[Route("/hook", self.handle, methods=["POST"])])
        self.thread = ServerThread(app, bound_socket(self.host)).start()
        return self

    def stop(self) -> None:
        if self.thread is not None:
            self.thread.stop()

    def accepted_ids(self) -> set[str]:
        """Event ids this subscriber answered with 2xx."""
        with self.lock:
            return {r.event_id for r in self.receipts if r.status < 300}

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Receipt]:
        """Wait until ``count`` deliveries were received (any answer)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            with self.lock:
                if len(self.receipts) >= count:
                    return list(self.receipts)
            time.sleep(0.01)
        raise AssertionError(f"expected {count} deliveries, got {len(self.receipts)}")
