"""``GET /openapi.json``: the OpenAPI 3.1 description of every route the relay serves.

Written by hand, in one place, beside nothing else: the callback door, health and metrics,
the admin API under ``/v1`` (bearer ``RELAY_ADMIN_TOKEN``), and the ops console's HTML pages.
``tests/test_openapi.py`` checks that every Starlette route is described here (and nothing
that does not exist), and runs schemathesis against a real relay to find any answer that
contradicts this document.

Every error answers ``{"error": {"code", "message"}}``; the codes are listed per response.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from importlib import resources
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from service import __version__
from service.admin_deliveries import DELIVERY_STATUSES
from service.events import EVENT_TYPES, STATUSES
from service.http import JSONResponse
from service.providers import PROVIDERS
from service.subscribers import EVENT_TYPE_PATTERNS
from service.tokens import MAX_TTL_SECONDS

JSON = "application/json"
HTML = "text/html"
FORM = "application/x-www-form-urlencoded"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


def _html(description: str) -> dict[str, Any]:
    return {"description": description, "content": {HTML: {"schema": {"type": "string"}}}}


def _query(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema or {"type": "string"},
    }


def _path(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string"},
    }


def _body(schema: dict[str, Any], *, required: bool = False) -> dict[str, Any]:
    return {"required": required, "content": {JSON: {"schema": schema}}}


UNAUTHORIZED = _error("`unauthorized`: the admin bearer token is missing or wrong.")
BAD_JSON = "`invalid_json`: the body is not a JSON object"
STORE_DOWN = _error("`storage_unavailable`: the store could not answer; retry later.")
LIMIT = _query("limit", "Page size.", {"type": "integer", "minimum": 1, "maximum": 500})
CURSOR = _query("cursor", "`next_cursor` of the previous page (`invalid_cursor` if forged).")
WHEN = "RFC 3339 time with a zone (e.g. 2026-11-21T03:00:00Z) or Unix seconds."


def _admin(
    summary: str,
    responses: dict[str, Any],
    *,
    tag: str,
    parameters: list[dict[str, Any]] | None = None,
    body: dict[str, Any] | None = None,
    description: str | None = None,
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "tags": [tag],
        "summary": summary,
        "security": [{"adminToken": []}],
        "responses": {**responses, "401": UNAUTHORIZED, "503": STORE_DOWN},
    }
    if description:
        operation["description"] = description
    if parameters:
        operation["parameters"] = parameters
    if body is not None:
        operation["requestBody"] = body
    return operation


def _page(item: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["items", "next_cursor"],
        "properties": {
            "items": {"type": "array", "items": item},
            "next_cursor": {"type": ["string", "null"]},
        },
    }


def _event_schemas() -> dict[str, Any]:
    text = resources.files("service.schemas").joinpath("generation-event.schema.json").read_text()
    event: dict[str, Any] = json.loads(text)
    event.pop("$schema", None)
    event.pop("$id", None)
    stored = copy.deepcopy(event)
    stored["title"] = "A stored event: the CloudEvent and its state at the relay"
    stored["required"] = [*stored["required"], "relay"]
    stored["properties"]["relay"] = {
        "type": "object",
        "required": ["state"],
        "properties": {
            "state": {
                "enum": ["emitted", "superseded"],
                "description": "superseded: came after the task's terminal update; never "
                "delivered.",
            }
        },
    }
    return {"GenerationEvent": event, "StoredEvent": stored}


TIME = {"type": "string", "format": "date-time"}
NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}
STRING_OR_NULL = {"type": ["string", "null"]}


def _schemas() -> dict[str, Any]:
    provider_list = {
        "type": ["array", "null"],
        "items": {"enum": sorted(PROVIDERS)},
        "description": "Only events of these providers; null: all.",
    }
    type_list = {
        "type": ["array", "null"],
        "items": {"enum": sorted(EVENT_TYPE_PATTERNS)},
        "description": "Only these event types (`generation.*` and `*`: all); null: all.",
    }
    subscriber = {
        "type": "object",
        "required": [
            "id",
            "url",
            "description",
            "providers",
            "event_types",
            "enabled",
            "disabled_reason",
            "created_at",
            "updated_at",
        ],
        "properties": {
            "id": {"type": "string"},
            "url": {"type": "string"},
            "description": STRING_OR_NULL,
            "providers": provider_list,
            "event_types": type_list,
            "enabled": {"type": "boolean"},
            "disabled_reason": STRING_OR_NULL,
            "created_at": TIME,
            "updated_at": TIME,
        },
    }
    with_secret = copy.deepcopy(subscriber)
    with_secret["required"].append("secret")
    with_secret["properties"]["secret"] = {
        "type": "string",
        "pattern": "^whsec_",
        "description": "The signing secret, shown in full only in this answer.",
    }
    rotated = copy.deepcopy(with_secret)
    rotated["required"].append("previous_secret_valid_until")
    rotated["properties"]["previous_secret_valid_until"] = TIME
    changes = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "url": {"type": "string", "minLength": 1},
            "description": {"type": ["string", "null"], "maxLength": 500},
            "providers": provider_list,
            "event_types": type_list,
            "enabled": {"type": "boolean"},
        },
    }
    new_subscriber = copy.deepcopy(changes)
    new_subscriber["required"] = ["url"]
    delivery = {
        "type": "object",
        "required": [
            "id",
            "event_id",
            "subscriber_id",
            "status",
            "attempt_count",
            "next_attempt_at",
            "last_error",
            "created_at",
            "updated_at",
        ],
        "properties": {
            "id": {"type": "string"},
            "event_id": {"type": "string"},
            "subscriber_id": {"type": "string"},
            "status": {"enum": ["pending", "succeeded", "failed", "canceled"]},
            "attempt_count": {"type": "integer", "minimum": 0},
            "next_attempt_at": NULLABLE_TIME,
            "last_error": STRING_OR_NULL,
            "created_at": TIME,
            "updated_at": TIME,
        },
    }
    attempt = {
        "type": "object",
        "required": [
            "attempted_at",
            "trigger",
            "status_code",
            "latency_ms",
            "error",
            "response_excerpt",
        ],
        "properties": {
            "attempted_at": TIME,
            "trigger": {"enum": ["scheduled", "replay"]},
            "status_code": {"type": ["integer", "null"]},
            "latency_ms": {"type": "number"},
            "error": STRING_OR_NULL,
            "response_excerpt": {
                "type": ["string", "null"],
                "description": "The first 1 KiB of the answer.",
            },
        },
    }
    delivery_detail = copy.deepcopy(delivery)
    delivery_detail["required"].append("attempts")
    delivery_detail["properties"]["attempts"] = {"type": "array", "items": _ref("Attempt")}
    watch = {
        "type": "object",
        "required": ["id", "provider", "task_id", "state", "origin", "metadata", "created_at"],
        "properties": {
            "id": {"type": "string"},
            "provider": {"type": "string"},
            "task_id": {"type": "string"},
            "state": {"enum": ["active", "completed", "expired", "rejected", "canceled"]},
            "origin": {"enum": ["api", "callback"]},
            "metadata": {"type": "object"},
            "created_at": TIME,
            "updated_at": TIME,
            "deadline_at": TIME,
            "next_poll_at": NULLABLE_TIME,
            "waiting_for": {
                "description": "budget: the watch is due, but its provider's request budget "
                "(RELAY_<PROVIDER>_API_RATE) is spent for now, or a 429 paused the provider; "
                "it is polled in its turn, earliest due first. null otherwise.",
                "enum": ["budget", None],
            },
            "polls": {"type": "integer", "minimum": 0},
            "last_polled_at": NULLABLE_TIME,
            "last_status": STRING_OR_NULL,
            "last_error": STRING_OR_NULL,
            "held_status": STRING_OR_NULL,
            "event_id": STRING_OR_NULL,
            "suspect": {
                "description": "A held callback the provider's API did not confirm: why, and "
                "the status it claimed. Such a watch emits nothing of its own.",
                "oneOf": [
                    {"type": "null"},
                    {
                        "type": "object",
                        "required": [
                            "reason",
                            "callback_status",
                            "decision",
                            "decided_by",
                            "decided_at",
                        ],
                        "properties": {
                            "reason": {
                                "enum": [
                                    "contradicted",
                                    "task_not_found",
                                    "invalid_task_id",
                                    "deadline_unconfirmed",
                                ]
                            },
                            "callback_status": STRING_OR_NULL,
                            "decision": {
                                "description": "An operator's choice (POST /v1/watches/{id}/"
                                "release or /dismiss); null while undecided.",
                                "enum": ["released", "dismissed", None],
                            },
                            "decided_by": {
                                "description": "Where it was made: admin_api, console or cli.",
                                "type": ["string", "null"],
                            },
                            "decided_at": NULLABLE_TIME,
                        },
                    },
                ],
            },
            "held_callback": {
                "description": "The callback held on this watch (awaiting confirmation, or "
                "kept because it ended suspect), as received (UTF-8 text); a listing shows "
                "its first 16 KiB, GET /v1/watches/{id} all of it.",
                "type": ["string", "null"],
            },
            "held_callback_bytes": {
                "description": "The held callback's size in bytes.",
                "type": ["integer", "null"],
            },
            "last_answer": {
                "description": "The first 4 KiB of the provider API's last answer (any "
                "status code), as text.",
                "type": ["string", "null"],
            },
            "flag": {
                "description": "unknown_status: the API's last answer had a status word the "
                "relay does not know (unknown_status); the watch polls at its slowest interval "
                "until an operator decides.",
                "enum": ["unknown_status", None],
            },
            "unknown_status": STRING_OR_NULL,
            "conflict": {
                "description": "Callbacks for this task came through several callback URLs: "
                "the watch waits, unpolled, until POST /v1/watches/{id}/resolve names whose "
                "the result is.",
                "oneOf": [
                    {"type": "null"},
                    {
                        "type": "object",
                        "required": ["urls"],
                        "properties": {
                            "urls": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["url_id", "metadata"],
                                    "properties": {
                                        "url_id": {"type": "string"},
                                        "metadata": {"type": "object"},
                                    },
                                },
                            }
                        },
                    },
                ],
            },
        },
    }
    return {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {
                        "code": {"type": "string", "description": "Stable, for programs."},
                        "message": {"type": "string", "description": "For people."},
                    },
                }
            },
        },
        "CallbackAnswer": {
            "type": "object",
            "required": ["received"],
            "properties": {
                "received": {"const": True},
                "event_id": {"type": "string"},
                "duplicate": {"type": "boolean"},
                "superseded": {"type": "boolean"},
                "held": {"type": "boolean"},
            },
        },
        "CallbackUrl": {
            "type": "object",
            "required": ["url", "provider", "metadata", "reusable", "expires_at"],
            "properties": {
                "url": {"type": "string"},
                "provider": {"type": "string"},
                "metadata": {"type": "object"},
                "reusable": {"type": "boolean"},
                "expires_at": TIME,
            },
        },
        **_event_schemas(),
        "Subscriber": subscriber,
        "SubscriberWithSecret": with_secret,
        "RotatedSubscriber": rotated,
        "SubscriberChanges": changes,
        "NewSubscriber": new_subscriber,
        "Delivery": delivery,
        "Attempt": attempt,
        "DeliveryDetail": delivery_detail,
        "Watch": watch,
        "Ready": {
            "type": "object",
            "required": ["status", "checks"],
            "properties": {
                "status": {"const": "ready"},
                "checks": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
        "NotReady": {
            "allOf": [
                _ref("Error"),
                {
                    "type": "object",
                    "required": ["checks"],
                    "properties": {
                        "checks": {"type": "object", "additionalProperties": {"type": "string"}}
                    },
                },
            ]
        },
    }


def _callback_operation(with_token: bool) -> dict[str, Any]:
    parameters = [_path("provider", f"One of: {', '.join(sorted(PROVIDERS))}.")]
    if with_token:
        parameters.append(_path("token", "The signed token of a minted callback URL."))
    return {
        "tags": ["callbacks"],
        "summary": "Receive a provider's callback"
        if with_token
        else "Receive an account-level, signed provider webhook (no URL token)",
        "description": "Checked in this order: provider, source address, URL token, body "
        "size, the provider's signature over the raw body, JSON, payload shape. Answered "
        "2xx only once the update is committed.",
        "parameters": parameters,
        "requestBody": {
            "required": True,
            "content": {JSON: {"schema": {"description": "The provider's payload, as sent."}}},
        },
        "responses": {
            "200": _json(_ref("CallbackAnswer"), "Stored (or a duplicate, or superseded)."),
            "400": _error(
                "`invalid_json`: the body is not JSON (NaN and Infinity neither), or an object "
                "in it gives a key twice."
            ),
            "401": _error(
                "`invalid_token`, `token_expired`, `invalid_signature`: not from the provider."
            ),
            "403": _error("`source_not_allowed`: outside RELAY_<PROVIDER>_ALLOWED_IPS."),
            "404": _error("`unknown_provider`."),
            "409": _error(
                "`url_bound_to_other_task`: the URL serves another task (mint one per job, or "
                'with "reusable": true).'
            ),
            "413": _error("`payload_too_large`: over RELAY_MAX_BODY_BYTES."),
            "422": _error(
                "`invalid_payload`: not an object; no task id; a task id neither a string nor "
                "an integer; a status that is not a string (the message names the field). "
                "`invalid_task_id`: over 256 characters, a control character, or only dots."
            ),
            "429": _error(
                "`too_many_held_callbacks`: the URL has RELAY_HOLDS_PER_URL callbacks awaiting"
                " confirmation (Retry-After)."
            ),
            "503": _error(
                "`storage_unavailable`: nothing was accepted; the provider retries."
                " `held_callbacks_full`: RELAY_HOLDS_MAX callbacks await confirmation"
                " (Retry-After)."
            ),
        },
    }


def _console(summary: str, *, post: bool = False, path_params: tuple[str, ...] = ()) -> Any:
    operation: dict[str, Any] = {
        "tags": ["console"],
        "summary": summary,
        "description": "An HTML page of the ops console (session cookie, not the bearer "
        "token). Signed-out visitors are redirected to /ops/sign-in.",
        "responses": {
            "200": _html("The page."),
            "303": {"description": "Redirect (to sign in, or back after a change)."},
            "404": _html("No such resource."),
        },
    }
    if path_params:
        operation["parameters"] = [_path(name, name) for name in path_params]
    if post:
        operation["description"] = (
            "A form of the ops console: needs a signed-in session cookie and its CSRF token. "
            "Answers 303 back to a page with a notice."
        )
        operation["requestBody"] = {
            "required": False,
            "content": {
                FORM: {
                    "schema": {
                        "type": "object",
                        "properties": {"csrf": {"type": "string"}},
                    }
                }
            },
        }
        operation["responses"] = {
            "200": _html("A page showing the result (a new secret is shown once)."),
            "303": {"description": "Back to a console page, with a notice."},
            "401": _html("Sign-in: not the admin token."),
            "403": _html("No session, or the form's CSRF token is wrong or stale."),
            "413": _error("`payload_too_large`."),
            "429": _html("Sign-in: too many failures; wait (Retry-After)."),
        }
    return operation


def _paths() -> dict[str, Any]:
    subscriber_id = _path("subscriber_id", "A subscriber id (sub_...).")
    delivery_id = _path("delivery_id", "A delivery id (dlv_...).")
    event_id = _path("event_id", "An event id (evt_...).")
    watch_id = _path("watch_id", "A watch id.")
    not_found = _error("`not_found`.")
    disabled = _error("`subscriber_disabled`: enable the subscriber first.")
    held = _error(
        "`subscriber_disabled`: enable the subscriber first; `newer_event_delivered`: the"
        " subscriber already has a later event of the same task (the message names that"
        " delivery); `force` sends it anyway."
    )
    force_query = _query(
        "force",
        "Replay even behind a newer delivery of the same task (the JSON body's `force` too).",
        {"enum": ["true", "false"]},
    )
    force_field = {"type": "boolean", "description": "Send it even after a newer status."}

    def skipped_list(key: str) -> dict[str, Any]:
        return {
            "type": "array",
            "description": "Left alone: a later event of the task already reached the subscriber.",
            "items": {
                "type": "object",
                "required": [key, "newer_delivery_id"],
                "properties": {key: {"type": "string"}, "newer_delivery_id": {"type": "string"}},
            },
        }

    invalid = "`invalid_query`, `invalid_cursor`"
    return {
        "/callbacks/{provider}/{token}": {"post": _callback_operation(True)},
        "/callbacks/{provider}": {"post": _callback_operation(False)},
        "/healthz": {
            "get": {
                "tags": ["operations"],
                "summary": "The process answers",
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["status"],
                            "properties": {"status": {"const": "ok"}},
                        },
                        "Alive.",
                    )
                },
            }
        },
        "/readyz": {
            "get": {
                "tags": ["operations"],
                "summary": "The store commits and the delivery worker is claiming",
                "responses": {
                    "200": _json(_ref("Ready"), "Ready."),
                    "503": _json(_ref("NotReady"), "`not_ready`, with the reason and checks."),
                },
            }
        },
        "/metrics": {
            "get": {
                "tags": ["operations"],
                "summary": "Prometheus metrics",
                "description": "Counters of callbacks, events and delivery attempts, the "
                "attempt latency histogram, and backlog gauges read from the store now. The "
                "admin token is required unless RELAY_METRICS_PUBLIC=true.",
                "security": [{"adminToken": []}, {}],
                "responses": {
                    "200": {
                        "description": "The Prometheus text format.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "401": UNAUTHORIZED,
                },
            }
        },
        "/openapi.json": {
            "get": {
                "tags": ["operations"],
                "summary": "This document",
                "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1.")},
            }
        },
        "/v1/callback-urls": {
            "post": _admin(
                "Mint a signed callback URL",
                {
                    "201": _json(_ref("CallbackUrl"), "Minted."),
                    "400": _error(
                        f"{BAD_JSON}; `invalid_provider`, `invalid_ttl`, `invalid_metadata`, "
                        "`invalid_reusable`, `no_callbacks` (the provider sends none: use a "
                        "watch)."
                    ),
                    "404": _error("`unknown_provider`."),
                    "413": _error("`payload_too_large`."),
                },
                tag="callback URLs",
                body=_body(
                    {
                        "type": "object",
                        "required": ["provider"],
                        "properties": {
                            "provider": {"type": "string"},
                            "metadata": {
                                "type": "object",
                                "description": "Attached to every event from this URL "
                                "(at most 16 KiB of JSON).",
                            },
                            "ttl_seconds": {
                                "type": "integer",
                                "minimum": 1,
                                "maximum": MAX_TTL_SECONDS,
                            },
                            "reusable": {
                                "type": "boolean",
                                "description": "false (the default): the URL serves the first "
                                "task a callback names; true: any task's.",
                            },
                        },
                    },
                    required=True,
                ),
            )
        },
        "/v1/events": {
            "get": _admin(
                "List events, newest first",
                {
                    "200": _json(_page(_ref("GenerationEvent")), "A page of events."),
                    "400": _error(invalid),
                },
                tag="events",
                parameters=[
                    _query("provider", "Only this provider's."),
                    _query("task_id", "Only this task's."),
                    _query("status", "Only this status.", {"enum": list(STATUSES)}),
                    _query("since", f"Received at or after: {WHEN}"),
                    CURSOR,
                    LIMIT,
                ],
            )
        },
        "/v1/events/{event_id}": {
            "get": _admin(
                "One event",
                {"200": _json(_ref("StoredEvent"), "The event."), "404": not_found},
                tag="events",
                parameters=[event_id],
            )
        },
        "/v1/events/{event_id}/raw": {
            "get": _admin(
                "The body an event was made from, byte for byte",
                {
                    "200": _json(
                        {},
                        "The callback body (or poll answer) exactly as received; the event's"
                        " data.raw may leave it out (raw_omitted).",
                    ),
                    "404": not_found,
                },
                tag="events",
                parameters=[event_id],
            )
        },
        "/v1/events/{event_id}/redeliver": {
            "post": _admin(
                "Deliver an event again (to one subscriber, or every enabled one that wants it)",
                {
                    "202": _json(
                        {
                            "type": "object",
                            "required": ["deliveries", "skipped"],
                            "properties": {
                                "deliveries": {"type": "integer", "minimum": 0},
                                "skipped": skipped_list("subscriber_id"),
                            },
                        },
                        "Deliveries created.",
                    ),
                    "400": _error(
                        f"{BAD_JSON}; `invalid_request`, `event_superseded` (never delivered)."
                    ),
                    "404": not_found,
                    "409": held,
                    "413": _error("`payload_too_large`."),
                },
                tag="events",
                parameters=[event_id, force_query],
                body=_body(
                    {
                        "type": "object",
                        "properties": {"subscriber_id": {"type": "string"}, "force": force_field},
                    }
                ),
            )
        },
        "/v1/subscribers": {
            "post": _admin(
                "Register a subscriber (its secret is shown once, here)",
                {
                    "201": _json(_ref("SubscriberWithSecret"), "Registered."),
                    "400": _error(f"{BAD_JSON}; `invalid_subscriber`, `invalid_url`."),
                    "413": _error("`payload_too_large`."),
                    "422": _error("`target_not_allowed`, `target_unresolvable`: SSRF policy."),
                },
                tag="subscribers",
                body=_body(_ref("NewSubscriber"), required=True),
            ),
            "get": _admin(
                "List subscribers, oldest first",
                {
                    "200": _json(_page(_ref("Subscriber")), "A page of subscribers."),
                    "400": _error(invalid),
                },
                tag="subscribers",
                parameters=[CURSOR, LIMIT],
            ),
        },
        "/v1/subscribers/{subscriber_id}": {
            "get": _admin(
                "One subscriber",
                {"200": _json(_ref("Subscriber"), "The subscriber."), "404": not_found},
                tag="subscribers",
                parameters=[subscriber_id],
            ),
            "patch": _admin(
                "Change url, description, filters or enabled",
                {
                    "200": _json(_ref("Subscriber"), "Changed."),
                    "400": _error(f"{BAD_JSON}; `invalid_subscriber`, `invalid_url`."),
                    "404": not_found,
                    "413": _error("`payload_too_large`."),
                    "422": _error("`target_not_allowed`, `target_unresolvable`."),
                },
                tag="subscribers",
                parameters=[subscriber_id],
                body=_body(_ref("SubscriberChanges")),
            ),
            "delete": _admin(
                "Remove a subscriber (its pending deliveries fail)",
                {"204": {"description": "Removed."}, "404": not_found},
                tag="subscribers",
                parameters=[subscriber_id],
            ),
        },
        "/v1/subscribers/{subscriber_id}/rotate-secret": {
            "post": _admin(
                "Issue a new secret; the old one signs beside it for 24 hours",
                {"200": _json(_ref("RotatedSubscriber"), "Rotated."), "404": not_found},
                tag="subscribers",
                parameters=[subscriber_id],
            )
        },
        "/v1/deliveries": {
            "get": _admin(
                "List deliveries, newest first",
                {
                    "200": _json(_page(_ref("Delivery")), "A page of deliveries."),
                    "400": _error(invalid),
                },
                tag="deliveries",
                parameters=[
                    _query("status", "Only this status.", {"enum": list(DELIVERY_STATUSES)}),
                    _query("subscriber_id", "Only this subscriber's."),
                    _query("event_id", "Only this event's."),
                    _query("since", f"Last changed at or after: {WHEN}"),
                    _query("until", f"Last changed before: {WHEN}"),
                    CURSOR,
                    LIMIT,
                ],
            )
        },
        "/v1/deliveries/replay": {
            "post": _admin(
                "Replay every failed delivery in a window (a fresh 1 s/2 s/4 s cycle)",
                {
                    "202": _json(
                        {
                            "type": "object",
                            "required": ["replayed", "skipped"],
                            "properties": {
                                "replayed": {"type": "integer", "minimum": 0},
                                "skipped": skipped_list("id"),
                            },
                        },
                        "How many were replayed, and which were left alone.",
                    ),
                    "400": _error(f"{BAD_JSON}; `invalid_query`, `invalid_request`."),
                    "404": not_found,
                    "409": disabled,
                    "413": _error("`payload_too_large`."),
                },
                tag="deliveries",
                parameters=[force_query],
                body=_body(
                    {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "subscriber_id": {"type": ["string", "null"]},
                            "since": {"type": ["string", "number", "null"], "description": WHEN},
                            "until": {"type": ["string", "number", "null"], "description": WHEN},
                            "force": force_field,
                        },
                    }
                ),
            )
        },
        "/v1/deliveries/{delivery_id}": {
            "get": _admin(
                "One delivery with every attempt",
                {"200": _json(_ref("DeliveryDetail"), "The delivery."), "404": not_found},
                tag="deliveries",
                parameters=[delivery_id],
            )
        },
        "/v1/deliveries/{delivery_id}/replay": {
            "post": _admin(
                "Replay one failed delivery (same webhook-id, fresh retry cycle)",
                {
                    "202": _json(
                        {
                            "type": "object",
                            "required": ["replayed", "status"],
                            "properties": {
                                "replayed": {"type": "integer", "minimum": 0, "maximum": 1},
                                "status": {"enum": ["pending", "succeeded", "failed", "canceled"]},
                            },
                        },
                        "Replayed (1), or not failed (0).",
                    ),
                    "400": _error(f"{BAD_JSON}; `invalid_query`, `invalid_request`."),
                    "404": not_found,
                    "409": held,
                    "413": _error("`payload_too_large`."),
                },
                tag="deliveries",
                parameters=[delivery_id, force_query],
                body=_body(
                    {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {"force": force_field},
                    }
                ),
            )
        },
        "/v1/watches": {
            "post": _admin(
                "Watch a task: poll its provider's status API until it ends",
                {
                    "201": _json(_ref("Watch"), "Watching."),
                    "400": _error(f"{BAD_JSON}; `invalid_watch` and other `invalid_*` codes."),
                    "404": _error("`unknown_provider`."),
                    "409": _error("`watch_exists`: the task has an active watch."),
                    "413": _error("`payload_too_large`."),
                    "422": _error("`provider_not_configured`: no API key for its status API."),
                },
                tag="watches",
                body=_body(
                    {
                        "type": "object",
                        "required": ["provider", "task_id"],
                        "additionalProperties": False,
                        "properties": {
                            "provider": {"type": "string"},
                            "task_id": {"type": "string"},
                            "metadata": {"type": "object"},
                            "deadline_seconds": {"type": "integer"},
                            "poll_after_seconds": {"type": "integer"},
                        },
                    },
                    required=True,
                ),
            ),
            "get": _admin(
                "List watches, newest first",
                {
                    "200": _json(_page(_ref("Watch")), "A page of watches."),
                    "400": _error(invalid),
                },
                tag="watches",
                parameters=[
                    _query(
                        "state",
                        "Only this state.",
                        {"enum": ["active", "completed", "expired", "rejected", "canceled"]},
                    ),
                    _query("provider", "Only this provider's."),
                    _query("task_id", "Only this task's."),
                    _query(
                        "suspect",
                        "true: only watches with a suspect callback; undecided: only those "
                        "an operator can still release or dismiss.",
                        {"enum": ["true", "false", "undecided"]},
                    ),
                    _query(
                        "held",
                        "true: only active watches holding a callback awaiting confirmation.",
                        {"enum": ["true", "false"]},
                    ),
                    _query(
                        "flag",
                        "unknown_status: only active watches whose provider answers a status "
                        "word the relay does not know.",
                        {"enum": ["unknown_status"]},
                    ),
                    CURSOR,
                    LIMIT,
                ],
            ),
        },
        "/v1/watches/{watch_id}": {
            "get": _admin(
                "One watch",
                {"200": _json(_ref("Watch"), "The watch."), "404": not_found},
                tag="watches",
                parameters=[watch_id],
            ),
            "delete": _admin(
                "Cancel an active watch",
                {
                    "200": _json(_ref("Watch"), "The canceled (or already finished) watch."),
                    "404": not_found,
                    "409": _error("`watch_not_active`."),
                },
                tag="watches",
                parameters=[watch_id],
            ),
        },
        "/v1/watches/{watch_id}/release": {
            "post": _admin(
                "Release a suspect callback: forward it as received, once",
                {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["watch", "outcome", "event_id"],
                            "properties": {
                                "watch": _ref("Watch"),
                                "outcome": {
                                    "description": "accepted (emitted), or duplicate / "
                                    "superseded (the task already has that or a terminal "
                                    "event: not emitted again).",
                                    "type": "string",
                                },
                                "event_id": {"type": "string"},
                            },
                        },
                        "Released, recorded on the watch (suspect.decision).",
                    ),
                    "404": not_found,
                    "409": _error(
                        "`not_suspect`: nothing to decide (no suspect callback kept, or still "
                        "awaiting confirmation); `already_decided`."
                    ),
                },
                tag="watches",
                parameters=[watch_id],
            )
        },
        "/v1/watches/{watch_id}/dismiss": {
            "post": _admin(
                "Dismiss a suspect callback: nothing is emitted, the choice is recorded",
                {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["watch"],
                            "properties": {"watch": _ref("Watch")},
                        },
                        "Dismissed, recorded on the watch (suspect.decision).",
                    ),
                    "404": not_found,
                    "409": _error("`not_suspect`; `already_decided`."),
                },
                tag="watches",
                parameters=[watch_id],
            )
        },
        "/v1/watches/{watch_id}/resolve": {
            "post": _admin(
                "Resolve an attribution conflict: whose callback URL the result is for",
                {
                    "200": _json(_ref("Watch"), "Resolved: the watch polls at once."),
                    "400": _error(f"{BAD_JSON}; `invalid_url_id`."),
                    "404": not_found,
                    "409": _error("`no_conflict`: the watch is not waiting for this."),
                },
                tag="watches",
                parameters=[watch_id],
                body=_body(
                    {
                        "type": "object",
                        "required": ["url_id"],
                        "properties": {
                            "url_id": {
                                "type": ["string", "null"],
                                "description": "One of conflict.urls[].url_id; null: the "
                                "events carry no callback URL's metadata.",
                            }
                        },
                    },
                    required=True,
                ),
            )
        },
        "/ops": {"get": _console("Overview: the last hour, and what waits now")},
        "/ops/sign-in": {
            "get": _console("The sign-in form"),
            "post": _console("Sign in with the admin token", post=True),
        },
        "/ops/sign-out": {"post": _console("Sign out", post=True)},
        "/ops/deliveries": {"get": _console("Deliveries (failed by default), with attempts")},
        "/ops/deliveries/replay": {"post": _console("Replay all shown", post=True)},
        "/ops/deliveries/{delivery_id}": {
            "get": _console("One delivery", path_params=("delivery_id",))
        },
        "/ops/watches": {
            "get": _console("Suspect and held callbacks, watches seeing unknown status words")
        },
        "/ops/watches/{watch_id}/release": {
            "post": _console("Release a suspect callback", post=True, path_params=("watch_id",))
        },
        "/ops/watches/{watch_id}/dismiss": {
            "post": _console("Dismiss a suspect callback", post=True, path_params=("watch_id",))
        },
        "/ops/deliveries/{delivery_id}/replay": {
            "post": _console("Replay one delivery", post=True, path_params=("delivery_id",))
        },
        "/ops/events": {"get": _console("Find events")},
        "/ops/events/{event_id}": {
            "get": _console("One event: normalized, raw, deliveries", path_params=("event_id",))
        },
        "/ops/subscribers": {
            "get": _console("Subscribers"),
            "post": _console("Add a subscriber", post=True),
        },
        "/ops/subscribers/{subscriber_id}": {
            "post": _console(
                "Enable, disable or change filters", post=True, path_params=("subscriber_id",)
            )
        },
        "/ops/subscribers/{subscriber_id}/rotate-secret": {
            "post": _console("Rotate the secret", post=True, path_params=("subscriber_id",))
        },
    }


@cache
def document() -> dict[str, Any]:
    """The whole OpenAPI document (built once)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "callback-relay",
            "version": __version__,
            "description": "Receives AI-generation callbacks, stores them durably, normalizes "
            "them into CloudEvents and relays them, signed, to subscribers. Errors answer "
            '`{"error": {"code", "message"}}`. Event types: ' + ", ".join(EVENT_TYPES) + ".",
        },
        "tags": [
            {"name": "callbacks", "description": "Where providers post."},
            {"name": "operations", "description": "Health, readiness, metrics."},
            {"name": "callback URLs"},
            {"name": "events"},
            {"name": "subscribers"},
            {"name": "deliveries", "description": "Failed deliveries and replay."},
            {"name": "watches", "description": "Tasks polled at their provider's API."},
            {"name": "console", "description": "The ops console's HTML pages and forms."},
        ],
        "paths": _paths(),
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {
                "adminToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "RELAY_ADMIN_TOKEN (`relay admin-token` prints it).",
                }
            },
        },
    }


async def openapi_endpoint(_request: Request) -> Response:
    return JSONResponse(document())
