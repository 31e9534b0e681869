"""Archive jobs: finding them, and retrying failed ones (``service.store.archive_sql.job_json``
is what the store reads back; these shapes declare and check it)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from service.shapes.base import PageQuery, Time

ArchiveStatus = Literal["pending", "archived", "failed"]


class ArchiveJobQuery(PageQuery, kw_only=True):
    """``GET /v1/archive-jobs``: newest first."""

    status: Annotated[ArchiveStatus, Meta(description="Only this status.")] | UnsetType = UNSET


class ArchivedOutput(msgspec.Struct, kw_only=True, tag_field="state", tag="archived"):
    """An output copied into the archive."""

    index: Annotated[int, Meta(ge=0, description="Its place in the event's `data.outputs`.")]
    key: Annotated[str, Meta(description="The object's key in the archive.")]
    content_type: str
    bytes: Annotated[int, Meta(ge=0)]
    sha256: Annotated[str, Meta(description="Of the archived bytes, hex.")]


class FailedOutput(msgspec.Struct, kw_only=True, tag_field="state", tag="failed"):
    """An output the last run could not archive."""

    index: Annotated[int, Meta(ge=0, description="Its place in the event's `data.outputs`.")]
    source_url: str
    reason: Annotated[
        str,
        Meta(
            description="`not_found`, `http_error`, `timeout`, `connection`, `store` (another "
            "run may pass); `too_large`, `blocked` (it cannot)."
        ),
    ]
    error: str


class ArchiveJob(msgspec.Struct, kw_only=True):
    """The copy of one succeeded event's outputs into the archive, before its deliveries."""

    event_id: str
    provider: str
    task_id: str
    status: Annotated[
        ArchiveStatus,
        Meta(
            description="pending: runs (again) at `next_attempt_at`; archived: every output "
            "kept; failed: the event went out with the outputs not kept as the provider sent "
            "them."
        ),
    ]
    attempts: Annotated[int, Meta(ge=0, description="Runs so far.")]
    next_attempt_at: Time | None
    deadline_at: Annotated[Time, Meta(description="When the event goes out, archived or not.")]
    outputs: Annotated[
        list[ArchivedOutput | FailedOutput],
        Meta(description="What the runs so far did with each output tried."),
    ]
    last_error: str | None
    created_at: Time
    updated_at: Time


class ArchiveJobPage(msgspec.Struct, kw_only=True):
    items: list[ArchiveJob]
    next_cursor: str | None
