"""GET /openapi.json describes every route, and a real relay never contradicts it.

schemathesis generates requests from the document (valid ones, and invalid ones that must be
refused with 4xx) against a real uvicorn relay on loopback, and checks each answer: no 5xx,
a documented status code and content type, a body that matches the documented schema.
The relay runs no delivery worker, so nothing it is fed is ever sent anywhere.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from service.api_keys import SCOPES
from service.app import create_app, route_table
from service.openapi import document
from service.settings import Settings
from tests.conftest import (
    ADMIN_TOKEN,
    EVOLINK_COMPLETED,
    RelayServer,
    ServerThread,
    bound_socket,
    make_settings,
)

#: Examples per operation: enough to find contradictions, bounded to keep the run short.
EXAMPLES = 40


def _openapi_path(path: str) -> str:
    """Starlette's ``{name:converter}`` -> OpenAPI's ``{name}``."""
    return re.sub(r"\{(\w+)(:\w+)?\}", r"{\1}", path)


def test_every_route_is_described_and_nothing_else() -> None:
    """Every API route is in the document; the ops console's HTML pages are not the API."""
    app = create_app(Settings(database_url="sqlite:///:memory:"), run_worker=False)
    served = {
        (method.lower(), _openapi_path(path))
        for method, path in route_table(app)
        if method != "HEAD" and not (path == "/ops" or path.startswith("/ops/"))
    }
    paths = document()["paths"]
    described = {(method, path) for path, item in paths.items() for method in item}
    assert served - described == set(), "routes missing from service/openapi.py"
    assert described - served == set(), "service/openapi.py describes routes that do not exist"


def test_document_is_valid_openapi_and_served(relay_server: RelayServer) -> None:
    schemathesis.openapi.from_dict(copy.deepcopy(document())).validate()  # OpenAPI 3.1 meta-schema
    response = relay_server.client.get("/openapi.json")
    assert response.status_code == 200
    assert response.json() == document()
    for path, item in document()["paths"].items():
        for method, operation in item.items():
            assert operation.get("summary"), (method, path)
            assert operation["responses"], (method, path)
            if path.startswith("/v1/"):
                assert "401" in operation["responses"], (method, path)


@pytest.fixture(scope="module")
def fuzzed_relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayServer]:
    """A relay without a delivery worker, with a little of everything stored."""
    sock = bound_socket()
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    config = make_settings(tmp, sock.getsockname()[1])
    thread = ServerThread(create_app(config, run_worker=False), sock).start()
    relay = RelayServer(f"http://127.0.0.1:{thread.port}", config, thread)
    relay.add_subscriber("http://127.0.0.1:9/hook", description="never called: no worker")
    url = relay.mint(metadata={"user": "u-1"})
    relay.post_callback(url, EVOLINK_COMPLETED)
    relay.post_callback(url, EVOLINK_COMPLETED | {"status": "processing", "progress": 10})
    yield relay
    relay.stop()


# The document the relay serves (test_document_is_valid_openapi_and_served checks they agree).
schema = schemathesis.openapi.from_dict(document())


@schema.auth()
class AdminToken:
    """The admin bearer token on every request (the console's pages simply ignore it)."""

    def get(self, case: schemathesis.Case, context: schemathesis.AuthContext) -> str:
        return ADMIN_TOKEN

    def set(self, case: schemathesis.Case, data: str, context: schemathesis.AuthContext) -> None:
        case.headers = {**(case.headers or {}), "authorization": f"Bearer {data}"}


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
    database=None,
)
def test_the_api_never_contradicts_its_document(
    case: schemathesis.Case, fuzzed_relay: RelayServer
) -> None:
    case.call_and_validate(
        base_url=fuzzed_relay.base_url,
        timeout=10,
        allow_redirects=False,
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
            negative_data_rejection,
        ],
    )


def test_unauthenticated_admin_calls_match_the_document(fuzzed_relay: RelayServer) -> None:
    """Without the bearer token every /v1 operation answers the documented 401 error."""
    for path, item in document()["paths"].items():
        if not path.startswith("/v1/"):
            continue
        concrete = re.sub(r"\{\w+\}", "x", path)
        for method in item:
            answer = httpx.request(method, f"{fuzzed_relay.base_url}{concrete}", timeout=10)
            assert answer.status_code == 401, (method, path)
            assert answer.json()["error"]["code"] == "unauthorized"


def test_every_operation_is_named_tagged_and_titled() -> None:
    """What a generated client is made from: a unique snake_case operationId per operation,
    snake_case tags (module names), and schema titles equal to their component names."""
    doc = document()
    identifier = re.compile(r"^[a-z][a-z0-9_]*$")
    tags = {tag["name"] for tag in doc["tags"]}
    assert all(identifier.match(tag) for tag in tags), tags
    ids = []
    for path, item in doc["paths"].items():
        assert not path.startswith("/ops"), path
        for method, operation in item.items():
            ids.append(operation["operationId"])
            assert identifier.match(operation["operationId"]), (method, path)
            assert operation["tags"] and set(operation["tags"]) <= tags, (method, path)
            if path.startswith("/v1/"):
                assert "`invalid_query`" in operation["responses"]["400"]["description"]
    assert len(ids) == len(set(ids)), sorted(ids)
    for name, schema in doc["components"]["schemas"].items():
        assert schema.get("title") == name, name
    event = doc["webhooks"]["generation-event"]["post"]["requestBody"]["content"]
    assert event["application/json"]["schema"] == {"$ref": "#/components/schemas/GenerationEvent"}


def test_every_operation_states_the_scope_it_needs() -> None:
    """Each admin operation names the least API key scope it needs, in its security
    requirement and in ``x-required-scope``; every GET but the keys' list needs only read, and
    only operations above read document the 403 ``insufficient_scope``."""
    doc = document()
    scheme = doc["components"]["securitySchemes"]["apiKey"]
    assert scheme["scheme"] == "bearer"
    assert all(scope in scheme["description"] for scope in SCOPES)
    declared = {}
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            if not path.startswith("/v1/"):
                continue
            scope = operation["x-required-scope"]
            assert scope in SCOPES, (method, path)
            assert operation["security"] == [{"apiKey": [scope]}], (method, path)
            assert ("403" in operation["responses"]) == (scope != "read"), (method, path)
            if scope != "read":
                assert "`insufficient_scope`" in operation["responses"]["403"]["description"]
            declared[(method, path)] = scope
    assert {scope for (method, path), scope in declared.items() if method == "get"} == {
        "read",
        "admin",
    }
    assert [key for key, scope in declared.items() if key[0] == "get" and scope != "read"] == [
        ("get", "/v1/keys")
    ]
    assert declared[("post", "/v1/callback-urls")] == "mint"
    assert declared[("post", "/v1/watches")] == "mint"
    assert declared[("post", "/v1/deliveries/replay")] == "operate"
    assert declared[("post", "/v1/subscribers")] == "admin"
    assert doc["paths"]["/metrics"]["get"]["x-required-scope"] == "read"


def test_every_operation_refuses_the_scope_below_its_own(fuzzed_relay: RelayServer) -> None:
    """What the document states is what the relay does: for every operation, a key of the
    scope just below the declared one is answered 403 naming it, and a key of the declared
    scope gets past the check (to whatever the request itself deserves)."""
    keys = {}
    for scope in SCOPES:
        created = fuzzed_relay.client.post(
            "/v1/keys", json={"scope": scope}, headers=fuzzed_relay.admin
        )
        assert created.status_code == 201, created.text
        keys[scope] = created.json()["key"]
    checked = 0
    for path, item in document()["paths"].items():
        if not path.startswith("/v1/"):
            continue
        concrete = re.sub(r"\{\w+\}", "x", path)
        for method, operation in item.items():
            scope = operation["x-required-scope"]
            body = None if method in ("get", "delete") else {}
            allowed = fuzzed_relay.client.request(
                method, concrete, json=body, headers={"authorization": f"Bearer {keys[scope]}"}
            )
            assert allowed.status_code not in (401, 403), (method, path, allowed.text)
            if scope == "read":
                continue
            below = SCOPES[SCOPES.index(scope) - 1]
            answer = fuzzed_relay.client.request(
                method, concrete, json=body, headers={"authorization": f"Bearer {keys[below]}"}
            )
            assert answer.status_code == 403, (method, path, below)
            assert answer.json()["error"]["code"] == "insufficient_scope"
            assert f"scope {scope}" in answer.json()["error"]["message"]
            checked += 1
    assert checked >= 15
