"""What the console's list pages read from their query string: a parameter a page does not
know, one given twice, or a value it cannot take is a 400 page saying so, never ignored (a
link typed or kept from an older version would otherwise show an unfiltered list as if it
were filtered). And the metadata search box: ``user_id=u-42, tenant=acme``.
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.datastructures import QueryParams

from service.errors import InvalidInput
from service.http.query import metadata_filter, metadata_pairs
from service.store.records import MetadataFilter

#: How much of what was typed an error message repeats.
SHOWN = 60


def query_refusal(query: QueryParams, known: Iterable[str]) -> str | None:
    """Why ``query`` is not one this page reads, or None."""
    unknown = sorted({key for key in query if key not in known})
    if unknown:
        names = ", ".join(repr(name[:SHOWN]) for name in unknown[:5])
        return f"Unknown parameter {names}: this page takes {', '.join(known)}."
    repeated = sorted({key for key in query if len(query.getlist(key)) > 1})
    if repeated:
        return f"Give each parameter once ({', '.join(repeated)} came more than once)."
    return None


def metadata_entries(text: str) -> dict[str, str]:
    """``key=value`` entries separated by commas, as typed in a metadata box (a search, or a
    subscriber's filter); ``InvalidInput`` when one is not ``key=value``."""
    wanted: dict[str, str] = {}
    for entry in text.split(","):
        entry = entry.strip()
        if not entry:
            continue
        key, sep, value = entry.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise InvalidInput(f"Metadata: write key=value, not {entry[:SHOWN]!r}.")
        if key in wanted:
            raise InvalidInput(f"Metadata: {key[:SHOWN]!r} is given twice.")
        wanted[key] = value
    return wanted


def metadata_search(text: str) -> MetadataFilter:
    """The metadata search box: all its entries must match; ``InvalidInput`` when one is not
    ``key=value`` or the index cannot answer it."""
    return metadata_pairs(metadata_filter(metadata_entries(text)))
