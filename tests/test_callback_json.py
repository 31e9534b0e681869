"""Reading a callback body: strict JSON, and a key given twice in one object is refused.

The cheap test of ``service.callback_json`` is checked against the standard library's reading
(every object's pairs seen) on generated bodies: odd spacing, escapes, strings that look like
keys, and keys repeated at every depth.
"""

from __future__ import annotations

import json
import os
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.callback_json import parse_callback
from service.errors import InvalidInput

PROPERTY = settings(
    max_examples=int(os.environ.get("RELAY_PROPERTY_EXAMPLES", "400")), deadline=None
)


@pytest.mark.parametrize(
    ("body", "key"),
    [
        pytest.param(b'{"id": "t", "id": "u", "status": "completed"}', "id", id="top-level"),
        pytest.param(
            b'{"id":"t","status":"processing","status":"completed"}', "status", id="compact"
        ),
        pytest.param(b'{"id" : "t" ,\n  "id"\t:"u"}', "id", id="spaced"),
        pytest.param(b'{"id": "t", "task_info": {"a": 1, "a": 2}}', "a", id="nested"),
        pytest.param(b'{"id": "t", "results": [{"url": "x", "url": "y"}]}', "url", id="in-a-list"),
        pytest.param(b'{"id": "t", "\\u0069d": "u"}', "id", id="escaped-spelling"),
        pytest.param(b'{"id": "t\\n", "id": "u"}', "id", id="backslash-elsewhere"),
        pytest.param(
            orjson.dumps({"id": "t", "status": "completed"}, option=orjson.OPT_INDENT_2)[:-2]
            + b',\n  "id": "u"\n}',
            "id",
            id="pretty-printed",
        ),
    ],
)
def test_parse_callback_refuses_a_key_given_twice(body: bytes, key: str) -> None:
    """400 invalid_json, naming the key, wherever it repeats and however it is spelled."""
    assert isinstance(orjson.loads(body), dict)  # orjson alone would take it
    with pytest.raises(InvalidInput) as caught:
        parse_callback(body)
    assert caught.value.code == "invalid_json"
    assert caught.value.status_code == 400
    assert repr(key) in caught.value.message


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"id": "t", "task_info": {"id": "inner"}}', id="same-key-other-object"),
        pytest.param(b'{"results": [{"url": "a"}, {"url": "b"}]}', id="sibling-objects"),
        pytest.param(b'{"id": "t", "note": ":x", "m": "  : y"}', id="values-starting-with-colon"),
        pytest.param(b'{"id": "t", "note": "a\\": b", "x": 1}', id="escaped-quote-and-colon"),
        pytest.param(b'{"\\u0069d": "t", "id2": "u"}', id="escaped-distinct-keys"),
        pytest.param(b'{"a":' * 64 + b"1" + b"}" * 64, id="as-deep-as-allowed"),
        pytest.param(b"[1, 2]", id="not-an-object"),
    ],
)
def test_parse_callback_keeps_what_orjson_reads(body: bytes) -> None:
    """Bodies without a repeated key read exactly as orjson reads them."""
    assert parse_callback(body) == orjson.loads(body)


def test_parse_callback_refuses_bodies_deeper_than_subscribers_can_read() -> None:
    for body in (b'{"a":' * 65 + b"1" + b"}" * 65, b"[" * 1_010 + b"]" * 1_010):
        with pytest.raises(InvalidInput) as caught:
            parse_callback(body)
        assert caught.value.code == "invalid_json"
        assert "deeper than 64 levels" in caught.value.message


def test_parse_callback_refuses_what_orjson_refuses() -> None:
    """NaN, invalid UTF-8 and lone surrogates stay invalid_json."""
    for body in (b'{"x": NaN}', b'{"x": "\xff"}', b'{"x": "\\ud800"}', b"{"):
        with pytest.raises(InvalidInput) as caught:
            parse_callback(body)
        assert caught.value.code == "invalid_json"


def test_parse_callback_too_deep_for_the_second_reading_is_a_4xx() -> None:
    """A body orjson reads but the standard library cannot (1,000 levels) is refused cleanly."""
    body = b'{"a":' * 1000 + b'"\\n"' + b"}" * 1000
    orjson.loads(body)
    with pytest.raises(InvalidInput) as caught:
        parse_callback(body)
    assert caught.value.code == "invalid_json"


# --- generated bodies, checked against the standard library's reading ------------------------

KEYS = st.sampled_from(["id", "status", "url", "a", ":", " :", "x:", "i\\u0064", 'q\\"', ""])
SCALARS = st.sampled_from(
    ['"t"', '":"', '" : "', '"a\\":"', '"\\u003a"', "1", "null", "true", '"\\""', '""']
)
SPACE = st.sampled_from(["", " ", "\n", "\t ", "\r\n"])


@st.composite
def bodies(draw: st.DrawFn, depth: int = 0) -> str:
    """JSON text whose objects may give a key twice, with whitespace anywhere it may go."""
    kind = draw(
        st.sampled_from(["object", "object", "list", "scalar"] if depth < 3 else ["scalar"])
    )
    if kind == "scalar":
        return draw(SCALARS)
    if kind == "list":
        items = draw(st.lists(bodies(depth + 1), max_size=3))
        return "[" + ",".join(draw(SPACE) + item + draw(SPACE) for item in items) + "]"
    pairs = draw(st.lists(st.tuples(KEYS, bodies(depth + 1)), max_size=4))
    members = [
        f'{draw(SPACE)}"{key}"{draw(SPACE)}:{draw(SPACE)}{value}{draw(SPACE)}'
        for key, value in pairs
    ]
    return "{" + ",".join(members) + "}"


def _repeats_a_key(text: str) -> bool:
    repeated = False

    def pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal repeated
        repeated = repeated or len({key for key, _ in pairs}) != len(pairs)
        return dict(pairs)

    json.loads(text, object_pairs_hook=pairs_hook)
    return repeated


@PROPERTY
@given(bodies())
def test_parse_callback_refuses_exactly_the_bodies_that_repeat_a_key(text: str) -> None:
    """Refused if and only if some object gives one key twice (as the standard library sees it)."""
    body = text.encode()
    if _repeats_a_key(text):
        with pytest.raises(InvalidInput):
            parse_callback(body)
    else:
        assert parse_callback(body) == orjson.loads(body)
