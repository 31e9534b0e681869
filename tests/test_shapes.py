"""The admin API's declared shapes refuse what they do not declare, with the documented codes
(unit tests: no server)."""

from __future__ import annotations

from typing import Any

import pytest
from msgspec import UNSET
from starlette.requests import Request

from service.errors import InvalidInput
from service.http.query import read_query
from service.shapes.base import decode, present
from service.shapes.callback_urls import NewCallbackUrl
from service.shapes.events import EventQuery
from service.shapes.subscribers import NewSubscriber, SubscriberChanges
from service.shapes.watches import NewWatch, WatchQuery


@pytest.mark.parametrize(
    ("shape", "body", "code", "named"),
    [
        (NewCallbackUrl, {}, "invalid_provider", "provider is required"),
        (NewCallbackUrl, {"provider": "evolink", "ttl_seconds": 0}, "invalid_ttl", "ttl_seconds"),
        (NewCallbackUrl, {"provider": "evolink", "ttl_seconds": True}, "invalid_ttl", "bool"),
        (NewCallbackUrl, {"provider": "evolink", "metadata": [1]}, "invalid_metadata", "metadata"),
        (NewCallbackUrl, {"provider": "evolink", "reusable": 1}, "invalid_reusable", "reusable"),
        (NewCallbackUrl, {"provider": "evolink", "x": 1}, "invalid_request", "Unknown field: x"),
        (NewSubscriber, {}, "invalid_subscriber", "url is required"),
        (NewSubscriber, {"url": ""}, "invalid_subscriber", "url"),
        (NewSubscriber, {"url": "u", "providers": ["acme"]}, "invalid_subscriber", "acme"),
        (NewSubscriber, {"url": "u", "event_types": "*"}, "invalid_subscriber", "event_types"),
        (SubscriberChanges, {"enabled": "yes"}, "invalid_subscriber", "enabled"),
        (NewWatch, {"task_id": "t"}, "invalid_provider", "provider"),
        (NewWatch, {"provider": "p"}, "invalid_task_id", "task_id"),
        (NewWatch, {"provider": "p", "task_id": 1.5}, "invalid_task_id", "task_id"),
        (
            NewWatch,
            {"provider": "p", "task_id": "t", "deadline_seconds": 0},
            "invalid_deadline",
            "deadline_seconds",
        ),
        (NewWatch, {"provider": "p", "task_id": "t", "colour": 1}, "invalid_watch", "colour"),
    ],
)
def test_a_refused_body_names_its_field_with_its_code(
    shape: Any, body: dict[str, Any], code: str, named: str
) -> None:
    with pytest.raises(InvalidInput) as refused:
        decode(shape, body)
    assert refused.value.code == code
    assert named in str(refused.value)


def test_what_a_body_leaves_out_is_told_apart_from_null() -> None:
    """A PATCH's null clears a field; a field left out stays as it is (UNSET)."""
    changes = decode(SubscriberChanges, {"description": None})
    assert changes.description is None
    assert changes.url is UNSET and changes.enabled is UNSET
    new = decode(NewSubscriber, {"url": "http://example.com/hook", "providers": ["evolink"]})
    assert new.providers == ["evolink"] and new.enabled is UNSET


def _request(query: str) -> Request:
    return Request({"type": "http", "method": "GET", "path": "/", "query_string": query.encode()})


def test_a_query_is_read_into_its_shape() -> None:
    events = read_query(_request("limit=7&status=failed"), EventQuery)
    assert (events.limit, events.status, present(events.provider)) == (7, "failed", None)
    watches = read_query(_request("held=true&suspect=undecided"), WatchQuery)
    assert (watches.held, watches.suspect) == (True, "undecided")


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("colour=red", "colour"),
        ("limit=1&limit=2", "limit"),
        ("limit=501", "limit"),
        ("limit=ten", "limit"),
        ("status=null", "status"),
        ("status=done", "status"),
    ],
)
def test_a_refused_query_is_invalid_query(query: str, named: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        read_query(_request(query), EventQuery)
    assert refused.value.code == "invalid_query"
    assert named in str(refused.value)
