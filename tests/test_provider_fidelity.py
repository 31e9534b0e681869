"""Providers as they really are: one reading of a callback, the settings that guard them,
every result shape, the failure words that end a task.

Unit tests call the normalizers and checks directly; the rest go through a real relay
(uvicorn on loopback, real httpx clients, a real SQLite file).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
from starlette.datastructures import Secret

from service.errors import InvalidPayload
from service.providers import PROVIDERS
from service.providers.apiframe import Apiframe, InvalidSignature, apiframe_signature
from service.providers.evolink import Evolink
from service.settings import ConfigError, Settings
from tests.conftest import EVOLINK_COMPLETED, RelayServer
from tests.provider_emulators import ProviderEmulator
from tests.subscriber_server import SubscriberServer
from tests.test_receiver import assert_error
from tests.test_watches import (
    FAST,
    post_watch,
    subscribe,
    types,
    wait_task_events,
    wait_watch,
)

# --- one reading of a callback ---------------------------------------------------------------

#: A payload of each provider with its task id and status where that provider puts them.
SHAPES: dict[str, Callable[[Any, Any], dict[str, Any]]] = {
    "evolink": lambda task_id, status: {"id": task_id, "status": status},
    "apiframe": lambda task_id, status: {"jobId": task_id, "status": status},
    "rivya": lambda task_id, status: {"id": task_id, "status": status},
    "reve-art": lambda task_id, status: {"id": task_id, "status": status},
}
FIELD = {"evolink": "id", "apiframe": "jobId", "rivya": "id", "reve-art": "id"}


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
@pytest.mark.parametrize("status", [3, 1.5, True, ["completed"], {"word": "completed"}])
def test_normalize_refuses_a_status_that_is_not_a_string(provider: str, status: Any) -> None:
    """A status that is not a string is 422 invalid_payload naming the field, not a guess."""
    with pytest.raises(InvalidPayload) as caught:
        PROVIDERS[provider].normalize(SHAPES[provider]("t-1", status))
    assert caught.value.code == "invalid_payload"
    assert "'status'" in caught.value.message


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
@pytest.mark.parametrize("task_id", [1.5, True, ["t"], {"id": "t"}])
def test_normalize_refuses_a_task_id_that_is_not_a_string_or_integer(
    provider: str, task_id: Any
) -> None:
    """A task id that is neither a string nor an integer is 422 invalid_payload naming it."""
    with pytest.raises(InvalidPayload) as caught:
        PROVIDERS[provider].normalize(SHAPES[provider](task_id, "completed"))
    assert caught.value.code == "invalid_payload"
    assert repr(FIELD[provider]) in caught.value.message


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
def test_normalize_takes_an_integer_task_id_as_its_decimal_text(provider: str) -> None:
    """An integer task id becomes its decimal string; a missing status is no error."""
    assert PROVIDERS[provider].normalize(SHAPES[provider](4021, "completed")).task_id == "4021"
    assert PROVIDERS[provider].normalize(SHAPES[provider](-7, None)).task_id == "-7"


@pytest.mark.parametrize(
    ("body", "code", "named"),
    [
        (b'{"id": "t-dup", "id": "t-other", "status": "completed"}', "invalid_json", "'id'"),
        (b'{"id": "t-dup", "status": "processing", "status": "completed"}', "invalid_json", None),
        (b'{"id": "t-dup", "task_info": {"can_cancel": 1, "can_cancel": 0}}', "invalid_json", None),
        (b'{"id": "t-num", "status": 1}', "invalid_payload", "'status'"),
        (b'{"id": 2.5, "status": "completed"}', "invalid_payload", "'id'"),
    ],
)
def test_callback_with_two_readings_is_refused(
    relay_server: RelayServer, body: bytes, code: str, named: str | None
) -> None:
    """A real relay answers 400 invalid_json to a repeated key and 422 invalid_payload to a
    status or task id of the wrong type, and stores nothing."""
    url = relay_server.mint()
    response = relay_server.client.post(
        url, content=body, headers={"content-type": "application/json"}
    )
    assert_error(response, 400 if code == "invalid_json" else 422, code)
    if named is not None:
        assert named in response.json()["error"]["message"]
    assert relay_server.events() == []
    accepted = relay_server.post_callback(url, EVOLINK_COMPLETED)
    assert accepted.status_code == 200, accepted.text


# --- a setting does only what it says --------------------------------------------------------

APIFRAME_V2 = orjson.dumps(
    {"event": "completed", "jobId": "j-1", "status": "COMPLETED", "result": "https://c/a.png"}
)
APIFRAME_V1 = orjson.dumps(
    {"task_id": "t-1", "task_type": "imagine", "image_urls": ["https://c/1.png"]}
)


def _settings(mode: str, *, key: bool = True, secret: bool = False) -> Settings:
    return Settings(
        apiframe_api_key=Secret("af-key") if key else None,
        apiframe_signature=mode,
        apiframe_webhook_secret=Secret("s3cret") if secret else None,
    )


def _signed(body: bytes, key: str = "af-key") -> dict[str, str]:
    return {"x-webhook-signature": f"sha256={apiframe_signature(key, body)}"}


WRONG = {"x-webhook-signature": "sha256=" + "0" * 64}

#: (mode, API key set, v1 secret set, body, headers) -> accepted?
APIFRAME_RULES = [
    # The default: a signature is checked when present, not demanded.
    ("optional", True, False, APIFRAME_V2, {}, True),
    ("optional", True, False, APIFRAME_V2, _signed(APIFRAME_V2), True),
    ("optional", True, False, APIFRAME_V2, WRONG, False),
    ("optional", True, False, APIFRAME_V2, _signed(APIFRAME_V2, "other-key"), False),
    ("optional", True, False, APIFRAME_V1, {}, True),
    ("optional", False, False, APIFRAME_V2, WRONG, True),  # no key: nothing to check with
    # required: a v2 callback must be signed; a v1 callback is judged by the v1 rules.
    ("required", True, False, APIFRAME_V2, {}, False),
    ("required", True, False, APIFRAME_V2, WRONG, False),
    ("required", True, False, APIFRAME_V2, _signed(APIFRAME_V2), True),
    ("required", True, False, APIFRAME_V1, {}, True),
    ("required", True, True, APIFRAME_V1, {"x-webhook-secret": "s3cret"}, True),
    ("required", True, True, APIFRAME_V1, {}, False),
    ("required", True, True, APIFRAME_V2, {"x-webhook-secret": "s3cret"}, False),
    ("required", True, False, b"not json", {}, False),
    # v1 secrets: required of v1 callbacks when set, never of v2 ones.
    ("optional", True, True, APIFRAME_V1, {"x-webhook-secret": "nope"}, False),
    ("optional", True, True, APIFRAME_V1, {"x-webhook-secret": "s3cret"}, True),
    ("optional", True, True, APIFRAME_V2, {}, True),
    ("optional", True, True, APIFRAME_V2, {**_signed(APIFRAME_V2), "x-webhook-secret": "x"}, False),
    ("optional", True, True, APIFRAME_V1, {**WRONG, "x-webhook-secret": "s3cret"}, False),
]


@pytest.mark.parametrize(("mode", "key", "secret", "body", "headers", "accepted"), APIFRAME_RULES)
def test_apiframe_verify_follows_the_signature_setting(
    mode: str, key: bool, secret: bool, body: bytes, headers: dict[str, str], accepted: bool
) -> None:
    """RELAY_APIFRAME_SIGNATURE decides what is demanded; a credential that is presented and
    wrong is refused whatever the mode checks; v1 callbacks follow the v1 rules."""
    settings = _settings(mode, key=key, secret=secret)
    if accepted:
        assert Apiframe().verify(headers, body, settings, now=time.time()) is None
    else:
        with pytest.raises(InvalidSignature):
            Apiframe().verify(headers, body, settings, now=time.time())


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, "optional"),
        ({"RELAY_APIFRAME_SIGNATURE": "OPTIONAL"}, "optional"),
        ({"RELAY_APIFRAME_API_KEY": "k", "RELAY_APIFRAME_SIGNATURE": "required"}, "required"),
    ],
)
def test_apiframe_signature_setting(environ: dict[str, str], expected: str) -> None:
    """The default is optional; the value is read case-insensitively."""
    assert Settings.from_env(environ).apiframe_signature == expected


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"RELAY_APIFRAME_SIGNATURE": "required"}, "RELAY_APIFRAME_API_KEY"),
        ({"RELAY_APIFRAME_SIGNATURE": "off"}, "required or optional"),
    ],
)
def test_apiframe_signature_setting_refuses_what_cannot_work(
    environ: dict[str, str], named: str
) -> None:
    """required without the key that signs, or an unknown word, stops the relay at start."""
    with pytest.raises(ConfigError, match=named):
        Settings.from_env(environ)


def test_apiframe_key_alone_no_longer_refuses_unsigned_callbacks(
    relay_factory: Callable[..., RelayServer],
) -> None:
    """With only RELAY_APIFRAME_API_KEY set (to poll), a real relay takes v1 and unsigned v2
    callbacks on their URL token, refuses a wrong signature, and still demands the token."""
    server = relay_factory(apiframe_api_key=Secret("af-key"))
    url = server.mint("apiframe", reusable=True)
    json_type = {"content-type": "application/json"}
    for body in (APIFRAME_V2, APIFRAME_V1):
        answer = server.client.post(url, content=body, headers=json_type)
        assert answer.status_code == 200, answer.text
    wrong = server.client.post(url, content=APIFRAME_V2, headers={**json_type, **WRONG})
    assert_error(wrong, 401, "invalid_signature")
    signed = _signed(APIFRAME_V2)
    tokenless = server.client.post("/callbacks/apiframe", content=APIFRAME_V2, headers=signed)
    assert_error(tokenless, 401, "invalid_token")
    assert {event["subject"] for event in server.events()} == {"j-1", "t-1"}


def test_rivya_without_its_secret_names_the_setting(relay_server: RelayServer) -> None:
    """/callbacks/rivya without RELAY_RIVYA_WEBHOOK_SECRET says which setting is missing."""
    answer = relay_server.client.post("/callbacks/rivya", json={"id": "t", "status": "succeeded"})
    assert_error(answer, 401, "invalid_token")
    assert "RELAY_RIVYA_WEBHOOK_SECRET" in answer.json()["error"]["message"]
    evolink = relay_server.client.post("/callbacks/evolink", json=EVOLINK_COMPLETED)
    assert_error(evolink, 401, "invalid_token")
    assert "POST /v1/callback-urls" in evolink.json()["error"]["message"]


# --- every result shape gives outputs, typed ------------------------------------------------


@pytest.mark.parametrize(
    ("result", "model", "outputs"),
    [
        (
            ["https://c/1.png", "https://c/2.png"],
            None,
            [("https://c/1.png", "image"), ("https://c/2.png", "image")],
        ),
        ({"url": "https://c/v.mp4"}, None, [("https://c/v.mp4", "video")]),
        ({"url": "https://c/result"}, "reve-create", [("https://c/result", "image")]),
        (["https://c/clip"], "kling-2.6-video", [("https://c/clip", "video")]),
        ("https://c/song", "suno-v5", [("https://c/song", "audio")]),
        (
            {"tracks": [{"audioUrl": "https://c/t1"}, {"audio_url": "https://c/t2.mp3"}]},
            None,
            [("https://c/t1", "audio"), ("https://c/t2.mp3", "audio")],
        ),
        (
            {"images": [{"url": "https://c/1.png"}], "gridUrl": "https://c/grid.png"},
            None,
            [("https://c/1.png", "image")],
        ),
        ({"videoUrl": "https://c/v"}, "midjourney", [("https://c/v", "video")]),
        ({"videos": [{"videoUrl": "https://c/w.webm"}]}, None, [("https://c/w.webm", "video")]),
    ],
)
def test_apiframe_every_result_shape_gives_outputs(
    result: Any, model: str | None, outputs: list[tuple[str, str]]
) -> None:
    """A URL, a list of URLs, {"url"} and each modality's object all give outputs, typed by
    the URL's extension, else by what the field or the model says."""
    payload = {"jobId": "j", "status": "COMPLETED", "result": result, "model": model}
    normalized = Apiframe().normalize(payload)
    assert [(o.url, o.media_type) for o in normalized.outputs] == outputs


@pytest.mark.parametrize(
    ("fields", "media_type"),
    [
        ({"type": "text", "results": ["https://c/a.png"]}, "image"),
        ({"type": "text", "object": "image.generation.task", "results": ["https://c/a"]}, "image"),
        ({"type": "text", "object": "audio.generation.task", "results": ["https://c/a"]}, "audio"),
        ({"type": "video", "results": ["https://c/a"]}, "video"),
        ({"type": "text", "results": ["https://c/a"]}, None),
    ],
)
def test_evolink_outputs_are_never_text(fields: dict[str, Any], media_type: str | None) -> None:
    """An output's type comes from its URL, else from the task's object or type, never "text"."""
    payload = {"id": "task-unified-1-abc", "status": "completed", **fields}
    (output,) = Evolink().normalize(payload).outputs
    assert output.media_type == media_type


def metric(relay: RelayServer, name: str, provider: str) -> float:
    """The value of ``name{provider=...}`` in the relay's /metrics (0 before any count)."""
    text = relay.client.get("/metrics", headers=relay.admin).text
    prefix = f'{name}{{provider="{provider}"}} '
    values = [float(line[len(prefix) :]) for line in text.splitlines() if line.startswith(prefix)]
    return values[0] if values else 0.0


def test_succeeded_without_outputs_is_emitted_logged_and_counted(
    relay_server: RelayServer, capfd: pytest.CaptureFixture[str]
) -> None:
    """A succeeded callback whose result the relay cannot read is still emitted, and an
    operator sees it: one succeeded_without_outputs line and one count per event."""
    name = "relay_succeeded_without_outputs_total"
    before = metric(relay_server, name, "apiframe")
    url = relay_server.mint("apiframe", reusable=True)
    odd = {"jobId": "j-odd", "status": "COMPLETED", "result": {"files": [{"href": "https://c/x"}]}}
    for _ in range(2):  # the provider's retry is a duplicate: counted once
        assert relay_server.post_callback(url, odd).status_code == 200
    (event,) = relay_server.events(task_id="j-odd")
    assert (event["type"], event["data"]["outputs"]) == ("generation.succeeded", [])
    assert metric(relay_server, name, "apiframe") == before + 1
    logged = [line for line in capfd.readouterr().out.splitlines() if "succeeded_without" in line]
    assert len(logged) == 1 and "task_id=j-odd" in logged[0] and "provider=apiframe" in logged[0]
    good = {"jobId": "j-ok", "status": "COMPLETED", "result": ["https://c/ok.png"]}
    assert relay_server.post_callback(url, good).status_code == 200
    assert metric(relay_server, name, "apiframe") == before + 1


# --- failures that end ------------------------------------------------------------------------

FAILURE_WORDS = ["failure", "ERROR", "Errored", "timeout", "TIMED-OUT", "expired", " rejected "]
CANCEL_WORDS = ["cancelled", "CANCELED", "Cancel"]


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
@pytest.mark.parametrize("word", FAILURE_WORDS + CANCEL_WORDS)
def test_failure_and_cancel_words_end_the_task(provider: str, word: str) -> None:
    """The common failure and cancel words, in any case, end a task on every provider."""
    normalized = PROVIDERS[provider].normalize(SHAPES[provider]("t-1", word))
    expected = "canceled" if word in CANCEL_WORDS else "failed"
    assert (normalized.status, normalized.unknown_status) == (expected, False)
    if expected == "failed":
        assert normalized.error is not None and normalized.error["code"]


def test_unknown_status_words_are_counted_by_provider(relay_server: RelayServer) -> None:
    """Every update with a word the relay does not know is counted under its provider."""
    name = "relay_unknown_status_total"
    before = {p: metric(relay_server, name, p) for p in ("evolink", "apiframe")}
    url = relay_server.mint()
    for word, progress in (("warming_up", 5), ("warming_up", 5), ("thinking", 9)):
        payload = EVOLINK_COMPLETED | {"id": "t-odd", "status": word, "progress": progress}
        assert relay_server.post_callback(url, payload).status_code == 200
    assert metric(relay_server, name, "evolink") == before["evolink"] + 3
    assert metric(relay_server, name, "apiframe") == before["apiframe"]


# --- through watches, against the emulated status APIs, on both stores ----------------------


@pytest.fixture(params=["sqlite", "postgres"])
def store_settings(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """Relay settings for each store: the default SQLite file, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield {}
        return
    from tests.test_store_contract import fresh_schema

    with fresh_schema() as url:
        yield {"database_url": url}


def test_watches_end_on_failure_words_and_read_every_result_shape(
    store_settings: dict[str, Any],
    emulator: ProviderEmulator,
    relay_factory: Callable[..., RelayServer],
    sink: SubscriberServer,
) -> None:
    """Polled tasks that end with words the pages do not list end their watch with a failed
    or canceled event, and an Apiframe job whose result is a list of URLs has its outputs."""
    # Each task's first poll waits at the emulator's gate, and its timeline starts when the
    # gate opens: that first answer is "queued" however late the poll came.
    relay = relay_factory(
        **emulator.relay_settings(**{**FAST, "provider_timeout": 5.0}, **store_settings)
    )
    try:
        subscribe(relay, sink)
        done = ((0.0, "queued"), (0.3, "failed"))
        failing = {"timeline": done, "gated": True}
        tasks = {
            emulator.add_task("reve-art", words={"failed": "Rejected"}, **failing): (
                "reve-art",
                "generation.failed",
            ),
            emulator.add_task("apiframe", words={"failed": "TIMED_OUT"}, **failing): (
                "apiframe",
                "generation.failed",
            ),
            emulator.add_task("rivya", words={"failed": "canceled"}, **failing): (
                "rivya",
                "generation.canceled",
            ),
            emulator.add_task(
                "apiframe",
                timeline=((0.0, "queued"), (0.3, "succeeded")),
                result=["https://cdn.apiframe.example/a.png", "https://cdn.apiframe.example/b"],
                gated=True,
            ): ("apiframe", "generation.succeeded"),
        }
        watches = {
            task_id: post_watch(relay, provider=provider, task_id=task_id)["id"]
            for task_id, (provider, _) in tasks.items()
        }
        for task_id, (provider, _) in tasks.items():
            deadline = time.time() + 10
            while (provider, task_id) not in emulator.arrivals:
                assert time.time() < deadline, f"{task_id} was not polled"
                time.sleep(0.02)
            emulator.open(provider, task_id)
        for task_id, (_, last_type) in tasks.items():
            receipts = wait_task_events(sink, task_id, 2)
            assert types(receipts) == ["generation.queued", last_type]
            wait_watch(relay, watches[task_id], "completed")
            final = receipts[-1].data
            if last_type == "generation.succeeded":
                assert final["outputs"] == [
                    {"url": "https://cdn.apiframe.example/a.png", "media_type": "image"},
                    # no extension: the job's model (reve-create) says what it makes
                    {"url": "https://cdn.apiframe.example/b", "media_type": "image"},
                ]
            else:
                assert final["error"] is None or final["error"]["code"]
    finally:
        relay.stop()  # before the schema goes
