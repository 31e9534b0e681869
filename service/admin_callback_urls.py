"""Admin API: minting callback URLs."""

from __future__ import annotations

import msgspec
from starlette.responses import Response

from service.http.responses import JSONResponse
from service.operations import Call, NoQuery, operation
from service.shapes.callback_urls import CallbackUrl, NewCallbackUrl


@operation(
    "POST",
    "/callback-urls",
    tag="callback_urls",
    scope="mint",
    summary="Mint a signed callback URL",
    success=(201, CallbackUrl, "Minted."),
    errors={
        400: "`invalid_provider`, `invalid_ttl`, `invalid_metadata`, `invalid_reusable`, "
        "`invalid_request`, `no_callbacks` (the provider sends none: use a watch).",
        404: "`unknown_provider`.",
    },
    idempotent=True,
)
async def create_callback_url(call: Call[NoQuery, NewCallbackUrl]) -> Response:
    new = call.body
    minted = await call.relay.mint_callback_url(
        new.provider, new.metadata, new.ttl_seconds, new.reusable
    )
    return JSONResponse(msgspec.convert(minted, CallbackUrl), status_code=201)


operations = [create_callback_url]
