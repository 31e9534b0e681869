"""Callback URLs: what minting one takes and answers."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

import msgspec
from msgspec import Meta

from service.shapes.base import Shape, Time
from service.tokens import MAX_TTL_SECONDS


class NewCallbackUrl(Shape, kw_only=True):
    """``POST /v1/callback-urls``."""

    field_codes: ClassVar[dict[str, str]] = {
        "provider": "invalid_provider",
        "metadata": "invalid_metadata",
        "ttl_seconds": "invalid_ttl",
        "reusable": "invalid_reusable",
    }

    provider: Annotated[str, Meta(min_length=1, description='e.g. "evolink".')]
    metadata: (
        Annotated[
            dict[str, Any],
            Meta(description="Attached to every event from this URL (at most 16 KiB of JSON)."),
        ]
        | None
    ) = None
    ttl_seconds: Annotated[int, Meta(ge=1, le=MAX_TTL_SECONDS)] | None = None
    reusable: Annotated[
        bool,
        Meta(
            description="false (the default): the URL serves the first task a callback names;"
            " true: any task's."
        ),
    ] = False


class CallbackUrl(msgspec.Struct, kw_only=True):
    """A minted callback URL: give ``url`` to the provider with the task."""

    url: str
    provider: str
    metadata: dict[str, Any]
    reusable: bool
    expires_at: Time
