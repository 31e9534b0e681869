"""Query strings: read into a declared shape (``service.shapes``), and times."""

from __future__ import annotations

from datetime import datetime
from typing import TypeVar

from starlette.requests import Request

from service.errors import InvalidInput
from service.shapes.base import Query, decode

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
    return decode(shape, dict(params), strict=False)


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
