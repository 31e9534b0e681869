"""Watches: registering one, finding them, what one shows, and an operator's decisions."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from service.shapes.base import MetadataPageQuery, Shape, Time

MAX_DEADLINE_SECONDS = 30 * 86_400

WatchState = Literal["active", "completed", "expired", "rejected", "canceled"]


class NewWatch(Shape, kw_only=True):
    """``POST /v1/watches`` (and ``relay watch``)."""

    error_code: ClassVar[str] = "invalid_watch"
    field_codes: ClassVar[dict[str, str]] = {
        "provider": "invalid_provider",
        "task_id": "invalid_task_id",
        "metadata": "invalid_metadata",
        "deadline_seconds": "invalid_deadline",
        "poll_after_seconds": "invalid_poll_after",
    }

    provider: Annotated[str, Meta(min_length=1, description='e.g. "reve-art".')]
    task_id: Annotated[str | int, Meta(description="The provider's task id.")]
    metadata: Annotated[dict[str, Any], Meta(description="At most 16 KiB of JSON.")] | None = None
    deadline_seconds: Annotated[int, Meta(ge=1, le=MAX_DEADLINE_SECONDS)] | None = None
    poll_after_seconds: Annotated[int, Meta(ge=0, le=MAX_DEADLINE_SECONDS)] | None = None


class WatchQuery(MetadataPageQuery, kw_only=True):
    """``GET /v1/watches``: newest first."""

    state: Annotated[WatchState, Meta(description="Only this state.")] | UnsetType = UNSET
    provider: Annotated[str, Meta(description="Only this provider's.")] | UnsetType = UNSET
    task_id: Annotated[str, Meta(description="Only this task's.")] | UnsetType = UNSET
    suspect: Annotated[
        Literal["true", "false", "undecided"],
        Meta(
            description="true: only watches with a suspect callback; undecided: only those an "
            "operator can still release or dismiss."
        ),
    ] = "false"
    held: Annotated[
        bool,
        Meta(description="true: only active watches holding a callback awaiting confirmation."),
    ] = False
    flag: (
        Annotated[
            Literal["unknown_status"],
            Meta(
                description="unknown_status: only active watches whose provider answers a "
                "status word the relay does not know."
            ),
        ]
        | UnsetType
    ) = UNSET


class Suspect(msgspec.Struct, kw_only=True):
    """A held callback the provider's API did not confirm: why, and the status it claimed.
    Such a watch emits nothing of its own."""

    reason: Literal["contradicted", "task_not_found", "invalid_task_id", "deadline_unconfirmed"]
    callback_status: str | None
    decision: (
        Annotated[
            Literal["released", "dismissed"],
            Meta(
                description="An operator's choice (POST /v1/watches/{id}/release or /dismiss); "
                "null while undecided."
            ),
        ]
        | None
    )
    decided_by: Annotated[str, Meta(description="admin_api, console or cli.")] | None
    decided_at: Time | None


class ConflictUrl(msgspec.Struct, kw_only=True):
    url_id: str
    metadata: dict[str, Any]


class Conflict(msgspec.Struct, kw_only=True):
    """Callbacks for this task came through several callback URLs: the watch waits, unpolled,
    until POST /v1/watches/{id}/resolve names whose the result is."""

    urls: list[ConflictUrl]


class Watch(msgspec.Struct, kw_only=True):
    """A task polled at its provider's status API until it ends."""

    id: str
    provider: str
    task_id: str
    state: WatchState
    origin: Literal["api", "callback"]
    metadata: dict[str, Any]
    created_at: Time
    updated_at: Time
    deadline_at: Time
    next_poll_at: Time | None
    waiting_for: (
        Annotated[
            Literal["budget"],
            Meta(
                description="budget: the watch is due, but its provider's request budget "
                "(RELAY_<PROVIDER>_API_RATE) is spent for now, or a 429 paused the provider; it "
                "is polled in its turn, earliest due first. null otherwise."
            ),
        ]
        | None
    )
    polls: Annotated[int, Meta(ge=0)]
    last_polled_at: Time | None
    last_status: str | None
    last_error: str | None
    held_status: str | None
    event_id: str | None
    conflict: Conflict | None
    suspect: Suspect | None
    held_callback: (
        Annotated[
            str,
            Meta(
                description="The callback held on this watch (awaiting confirmation, or kept "
                "because it ended suspect), as received (UTF-8 text); a listing shows its first "
                "16 KiB, GET /v1/watches/{id} all of it."
            ),
        ]
        | None
    )
    held_callback_bytes: Annotated[int, Meta(description="The held callback's size.")] | None
    last_answer: (
        Annotated[
            str,
            Meta(
                description="The first 4 KiB of the provider API's last answer (any status "
                "code), as text."
            ),
        ]
        | None
    )
    flag: (
        Annotated[
            Literal["unknown_status"],
            Meta(
                description="unknown_status: the API's last answer had a status word the relay "
                "does not know; the watch polls at its slowest interval until an operator "
                "decides."
            ),
        ]
        | None
    )
    unknown_status: str | None


class WatchPage(msgspec.Struct, kw_only=True):
    items: list[Watch]
    next_cursor: str | None


class ConflictResolution(Shape, kw_only=True):
    """``POST /v1/watches/{watch_id}/resolve``."""

    error_code: ClassVar[str] = "invalid_url_id"

    url_id: Annotated[
        str | None,
        Meta(
            description="One of conflict.urls[].url_id; null: the events carry no callback "
            "URL's metadata."
        ),
    ]


class Released(msgspec.Struct, kw_only=True):
    """A suspect callback released: forwarded as received, recorded on the watch."""

    watch: Watch
    outcome: (
        Annotated[
            str,
            Meta(
                description="accepted (emitted), or duplicate / superseded (the task already "
                "has that or a terminal event: not emitted again)."
            ),
        ]
        | None
    )
    event_id: str | None


class Dismissed(msgspec.Struct, kw_only=True):
    """A suspect callback dismissed: nothing emitted, the choice recorded on the watch."""

    watch: Watch
