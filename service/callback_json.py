"""A callback body as JSON: strict, and with one reading only.

orjson parses callbacks (strict: no NaN or Infinity, valid UTF-8, no lone surrogates, nesting
bounded) but keeps the last of a key given twice in one object, as most parsers do; others keep
the first. The relay forwards the body verbatim (``data.raw``), so a body such as
``{"id": "t", "id": "u"}`` would be task ``u`` to the relay and task ``t`` to a subscriber whose
parser keeps the first key. Such a body is refused: 400 ``invalid_json``.

It is also refused when it nests deeper than ``MAX_RAW_DEPTH`` (64) levels: no provider's
payload comes near, and a subscriber's parser may not go as deep as orjson (Python's standard
``json`` fails near 1,000 levels).

orjson cannot see a repeated key, and the standard library's parser, which can
(``object_pairs_hook``), costs several orjson parses. So a cheap test comes first, and only
the bodies it cannot clear are read a second time by the standard library:

* With no backslash in the body, no string holds a quote, and every string reads the same in
  the body and in orjson's compact encoding of the parse. Take the whitespace out of the body
  and count ``":``: each key given, plus each string starting with ``:`` (after spaces). In the
  encoding, ``":`` counts each key the parse kept, plus each kept string starting with ``:``.
  The parse keeps one key per name, fewer than given if one repeats, so equal counts mean
  that none does.
* A backslash (an escape: ``\\"`` inside a string, or ``\\u0069`` spelling ``i``) voids that
  reasoning, so such bodies always get the second reading.

``bench/callback_json`` measures both readings against orjson alone.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from service.errors import InvalidInput
from service.forwarding import MAX_RAW_DEPTH, raw_too_deep

#: JSON's whitespace, taken out of a body before its key ends are counted.
_WHITESPACE = b" \t\n\r"


class _RepeatedKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def parse_callback(body: bytes) -> Any:
    """The parsed body; raises ``InvalidInput`` (400 ``invalid_json``) unless it is strict JSON,
    at most ``MAX_RAW_DEPTH`` levels deep, with every key at most once per object."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidInput("The callback body is not valid JSON.", code="invalid_json") from None
    if raw_too_deep(payload, body):
        raise InvalidInput(
            f"The callback body nests deeper than {MAX_RAW_DEPTH} levels.", code="invalid_json"
        )
    if _may_repeat_a_key(body, payload):
        _refuse_repeated_keys(body)
    return payload


def _may_repeat_a_key(body: bytes, payload: Any) -> bool:
    if b"\\" in body:
        return True
    keys_kept = orjson.dumps(payload).count(b'":')  # at most 64 levels: orjson encodes 255
    return body.translate(None, _WHITESPACE).count(b'":') != keys_kept


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value = dict(pairs)
    if len(value) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _RepeatedKey(key)
            seen.add(key)
    return value


def _refuse_repeated_keys(body: bytes) -> None:
    try:
        json.loads(body, object_pairs_hook=_unique_keys)
    except _RepeatedKey as repeated:
        shown = repeated.key if len(repeated.key) <= 64 else repeated.key[:64] + "..."
        raise InvalidInput(
            f"The callback body gives the key {shown!r} twice in one object; readers would "
            "disagree on its value.",
            code="invalid_json",
        ) from None
    except ValueError:  # not expected after orjson accepted it; refused rather than guessed
        raise InvalidInput("The callback body is not valid JSON.", code="invalid_json") from None
