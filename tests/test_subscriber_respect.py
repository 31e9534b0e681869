"""Respecting subscribers, through a real relay and real subscribers: ``Retry-After``, custom
headers, a per-subscriber rate limit, and metrics per subscriber."""

from __future__ import annotations

import email.utils
import itertools
import time
from collections.abc import Callable, Iterator

import pytest

from tests.conftest import EVOLINK_COMPLETED, RelayServer
from tests.subscriber_server import SubscriberServer


@pytest.fixture
def subscriber_factory() -> Iterator[Callable[..., SubscriberServer]]:
    started: list[SubscriberServer] = []

    def start(**kwargs: object) -> SubscriberServer:
        server = SubscriberServer(**kwargs).start()  # type: ignore[arg-type]
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def register(relay: RelayServer, sink: SubscriberServer, **body: object) -> dict[str, object]:
    answer = relay.add_subscriber(sink.url, **body)
    sink.secrets.append(str(answer["secret"]))
    return answer


def test_retry_after_is_honoured_and_the_delivery_still_fails_after_its_last_attempt(
    relay_factory: Callable[..., RelayServer],
    subscriber_factory: Callable[..., SubscriberServer],
) -> None:
    """429 + ``Retry-After: 2`` (seconds), then 503 + an HTTP-date, then 429 again: each next
    attempt comes no sooner than asked (the policy alone would retry after 0.1 s), and the
    third answer, the last attempt of the cycle, fails the delivery."""

    def headers(n: int) -> dict[str, str]:
        if n == 1:  # two seconds from now, to the second: at least one second of waiting
            return {"Retry-After": email.utils.formatdate(time.time() + 2, usegmt=True)}
        return {"Retry-After": "2"}

    sink = subscriber_factory(
        script=lambda n: (429 if n != 1 else 503, 0.0), answer_headers=headers
    )
    relay = relay_factory(retry_delays=(0.1, 0.1))
    register(relay, sink)
    relay.post_callback(relay.mint(), EVOLINK_COMPLETED)
    (failed,) = relay.wait_deliveries(1, "failed", timeout=15)
    receipts = sink.wait_for(3)
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(receipts)]
    assert gaps[0] >= 2.0, gaps
    assert gaps[1] >= 1.0, gaps
    assert max(gaps) < 4.0, gaps
    time.sleep(0.5)
    assert len(sink.receipts) == 3  # no attempt added by the last Retry-After
    detail = relay.delivery(str(failed["id"]))
    assert [a["status_code"] for a in detail["attempts"]] == [429, 503, 429]
