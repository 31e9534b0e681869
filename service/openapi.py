"""``GET /openapi.json``: the OpenAPI 3.1 description of the relay's API.

The admin API is derived: its paths from the declared operations (``service.admin``), their
parameters and bodies from the shapes in their ``Call`` annotations, the component schemas
from the shapes themselves (``msgspec.json.schema_components``). What is written here by hand
is what has no shape of its own: the callback door, health, metrics and this document. The
event is the JSON Schema subscribers validate against (``service/schemas``); how it reaches
them is described under ``webhooks``. The ops console's HTML pages are not part of the API.

Every error answers ``{"error": {"code", "message"}}``; the codes are listed per response.
``tests/test_openapi.py`` checks that every API route is described (and nothing else), and
runs schemathesis against a real relay to find any answer that contradicts this document.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable
from functools import cache
from importlib import resources
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from service import __version__
from service.admin import OPERATIONS, PREFIX
from service.events import EVENT_TYPES
from service.http.responses import JSONResponse
from service.idempotency import HEADER, MAX_LENGTH, REPLAYED_HEADER
from service.listeners import PUBLIC_PATHS, PUBLIC_PREFIXES
from service.operations import NoBody, Operation
from service.providers import PROVIDERS
from service.shapes.base import Error, PageQuery
from service.store.metadata_index import MAX_VALUE

JSON = "application/json"
UNAUTHORIZED = (
    "`unauthorized`: the bearer token is missing, or neither the admin token nor a live API key."
)
REF = "#/components/schemas/{name}"

PATH_PARAMETERS = {
    "subscriber_id": "A subscriber id (sub_...).",
    "delivery_id": "A delivery id (dlv_...).",
    "event_id": "An event id (evt_...).",
    "watch_id": "A watch id (wch_...).",
    "key_id": "An API key's id (key_...).",
}

TAGS = [
    {"name": "callbacks", "description": "Where providers post."},
    {"name": "operations", "description": "Health, readiness, metrics, this document."},
    {"name": "callback_urls", "description": "Signed URLs to give providers with a task."},
    {"name": "events", "description": "What the relay received, normalized."},
    {"name": "subscribers", "description": "Where events are delivered."},
    {"name": "deliveries", "description": "Events on their way to subscribers; replay."},
    {"name": "watches", "description": "Tasks polled at their provider's API."},
    {"name": "archive", "description": "Outputs kept in storage the user owns."},
    {"name": "keys", "description": "Scoped API keys: who may call what."},
]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(name=name)}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


def _path_parameter(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string"},
    }


#: W3C Trace Context headers (``service.tracing``): read at a callback, sent with a delivery.
TRACE_HEADERS = [
    {
        "name": "traceparent",
        "in": "header",
        "required": False,
        "description": "W3C Trace Context (version 00, lowercase hex).",
        "schema": {"type": "string", "maxLength": 512},
    },
    {
        "name": "tracestate",
        "in": "header",
        "required": False,
        "description": "W3C tracestate: at most 32 members and 512 characters, else dropped.",
        "schema": {"type": "string"},
    },
]


# -- the admin API, derived ---------------------------------------------------------------------

#: The header of the operations that honour one (``service.idempotency``).
IDEMPOTENCY_KEY = {
    "name": HEADER,
    "in": "header",
    "required": False,
    "description": "Makes a retry safe: the same key with the same request (method, path, "
    "body) within 24 hours gets the first answer again (with `Idempotent-Replayed: true`) "
    "instead of running twice. Scoped to the credential presented. Answers 2xx and 4xx are "
    "kept; a 5xx is not (retry it with the same key).",
    "schema": {"type": "string", "minLength": 1, "maxLength": MAX_LENGTH, "pattern": "^[ -~]+$"},
}
IDEMPOTENCY_REFUSAL = (
    "`invalid_idempotency_key`: the Idempotency-Key is empty, longer than"
    f" {MAX_LENGTH} characters, not printable ASCII, or given twice"
)
IDEMPOTENCY_CONFLICTS = (
    "`idempotency_key_reused`: the Idempotency-Key came with another request within 24 hours;"
    " `idempotency_key_in_progress`: its first request is still running (Retry-After)."
)
IDEMPOTENT_REPLAYED = {
    "description": "`true` when this is the answer kept for the Idempotency-Key.",
    "schema": {"const": "true"},
}


def _schema_of(
    shapes: Iterable[type[msgspec.Struct]],
) -> tuple[tuple[dict[str, Any], ...], dict[str, Any]]:
    return msgspec.json.schema_components(list(shapes), ref_template=REF)


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A query parameter's schema: absent is how a query says null."""
    options = schema.get("anyOf")
    if options is None:
        return schema
    rest = [option for option in options if option != {"type": "null"}]
    kept = {key: value for key, value in schema.items() if key not in ("anyOf", "default")}
    return {**(rest[0] if len(rest) == 1 else {"anyOf": rest}), **kept}


def _query_parameters(operation: Operation) -> list[dict[str, Any]]:
    query, _ = operation.shapes
    _, components = _schema_of([query])
    schema = components[query.__name__]
    required = set(schema.get("required", ()))
    parameters = []
    for name, prop in schema.get("properties", {}).items():
        prop = _without_null(prop)
        description = prop.pop("description", None)
        if name == "metadata":  # metadata.<key>=<value> parameters (read_query gathers them)
            name, prop = "metadata.<key>", {"type": "string", "maxLength": MAX_VALUE}
        parameter = {"name": name, "in": "query", "required": name in required, "schema": prop}
        if description is not None:
            parameter["description"] = description
        parameters.append(parameter)
    return parameters


def _admin_operation(operation: Operation) -> dict[str, Any]:
    query, body = operation.shapes
    status, content, description = operation.success
    if content is None:
        success: dict[str, Any] = {"description": description}
    elif isinstance(content, dict):
        success = _json(content, description)
    else:
        success = _json(_ref(content.__name__), description)
    refusals = ["`invalid_query`: a parameter not declared, given twice or out of range"]
    if issubclass(query, PageQuery):
        refusals.append("`invalid_cursor`")
    if body is not NoBody:
        refusals.append("`invalid_json`: the body is not a JSON object")
    if 400 in operation.errors:
        refusals.append(operation.errors[400])
    errors = dict(operation.errors)
    if operation.idempotent:
        refusals.append(IDEMPOTENCY_REFUSAL)
        errors[409] = (
            f"{errors[409]} {IDEMPOTENCY_CONFLICTS}" if 409 in errors else IDEMPOTENCY_CONFLICTS
        )
        success["headers"] = {REPLAYED_HEADER: IDEMPOTENT_REPLAYED}
    responses: dict[str, Any] = {str(status): success, "400": _error("; ".join(refusals) + ".")}
    for code, text in errors.items():
        if code != 400:
            responses[str(code)] = _error(text)
    responses["401"] = _error(UNAUTHORIZED)
    if operation.scope != "read":
        responses["403"] = _error(
            f"`insufficient_scope`: the key's scope is below {operation.scope}."
        )
    if body is not NoBody:
        responses["413"] = _error("`payload_too_large`.")
    responses["503"] = _error("`storage_unavailable`: the store could not answer; retry later.")
    path_parameters = [
        _path_parameter(name, PATH_PARAMETERS[name])
        for name in re.findall(r"\{(\w+)\}", operation.path)
    ]
    described: dict[str, Any] = {
        "operationId": operation.operation_id,
        "tags": [operation.tag],
        "summary": operation.summary,
        # OpenAPI 3.1 lets a bearer scheme's requirement name roles: the least scope needed.
        "security": [{"apiKey": [operation.scope]}],
        "x-required-scope": operation.scope,
    }
    if operation.description:
        described["description"] = operation.description
    parameters = path_parameters + _query_parameters(operation)
    if operation.idempotent:
        parameters.append(IDEMPOTENCY_KEY)
    if parameters:
        described["parameters"] = parameters
    if body is not NoBody:
        described["requestBody"] = {
            "required": operation.body_required,
            "content": {JSON: {"schema": _ref(body.__name__)}},
        }
    described["responses"] = responses
    return described


def _admin_paths() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for operation in OPERATIONS:
        item = paths.setdefault(PREFIX + operation.path, {})
        item[operation.method.lower()] = _admin_operation(operation)
    return paths


def _admin_shapes() -> list[type[msgspec.Struct]]:
    """Every shape a body or an answer of the admin API has (queries become parameters)."""
    shapes: list[type[msgspec.Struct]] = [Error]
    for operation in OPERATIONS:
        _, body = operation.shapes
        content = operation.success[1]
        if body is not NoBody:
            shapes.append(body)
        if isinstance(content, type):
            shapes.append(content)
    return list(dict.fromkeys(shapes))


# -- the event, from its JSON Schema ----------------------------------------------------------


def _event_schemas() -> dict[str, Any]:
    text = resources.files("service.schemas").joinpath("generation-event.schema.json").read_text()
    event: dict[str, Any] = json.loads(text)
    event.pop("$schema", None)
    event.pop("$id", None)
    event["description"] = event.pop("title")
    event["title"] = "GenerationEvent"
    stored = copy.deepcopy(event)
    stored["title"] = "StoredEvent"
    stored["description"] = "A stored event: the CloudEvent and its state at the relay."
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


WEBHOOKS = {
    "generation-event": {
        "post": {
            "operationId": "receive_generation_event",
            "tags": ["subscribers"],
            "summary": "What a subscriber receives: one event, signed",
            "description": "POSTed to each subscriber that wants it, signed the Standard "
            "Webhooks way (webhook-id = the event id, webhook-timestamp, webhook-signature "
            "`v1,<base64 HMAC-SHA256>` with the subscriber's secret), with the subscriber's "
            "custom headers, at most `max_per_second` a second. Any 2xx acknowledges it; "
            "anything else, or no answer within the timeout, is retried (a 429 or 503 with "
            "Retry-After: no sooner than it asks, at most an hour later). Each attempt "
            "sends `traceparent` (a span of its own, a child of the event's `traceparent` "
            "attribute) and the provider's `tracestate`, so the subscriber's spans join the "
            "trace.",
            "parameters": TRACE_HEADERS,
            "requestBody": {
                "required": True,
                "content": {JSON: {"schema": _ref("GenerationEvent")}},
            },
            "responses": {"2XX": {"description": "Received: not sent again."}},
        }
    }
}


# -- what has no shape of its own: callbacks, probes, this document ---------------------------


def _callback_operation(with_token: bool) -> dict[str, Any]:
    parameters = [_path_parameter("provider", f"One of: {', '.join(sorted(PROVIDERS))}.")]
    if with_token:
        parameters.append(_path_parameter("token", "The signed token of a minted callback URL."))
    return {
        "operationId": "receive_callback" if with_token else "receive_account_webhook",
        "tags": ["callbacks"],
        "summary": "Receive a provider's callback"
        if with_token
        else "Receive an account-level, signed provider webhook (no URL token)",
        "description": "Checked in this order: provider, source address, URL token, body "
        "size, the provider's signature over the raw body, JSON, payload shape. Answered "
        "2xx only once the update is committed. A valid `traceparent` (with its "
        "`tracestate`) continues the provider's trace: the callback is a child span of it, "
        "stored with the event; an invalid or missing one starts a new trace. Never refused "
        "for its trace headers.",
        "parameters": [*parameters, *TRACE_HEADERS],
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


def _public_paths() -> dict[str, Any]:
    checks = {"type": "object", "additionalProperties": {"type": "string"}}
    return {
        "/callbacks/{provider}/{token}": {"post": _callback_operation(True)},
        "/callbacks/{provider}": {"post": _callback_operation(False)},
        "/archive/{token}": {
            "get": {
                "operationId": "get_archived_output",
                "tags": ["archive"],
                "summary": "An archived output, at the URL its event carries",
                "description": (
                    "Served when RELAY_ARCHIVE_URL is set and RELAY_ARCHIVE_PUBLIC_URL is not."
                    " A local archive's file is answered directly (ranges allowed); an object"
                    " store's with a redirect to a presigned URL valid for 15 minutes."
                ),
                "parameters": [_path_parameter("token", "The output's key, signed by the relay.")],
                "responses": {
                    "200": {"description": "The output's bytes (local archive)."},
                    "302": {"description": "A presigned URL of the object (object store)."},
                    "404": _error("`archived_output_not_found`: no such (or no longer) kept."),
                    "503": _error("`archive_unavailable`: the store could not sign a URL."),
                },
            }
        },
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "tags": ["operations"],
                "summary": "The process answers",
                "responses": {
                    "200": _json(
                        {
                            "title": "Alive",
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
                "operationId": "readyz",
                "tags": ["operations"],
                "summary": "The store commits and the delivery worker is claiming",
                "responses": {
                    "200": _json(
                        {
                            "title": "Ready",
                            "type": "object",
                            "required": ["status", "checks"],
                            "properties": {"status": {"const": "ready"}, "checks": checks},
                        },
                        "Ready.",
                    ),
                    "503": _json(
                        {
                            "title": "NotReady",
                            "allOf": [
                                _ref("Error"),
                                {
                                    "type": "object",
                                    "required": ["checks"],
                                    "properties": {"checks": checks},
                                },
                            ],
                        },
                        "`not_ready`, with the reason and checks.",
                    ),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "tags": ["operations"],
                "summary": "Prometheus metrics",
                "description": "Counters of callbacks, events and delivery attempts, the "
                "attempt latency histogram, and backlog gauges read from the store now. The "
                "admin token or an API key of scope read (or above) is required unless "
                "RELAY_METRICS_PUBLIC=true.",
                "security": [{"apiKey": ["read"]}, {}],
                "x-required-scope": "read",
                "responses": {
                    "200": {
                        "description": "The Prometheus text format.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "401": _error(UNAUTHORIZED),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "tags": ["operations"],
                "summary": "This document",
                "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1.")},
            }
        },
    }


CALLBACK_ANSWER = {
    "title": "CallbackAnswer",
    "type": "object",
    "required": ["received"],
    "properties": {
        "received": {"const": True},
        "event_id": {"type": "string"},
        "duplicate": {"type": "boolean"},
        "superseded": {"type": "boolean"},
        "held": {"type": "boolean"},
    },
}


#: Which listener serves which path (``service.listeners``).
LISTENERS = (
    "Listeners: by default one address serves every path. With `RELAY_ADMIN_LISTEN` "
    "(`relay serve --admin-host/--admin-port`), the public listener serves only "
    + ", ".join(f"`{p}...`" for p in PUBLIC_PREFIXES)
    + ", "
    + ", ".join(f"`{p}`" for p in PUBLIC_PATHS)
    + " (any other path answers 404 `not_found` there); the admin listener serves every path: "
    "the admin API (`/v1/...`), `/metrics`, this document and the console (`/ops`)."
)


@cache
def document() -> dict[str, Any]:
    """The whole OpenAPI document (built once)."""
    _, shapes = _schema_of(_admin_shapes())
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "callback-relay",
            "version": __version__,
            "description": "Receives AI-generation callbacks, stores them durably, normalizes "
            "them into CloudEvents and relays them, signed, to subscribers. Errors answer "
            '`{"error": {"code", "message"}}`. Event types: '
            + ", ".join(EVENT_TYPES)
            + ". "
            + LISTENERS,
        },
        "tags": TAGS,
        "paths": {**_public_paths(), **_admin_paths()},
        "webhooks": WEBHOOKS,
        "components": {
            "schemas": {**shapes, "CallbackAnswer": CALLBACK_ANSWER, **_event_schemas()},
            "securitySchemes": {
                "apiKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key (`relay keys create --scope S`, `POST /v1/keys`:"
                    " `rk_<scope>_...`), or RELAY_ADMIN_TOKEN (`relay admin-token` prints it),"
                    " the bootstrap key of scope admin. Scopes, each including the ones before"
                    " it: read (every GET but the keys, /metrics) < mint (callback URLs,"
                    " registering and cancelling watches) < operate (replays, redeliveries,"
                    " archive retries, decisions on watches) < admin (subscribers, keys). Each"
                    " operation names the least scope it needs in its security requirement and"
                    " in `x-required-scope`; a smaller one is answered 403"
                    " `insufficient_scope`.",
                }
            },
        },
    }


async def openapi_endpoint(_request: Request) -> Response:
    return JSONResponse(document())
