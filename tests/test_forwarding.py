"""What an event may carry to subscribers: safe output links, a payload they can parse."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable

import pytest

from service import metrics
from service.events import Output
from service.forwarding import (
    MAX_OUTPUTS,
    MAX_RAW_DEPTH,
    forwardable_outputs,
    json_depth,
    output_problem,
    raw_too_deep,
)
from tests.conftest import EVOLINK_COMPLETED, RelayServer
from tests.provider_emulators import ProviderEmulator
from tests.subscriber_server import SubscriberServer
from tests.test_watches import FAST, subscribe, wait_task_events


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("https://cdn.example.com/a.png", None),
        ("HTTP://cdn.example.com/a.png", None),
        ("https://93.184.216.34/a.png", None),
        ("javascript:alert(1)", "scheme"),
        ("file:///etc/passwd", "scheme"),
        ("data:text/html,<script>alert(1)</script>", "scheme"),
        ("gopher://cdn.example.com/_x", "scheme"),
        ("https:///no-host", "scheme"),
        ("//cdn.example.com/a.png", "scheme"),
        ("http://169.254.169.254/latest/meta-data/", "private_address"),
        ("http://10.0.0.7/a.png", "private_address"),
        ("http://127.0.0.1:8000/ops", "private_address"),
        ("http://[::1]/a.png", "private_address"),
        ("http://[fe80::1/a.png", "malformed"),
        ("http://localhost:8000/a.png", "private_address"),
        ("http://2130706433/a.png", "private_address"),
        ("http://0x7f.1/a.png", "private_address"),
        ("https://cdn.example.com/" + "a" * 5000, "too_long"),
    ],
)
def test_an_output_is_a_public_web_link(url: str, problem: str | None) -> None:
    assert output_problem(url) == problem


def test_outputs_are_bounded_and_unique() -> None:
    urls = [f"https://cdn.example.com/{n}.png" for n in range(MAX_OUTPUTS + 20)]
    outputs = [Output(urls[0]), *(Output(u) for u in urls), Output("javascript:x")]
    kept, dropped = forwardable_outputs(outputs)
    assert [o.url for o in kept] == urls[:MAX_OUTPUTS]
    assert dropped == {"over_limit": 20, "scheme": 1}


def _nested(depth: int) -> object:
    value: object = "bottom"
    for _ in range(depth):
        value = {"x": [value]} if len(str(depth)) % 2 else [value]
    return value


def test_depth_is_measured_without_recursion() -> None:
    assert json_depth("scalar") == 0
    assert json_depth({"a": [1, {"b": 2}]}) == 3
    assert json_depth(_nested(5_000), limit=10) == 11  # stops counting past the limit
    deep = json.dumps(_nested(MAX_RAW_DEPTH + 1)).encode()
    assert raw_too_deep(json.loads(deep), deep)
    shallow = json.dumps(_nested(MAX_RAW_DEPTH)).encode()
    assert not raw_too_deep(json.loads(shallow), shallow)


def _dropped(reason: str) -> float:
    value = metrics.REGISTRY.get_sample_value("relay_outputs_dropped_total", {"reason": reason})
    return value or 0.0


def test_unsafe_outputs_are_dropped_counted_and_kept_in_raw(
    relay_server: RelayServer, sink: SubscriberServer
) -> None:
    subscribe(relay_server, sink)
    unsafe = [
        "javascript:alert(1)",
        "file:///etc/passwd",
        "data:text/html,x",
        "gopher://x.example/_",
        "http://169.254.169.254/latest/meta-data/",
    ]
    good = "https://cdn.example.com/ok.png"
    payload = {**copy.deepcopy(EVOLINK_COMPLETED), "id": "task-unsafe", "results": [*unsafe, good]}
    many = [f"https://cdn.example.com/{n}.png" for n in range(20_000)]
    flood = {**copy.deepcopy(EVOLINK_COMPLETED), "id": "task-flood", "results": many}
    before = (_dropped("scheme"), _dropped("private_address"), _dropped("over_limit"))
    url = relay_server.mint(reusable=True)
    assert relay_server.post_callback(url, payload).status_code == 200
    assert relay_server.post_callback(url, flood).status_code == 200
    (one,) = wait_task_events(sink, "task-unsafe", 1)
    assert [o["url"] for o in one.data["outputs"]] == [good]
    assert one.data["raw"]["results"] == [*unsafe, good]  # the payload as the provider sent it
    (other,) = wait_task_events(sink, "task-flood", 1)
    assert [o["url"] for o in other.data["outputs"]] == many[:MAX_OUTPUTS]
    after = (_dropped("scheme"), _dropped("private_address"), _dropped("over_limit"))
    assert [b - a for a, b in zip(before, after, strict=True)] == [4, 1, 20_000 - MAX_OUTPUTS]


def test_a_callback_nested_too_deep_is_refused(relay_server: RelayServer) -> None:
    """1,010 levels (orjson takes up to 1,024; Python's json fails near 1,000): 400, stored
    nowhere, the limit named."""
    payload = json.dumps({**EVOLINK_COMPLETED, "id": "task-deep"})
    deep = '{"x":' * 1_010 + "1" + "}" * 1_010  # the standard json could not even write it
    for body in (
        f'{payload[:-1]}, "extra": {deep}}}',
        f'{payload[:-1]}, "extra": {"[" * MAX_RAW_DEPTH + "]" * MAX_RAW_DEPTH}}}',
    ):
        answer = relay_server.client.post(
            relay_server.mint(), content=body, headers={"content-type": "application/json"}
        )
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["code"] == "invalid_json"
        assert f"deeper than {MAX_RAW_DEPTH} levels" in answer.json()["error"]["message"]
    assert relay_server.events() == []
    # One level less is the deepest a callback may be.
    shallow = f'{payload[:-1]}, "extra": {"[" * (MAX_RAW_DEPTH - 1) + "]" * (MAX_RAW_DEPTH - 1)}}}'
    answer = relay_server.client.post(
        relay_server.mint(), content=shallow, headers={"content-type": "application/json"}
    )
    assert answer.status_code == 200, answer.text


def test_a_status_answer_nested_too_deep_is_kept_but_not_forwarded(
    relay_factory: Callable[..., RelayServer], sink: SubscriberServer
) -> None:
    """A provider's answer (which the relay cannot refuse) nested 1,000 levels: the subscriber,
    parsing with the standard ``json`` module, gets the event without ``raw``; the API returns
    the answer byte for byte."""
    emulator = ProviderEmulator().start()
    try:
        relay = relay_factory(**emulator.relay_settings(watch_backoff=(0.05, 0.2)))
        subscribe(relay, sink)
        task_id = emulator.add_task(
            "reve-art", timeline=((0.0, "succeeded"),), extra="[" * 1_000 + "]" * 1_000
        )
        watch = relay.client.post(
            "/v1/watches", json={"provider": "reve-art", "task_id": task_id}, headers=relay.admin
        )
        assert watch.status_code == 201, watch.text
        (receipt,) = wait_task_events(sink, task_id, 1)
        assert receipt.data["raw"] is None
        assert f"/v1/events/{receipt.event_id}/raw" in receipt.data["raw_omitted"]
        assert receipt.data["outputs"]  # the normalized fields are all there
        json.loads(receipt.body)  # what a subscriber's standard parser does
        raw = relay.client.get(f"/v1/events/{receipt.event_id}/raw", headers=relay.admin)
        assert raw.status_code == 200
        assert raw.content.endswith(b'"extra": ' + b"[" * 1_000 + b"]" * 1_000 + b"}")
        missing = relay.client.get("/v1/events/evt_nope/raw", headers=relay.admin)
        assert missing.status_code == 404
    finally:
        emulator.stop()


def test_unconfirmed_progress_carries_no_outputs(relay_factory: Callable[..., RelayServer]) -> None:
    """With Evolink confirmation on, a "processing" callback (anyone holding a URL can send
    one) is forwarded at once, without its links (the confirmed terminal event has them)."""
    emulator = ProviderEmulator().start()
    sink = SubscriberServer().start()
    try:
        relay = relay_factory(**emulator.relay_settings(**FAST))
        subscribe(relay, sink)
        task_id = emulator.add_task("evolink", timeline=((0.0, "running"), (1.0, "succeeded")))
        url = relay.mint("evolink")
        processing = {
            **copy.deepcopy(EVOLINK_COMPLETED),
            "id": task_id,
            "status": "processing",
            "progress": 40,
            "results": ["https://evil.example/x.png"],
        }
        assert relay.post_callback(url, processing).status_code == 200
        (running,) = wait_task_events(sink, task_id, 1)
        assert running.event.get_type() == "generation.running"
        assert running.data["outputs"] == []
        assert "https://evil.example/x.png" in running.body.decode()  # in raw, as sent
    finally:
        sink.stop()
        emulator.stop()
