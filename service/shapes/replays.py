"""What replays share: ``force``, in the body or the query."""

from __future__ import annotations

from typing import Annotated

from msgspec import UNSET, Meta, UnsetType

from service.shapes.base import Query

Force = Annotated[bool, Meta(description="Send it even after a newer status.")]


class ForceQuery(Query, kw_only=True):
    """``?force=true``: the body's ``force``, for callers that send no body."""

    force: (
        Annotated[
            bool,
            Meta(
                description="Replay even behind a newer delivery of the same task (the JSON "
                "body's `force` too)."
            ),
        ]
        | UnsetType
    ) = UNSET
