"""Admin API: scoped API keys (create one, shown once; list them; revoke one).

Managing keys needs scope ``admin``, the listing included: which keys exist, and what they may
do, is the administrator's business (``service.api_keys``).
"""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.responses import Response

from service import api_keys
from service.clock import rfc3339
from service.http.responses import JSONResponse
from service.operations import NO_SUCH, Call, NoBody, NoQuery, operation
from service.shapes.keys import Key, KeyList, KeyWithSecret, NewKey
from service.store.records import ApiKey

TAG = "keys"


def shown(record: ApiKey) -> dict[str, Any]:
    """A key as the API and the CLI show it: never its hash, never the key."""
    return {
        "id": record.id,
        "name": record.name,
        "scope": record.scope,
        "created_at": rfc3339(record.created_at),
        "last_used_at": None if record.last_used_at is None else rfc3339(record.last_used_at),
        "revoked_at": None if record.revoked_at is None else rfc3339(record.revoked_at),
    }


@operation(
    "POST",
    "/keys",
    tag=TAG,
    scope="admin",
    summary="Create an API key of a scope (the key is shown once, here)",
    success=(201, KeyWithSecret, "Created."),
    errors={400: "`invalid_key`, `invalid_scope`, `invalid_name`."},
)
async def create_key(call: Call[NoQuery, NewKey]) -> Response:
    record, key = await api_keys.create(call.relay, call.body.scope, call.body.name)
    return JSONResponse(
        msgspec.convert({**shown(record), "key": key}, KeyWithSecret), status_code=201
    )


@operation(
    "GET",
    "/keys",
    tag=TAG,
    scope="admin",
    summary="List API keys, oldest first (never the keys themselves)",
    success=(200, KeyList, "Every key, revoked ones included."),
)
async def list_keys(call: Call[NoQuery, NoBody]) -> Response:
    records = await call.relay.store.list_api_keys()
    return JSONResponse(KeyList(items=[msgspec.convert(shown(r), Key) for r in records]))


@operation(
    "DELETE",
    "/keys/{key_id}",
    tag=TAG,
    scope="admin",
    summary="Revoke an API key (at once, on every replica; its console sessions end)",
    success=(200, Key, "Revoked (revoking again changes nothing)."),
    errors=NO_SUCH,
)
async def revoke_key(call: Call[NoQuery, NoBody]) -> Response:
    record = await api_keys.revoke(call.relay, call.path("key_id"))
    return JSONResponse(msgspec.convert(shown(record), Key))


operations = [create_key, list_keys, revoke_key]
