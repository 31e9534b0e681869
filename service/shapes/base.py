"""What every shape shares: refusing unknown fields, turning a failed check into the relay's
``invalid_*`` error, pages, and times."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, TypeVar

import msgspec
from msgspec import UNSET, Meta, UnsetType

from service.errors import InvalidInput

#: An RFC 3339 time, as every answer writes it (``service.clock.rfc3339``).
Time = Annotated[str, Meta(extra_json_schema={"format": "date-time"})]

#: A page's position: the ``next_cursor`` of the previous page.
Cursor = Annotated[
    str, Meta(description="`next_cursor` of the previous page (`invalid_cursor` if forged).")
]
PageSize = Annotated[int, Meta(ge=1, le=500, description="Page size.")]

#: Accepted by ``since`` and ``until`` (``service.http.query.parse_time`` reads them).
WHEN = "RFC 3339 time with a zone (e.g. 2026-11-21T03:00:00Z) or Unix seconds."


class Shape(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A request body: fields not declared are refused.

    ``error_code`` is the code of a refusal (``invalid_subscriber``...); ``field_codes`` gives
    some fields a code of their own (``ttl_seconds`` -> ``invalid_ttl``).
    """

    error_code: ClassVar[str] = "invalid_request"
    field_codes: ClassVar[Mapping[str, str]] = {}


class Query(Shape):
    """A query string: parameters not declared are refused (400 ``invalid_query``).

    A parameter left out is ``UNSET`` (``present`` reads it as None), never None: the text
    ``null`` is not how a query says "none", and is refused where a value is checked.
    """

    error_code: ClassVar[str] = "invalid_query"


class PageQuery(Query, kw_only=True):
    cursor: Cursor | UnsetType = UNSET
    limit: PageSize = 50


#: ``metadata.<key>=<value>`` parameters, gathered by ``service.http.query.read_query``.
MetadataQuery = Annotated[
    dict[str, str],
    Meta(
        description="`metadata.<key>=<value>`: only those whose metadata has this entry (exact"
        " value; several keys: all of them). Keys: 1 to 64 letters, digits, `_` or `-`;"
        " values: at most 256 characters; at most 8 keys."
    ),
]


class MetadataPageQuery(PageQuery, kw_only=True):
    """A list that can be filtered by metadata (``metadata.user_id=u-42``)."""

    metadata: MetadataQuery | UnsetType = UNSET


class ErrorDetail(msgspec.Struct):
    code: Annotated[str, Meta(description="Stable, for programs.")]
    message: Annotated[str, Meta(description="For people.")]


class Error(msgspec.Struct):
    """Every error the relay answers."""

    error: ErrorDetail


S = TypeVar("S", bound=Shape)
T = TypeVar("T")


def present(value: T | UnsetType) -> T | None:
    """A query parameter's value, None when it was left out."""
    return None if isinstance(value, UnsetType) else value


_AT = re.compile(r"^(?P<what>.*) - at `\$\.(?P<field>\w+)[^`]*`$")
_NAMED = re.compile(r"^Object (?P<what>contains unknown|missing required) field `(?P<field>.+)`$")


def decode(shape: type[S], value: Mapping[str, Any], *, strict: bool = True) -> S:
    """``value`` (a parsed JSON object, or a query's parameters with ``strict=False``, which
    reads numbers and booleans from text) as ``shape``; raises ``InvalidInput`` with the
    shape's code, or its field's, and a message naming the field."""
    try:
        return msgspec.convert(value, shape, strict=strict)
    except msgspec.ValidationError as exc:
        message, field = _explain(str(exc))
        code = shape.field_codes.get(field, shape.error_code) if field else shape.error_code
        raise InvalidInput(message, code=code) from None


def _explain(error: str) -> tuple[str, str | None]:
    """msgspec's message -> (a sentence for people, the top-level field it is about)."""
    named = _NAMED.match(error)
    if named is not None:
        field = named["field"]
        if named["what"] == "missing required":
            return f"{field} is required.", field
        return f"Unknown field: {field}.", None
    at = _AT.match(error)
    if at is not None:
        return f"{at['field']}: {at['what'][0].lower()}{at['what'][1:]}.", at["field"]
    return error if error.endswith(".") else f"{error}.", None
