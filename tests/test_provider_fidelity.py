"""Providers as they really are: one reading of a callback, the settings that guard them,
every result shape, the failure words that end a task.

Unit tests call the normalizers and checks directly; the rest go through a real relay
(uvicorn on loopback, real httpx clients, a real SQLite file).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest
from starlette.datastructures import Secret

from service.errors import InvalidPayload
from service.providers import PROVIDERS
from service.providers.apiframe import Apiframe, InvalidSignature, apiframe_signature
from service.settings import ConfigError, Settings
from tests.conftest import EVOLINK_COMPLETED, RelayServer
from tests.test_receiver import assert_error

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
    # off: the signature header is not looked at.
    ("off", True, False, APIFRAME_V2, {}, True),
    ("off", True, False, APIFRAME_V2, WRONG, True),
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
        assert Apiframe().verify(headers, body, settings) is None
    else:
        with pytest.raises(InvalidSignature):
            Apiframe().verify(headers, body, settings)


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, "optional"),
        ({"RELAY_APIFRAME_SIGNATURE": "OFF"}, "off"),
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
        ({"RELAY_APIFRAME_SIGNATURE": "yes"}, "required, optional or off"),
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
    url = server.mint("apiframe")
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
