"""Query strings: read into a declared shape (``service.shapes``), and times."""

from __future__ import annotations

from datetime import datetime
from typing import TypeVar

from starlette.requests import Request

from service.errors import InvalidInput
from service.shapes.base import MetadataPageQuery, Query, decode
from service.store import metadata_index
from service.store.records import MetadataFilter

Q = TypeVar("Q", bound=Query)


def read_query(request: Request, shape: type[Q]) -> Q:
    """The request's query as ``shape``: a parameter it does not declare, one given twice, or
    a value out of its range is 400 ``invalid_query`` (the shape's code)."""
    params = request.query_params
    repeated = sorted({key for key, _ in params.multi_items() if len(params.getlist(key)) > 1})
    if repeated:
        raise InvalidInput(
            f"Give each parameter once ({', '.join(repeated)} came more than once).",
            code=shape.error_code,
        )
    values: dict[str, object] = dict(params)
    if issubclass(shape, MetadataPageQuery):
        # Metadata comes as metadata.<key> parameters, never as one "metadata".
        wanted = {
            key.removeprefix(METADATA): params[key] for key in params if key.startswith(METADATA)
        }
        values = {key: value for key, value in values.items() if not key.startswith(METADATA)}
        if "metadata" in params:
            raise InvalidInput(
                "Filter by metadata with metadata.<key>=<value>.", code=shape.error_code
            )
        if wanted:
            values["metadata"] = metadata_filter(wanted, shape.error_code)
    return decode(shape, values, strict=False)


#: The prefix of a metadata parameter: ``metadata.user_id=u-42``.
METADATA = "metadata."


def metadata_filter(wanted: dict[str, str], code: str = "invalid_query") -> dict[str, str]:
    """``wanted`` (key -> value, from ``metadata.<key>`` parameters or a console's search box)
    checked against what the index answers; ``InvalidInput`` (``code``) otherwise."""
    problem = metadata_index.filter_problem(wanted)
    if problem is not None:
        raise InvalidInput(f"Metadata filter: {problem}.", code=code)
    return wanted


def metadata_pairs(wanted: dict[str, str] | None) -> MetadataFilter:
    """A checked metadata filter as a store's filter takes it."""
    return tuple(sorted(wanted.items())) if wanted else ()


def parse_time(value: str | None, name: str) -> float | None:
    """RFC 3339 (``2026-01-01T00:00:00Z``) or Unix seconds, as Unix seconds."""
    if value is None or value == "":
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput(
            f"{name} must be an RFC 3339 time or Unix seconds.", code="invalid_query"
        ) from None
    if parsed.tzinfo is None:
        raise InvalidInput(f"{name} must carry a time zone (e.g. Z).", code="invalid_query")
    return parsed.timestamp()
