"""Providers as they really are: one reading of a callback, the settings that guard them,
every result shape, the failure words that end a task.

Unit tests call the normalizers and checks directly; the rest go through a real relay
(uvicorn on loopback, real httpx clients, a real SQLite file).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from service.errors import InvalidPayload
from service.providers import PROVIDERS
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
