"""Hostile input: property tests on the normalizers and checks, and thousands of generated
hostile requests against a real relay process.

Every answer to a hostile request must be a 4xx with the JSON error body (for HTTP that the
parser refuses before the app sees it, the protocol's own JSON 400 ``malformed_request`` or
431 ``header_too_large``, counted apart, or a closed connection);
never a 5xx, never a 2xx to something that is not a genuine callback; the process stays up and
its memory bounded.
"""

from __future__ import annotations

import asyncio
import collections
import random
import re
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

from service.callback_json import parse_callback
from service.providers import PROVIDERS
from service.request_head import MAX_HEAD_BYTES
from tests.relay_process import ADMIN, RelayProcess
from tests.reliability import Context, Row, free_port

SECTION = "Hostile input"
ROOT = Path(__file__).resolve().parents[2]
#: The relay's RELAY_MAX_BODY_BYTES here: small, so oversized bodies stay cheap to send.
LIMIT = 16_384
#: The admin API's body limit (service.http.read_json_object).
ADMIN_LIMIT = 65_536
#: RSS growth over the run that counts as unbounded.
RSS_BOUND_MB = 64
#: What the HTTP protocol (service.http_protocol) answers itself, before the app sees a request.
PROTOCOL_CODES = frozenset({"malformed_request", "header_too_large"})


# -- property tests ---------------------------------------------------------------------------


def property_tests(ctx: Context) -> list[Row]:
    """tests/test_properties.py run with a stated number of examples per property."""
    examples = ctx.pick(150, 2500)
    started = time.monotonic()
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "tests/test_properties.py",
            "-q",
            "-p",
            "no:cacheprovider",
            "--hypothesis-show-statistics",
        ],
        cwd=ROOT,
        env={**_environ(), "RELAY_PROPERTY_EXAMPLES": str(examples)},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    passing = failing = invalid = 0
    properties = 0
    for line in run.stdout.splitlines():
        if "::test_" in line and line.rstrip().endswith(":"):
            properties += 1
        found = re.search(r"(\d+) passing, (\d+) failing, and (\d+) invalid", line)
        if found:
            passing += int(found.group(1))
            failing += int(found.group(2))
            invalid += int(found.group(3))
    row = Row(
        SECTION,
        "Property tests: normalizers, tokens, signatures",
        {
            "properties (incl. one per provider)": properties,
            "examples per property": examples,
            "examples passed": passing,
            "examples failed": failing,
            "generated inputs filtered out": invalid,
            "seconds": round(time.monotonic() - started, 1),
        },
        "pytest on tests/test_properties.py in a subprocess with RELAY_PROPERTY_EXAMPLES, counts "
        "read from hypothesis's statistics: any JSON value gives a schema-valid event or "
        "InvalidPayload, any text a url_id or InvalidToken/TokenExpired, any headers and body "
        "None or InvalidSignature.",
    )
    row.expect(run.returncode == 0, f"pytest exited {run.returncode}: {run.stdout[-500:]}")
    row.expect(failing == 0, f"{failing} failing examples")
    row.expect(properties >= 8, f"only {properties} properties ran")
    row.expect(passing >= properties * examples, "fewer examples than asked ran")
    return [row]


def _environ() -> dict[str, str]:
    import os

    return dict(os.environ)


# -- generated requests -----------------------------------------------------------------------


@dataclass
class Probe:
    """One hostile request. ``raw`` bytes go over a socket as they are; otherwise httpx."""

    category: str
    method: str = "POST"
    path: str = "/"
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None
    #: Write EOF after the raw bytes (the sender leaves mid-request).
    cut: bool = False
    chunked: bool = False
    #: A 2xx is right: a genuine callback (the relay must accept it, not refuse it).
    valid: bool = False
    #: Malformed HTTP: the protocol's 400/431 or a closed connection is an acceptable answer.
    server_may_refuse: bool = False


@dataclass
class Answer:
    status: int | None  # None: the connection closed without an answer
    content_type: str = ""
    body: bytes = b""


def _json_error_code(answer: Answer, method: str) -> str | None:
    """The ``error.code`` of a JSON error answer ("" for HEAD, which has no body), or None."""
    if not answer.content_type.startswith("application/json"):
        return None
    if method == "HEAD":
        return ""
    try:
        error = orjson.loads(answer.body)["error"]
        if isinstance(error["code"], str) and isinstance(error["message"], str):
            return str(error["code"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        pass
    return None


def classify(probe: Probe, answer: Answer) -> tuple[str, str | None]:
    """(kind, problem or None) of one answer."""
    if answer.status is None:
        return "closed", None if probe.server_may_refuse else "closed without an answer"
    if answer.status >= 500:
        return "5xx", f"{answer.status} to {probe.category}"
    if 200 <= answer.status < 300:
        return "2xx", None if probe.valid else f"{answer.status} to {probe.category}"
    code = _json_error_code(answer, probe.method) if 400 <= answer.status < 500 else None
    if code in PROTOCOL_CODES:
        problem = None if probe.server_may_refuse or not probe.valid else f"{code} to valid HTTP"
        return "protocol 4xx", problem
    if code is not None:
        problem = f"genuine callback refused ({answer.status})" if probe.valid else None
        return "app 4xx", problem
    return f"other {answer.status}", f"{answer.status} {answer.content_type} to {probe.category}"


def _genuine(provider: str, body: bytes) -> bool:
    """Whether the relay should accept ``body`` at a valid callback URL of ``provider``."""
    if len(body) > LIMIT:
        return False
    try:
        PROVIDERS[provider].normalize(parse_callback(body))
    except Exception:  # InvalidInput (invalid_json) or InvalidPayload: a refusal is right
        return False
    return True


class Generator:
    """Hostile requests from a seeded random generator, over the categories of the issue."""

    def __init__(self, seed: int, paths: dict[str, str]) -> None:
        self.rng = random.Random(seed)
        self.paths = paths  # provider -> a valid callback path
        self.serial = 0

    def task_id(self) -> str:
        self.serial += 1
        return f"hostile-{self.serial}"

    def payload(self) -> dict[str, Any]:
        rng = self.rng
        return {
            "id": self.task_id(),
            "jobId": self.task_id(),
            "status": rng.choice(["processing", "completed", "failed", "COMPLETED", "odd"]),
            "progress": rng.randint(0, 100),
            "results": ["https://cdn.example/a.png"],
        }

    def callback(self, body: bytes, category: str, **kw: Any) -> Probe:
        provider = self.rng.choice(sorted(self.paths))
        headers = kw.pop("headers", {"content-type": "application/json"})
        return Probe(
            category,
            path=self.paths[provider],
            body=body,
            headers=headers,
            valid=_genuine(provider, body),
            **kw,
        )

    # Bodies --------------------------------------------------------------------------------

    def malformed_json(self) -> bytes:
        rng = self.rng
        good = orjson.dumps(self.payload())
        kind = rng.randrange(9)
        if kind == 0:
            return good[: rng.randrange(len(good))]
        if kind == 1:
            return rng.randbytes(rng.randrange(0, 2000))
        if kind == 2:
            word = rng.choice([b"NaN", b"Infinity", b"-Infinity", b"undefined", b"0x10", b"+1"])
            return good[:-1] + b',"progress":' + word + b"}"
        if kind == 3:
            return good + rng.choice([b"}", b" garbage", b"\x00", b"{}", b",", b"//c"])
        if kind == 4:
            return good.replace(b'"', b"'")
        if kind == 5:
            return rng.choice([b"", b" ", b"\n", b"null", b"[]", b'""', b"1", b"true"])
        if kind == 6:
            return b"\xef\xbb\xbf" + good  # a byte-order mark
        if kind == 7:  # a repeated status: orjson alone would read the last one and accept it
            return good[:-1] + b',"status":' + rng.choice([b'"completed"', b'"failed"']) + b"}"
        return b'{"id": "x", "id": ' + good + b"}"  # a duplicate key around a whole payload

    def deep(self) -> bytes:
        rng = self.rng
        depth = rng.choice([64, 253, 254, 255, 256, 512, 1023, 1024, 1025, 2048, 5000, 8000])
        if rng.random() < 0.5:
            nest = b"[" * depth + b"]" * depth
        else:
            nest = b'{"a":' * depth + b"1" + b"}" * depth
        if rng.random() < 0.5:
            return nest
        return b'{"id":"' + self.task_id().encode() + b'","status":"processing","x":' + nest + b"}"

    def huge_number(self) -> bytes:
        rng = self.rng
        number = rng.choice(
            [
                b"1e400",
                b"-1e400",
                b"1e-400",
                b"-0",
                b"-0.0",
                b"18446744073709551616",
                b"-9223372036854775809",
                b"9" * rng.randrange(20, 6000),
                b"0." + b"0" * 5000 + b"1",
                b"1" + b"0" * 400 + b".5e-300",
            ]
        )
        field_name = rng.choice([b"progress", b"id", b"created", b"percentage", b"jobId"])
        return (
            b'{"id":"'
            + self.task_id().encode()
            + b'","status":"processing","'
            + field_name
            + b'":'
            + number
            + b"}"
        )

    def invalid_utf8(self) -> bytes:
        rng = self.rng
        bad = rng.choice(
            [
                b"\xff",
                b"\xc0\x80",  # an overlong NUL
                b"\xed\xa0\x80",  # a UTF-8-encoded surrogate
                b"\xf4\x90\x80\x80",  # past U+10FFFF
                b"\\ud800",  # a lone surrogate escape
                b"\\udc00\\ud800",
                rng.randbytes(8),
                b"\x80\x81\x82",
            ]
        )
        where = rng.choice([b"id", b"status", b"model", b"key"])
        if where == b"key":
            return b'{"id":"' + self.task_id().encode() + b'","k' + bad + b'":1}'
        return b'{"' + where + b'":"x' + bad + b'","id":"' + self.task_id().encode() + b'"}'

    def body(self) -> bytes:
        maker = self.rng.choice(
            [self.malformed_json, self.deep, self.huge_number, self.invalid_utf8]
        )
        return maker()

    # Probes ---------------------------------------------------------------------------------

    def probe(self) -> Probe:
        rng = self.rng
        category = rng.choices(
            [
                "malformed JSON",
                "deep nesting",
                "huge numbers",
                "invalid UTF-8",
                "content types",
                "over the limit",
                "over the limit, chunked",
                "lying Content-Length",
                "chunked, raw",
                "odd methods",
                "paths and tokens",
                "header floods",
                "admin bodies",
                "admin queries",
            ],
            weights=[10, 8, 8, 8, 6, 4, 3, 5, 4, 8, 12, 6, 12, 6],
        )[0]
        return getattr(self, "_" + re.sub(r"\W+", "_", category).strip("_").lower())(category)

    def _malformed_json(self, category: str) -> Probe:
        return self.callback(self.malformed_json(), category)

    def _deep_nesting(self, category: str) -> Probe:
        return self.callback(self.deep(), category)

    def _huge_numbers(self, category: str) -> Probe:
        return self.callback(self.huge_number(), category)

    def _invalid_utf_8(self, category: str) -> Probe:
        return self.callback(self.invalid_utf8(), category)

    def _content_types(self, category: str) -> Probe:
        rng = self.rng
        body = orjson.dumps(self.payload()) if rng.random() < 0.4 else self.body()
        kind = rng.choice(
            [
                None,
                "text/plain",
                "application/x-www-form-urlencoded",
                "multipart/form-data; boundary=x",
                "application/json; charset=latin-1",
                "",
                "image/png",
                "application/cloudevents+json",
                "application/json, text/html",
                "\x7f",
            ]
        )
        headers = {} if kind is None else {"content-type": kind}
        # A control character in a header is malformed HTTP: the parser refuses it itself.
        return self.callback(body, category, headers=headers, server_may_refuse=kind == "\x7f")

    def _over_the_limit(self, category: str) -> Probe:
        size = self.rng.randrange(LIMIT + 1, LIMIT * 16)
        body = b'{"id":"x","pad":"' + b"a" * size + b'"}'
        if self.rng.random() < 0.3:  # the admin API's own limit
            return Probe(
                category,
                path=self.rng.choice(["/v1/callback-urls", "/v1/subscribers"]),
                body=b" " * (ADMIN_LIMIT + size),
                headers={"authorization": f"Bearer {ADMIN}"},
            )
        return self.callback(body, category)

    def _over_the_limit_chunked(self, category: str) -> Probe:
        size = self.rng.randrange(LIMIT + 1, LIMIT * 16)
        # The relay answers 413 and closes without reading the rest; a client still sending
        # may see the connection reset before it reads the answer.
        body = b"[" + b"1," * (size // 2) + b"1]"
        return self.callback(body, category, chunked=True, server_may_refuse=True)

    def _lying_content_length(self, category: str) -> Probe:
        rng = self.rng
        path = self.paths[rng.choice(sorted(self.paths))]
        good = orjson.dumps(self.payload())
        kind = rng.randrange(3)
        if kind == 0:  # claims more than the limit, sends little: refused on the header
            declared, sent, cut = rng.randrange(LIMIT + 1, 10**12), good, False
        elif kind == 1:  # claims less than it sends: the rest is a malformed next request
            declared = rng.randrange(1, len(good))
            sent, cut = good + rng.randbytes(rng.randrange(1, 4000)), False
        else:  # claims more than it sends, then leaves
            declared, sent, cut = rng.randrange(len(good) + 1, LIMIT), good, True
        head = (
            f"POST {path} HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\n"
            f"Content-Length: {declared}\r\nConnection: close\r\n\r\n"
        )
        return Probe(category, path=path, raw=head.encode() + sent, cut=cut, server_may_refuse=True)

    def _chunked_raw(self, category: str) -> Probe:
        rng = self.rng
        path = self.paths[rng.choice(sorted(self.paths))]
        head = (
            f"POST {path} HTTP/1.1\r\nHost: relay\r\nTransfer-Encoding: chunked\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        kind = rng.randrange(4)
        cut = False
        if kind == 0:  # many chunks adding up to more than the limit
            chunk = rng.randrange(1, 4096)
            body = (b"%x\r\n" % chunk + b"a" * chunk + b"\r\n") * (
                LIMIT // chunk + 2
            ) + b"0\r\n\r\n"
        elif kind == 1:  # one chunk that announces more than the limit
            body = b"%x\r\n" % rng.randrange(LIMIT + 1, 2**40) + b"a" * 100
            cut = True
        elif kind == 2:  # a malformed chunk size
            body = rng.choice([b"zz\r\n", b"-1\r\n", b"\r\n", b"1;" + b"x" * 9000 + b"\r\n"]) + b"a"
            cut = True
        else:  # cut short
            body = b"100\r\n" + b"a" * rng.randrange(0, 255)
            cut = True
        return Probe(category, path=path, raw=head + body, cut=cut, server_may_refuse=True)

    def _odd_methods(self, category: str) -> Probe:
        rng = self.rng
        path = rng.choice(
            [
                *self.paths.values(),
                "/v1/callback-urls",
                "/v1/events",
                "/v1/subscribers/sub_x",
                "/v1/deliveries/replay",
                "/v1/watches/wch_x",
                "/callbacks/rivya",
            ]
        )
        method = rng.choice(
            [
                "PUT",
                "DELETE",
                "PATCH",
                "OPTIONS",
                "TRACE",
                "GET",
                "HEAD",
                "FOO",
                "get",
                "PROPFIND",
                "M" * 300,
            ]
        )
        if method in ("PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "GET", "HEAD"):
            return Probe(category, method=method, path=path, body=self.body())
        raw = f"{method} {path} HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n"
        return Probe(category, method=method, raw=raw.encode(), server_may_refuse=True)

    def _paths_and_tokens(self, category: str) -> Probe:
        rng = self.rng
        provider = rng.choice(sorted(self.paths))
        token = self.paths[provider].rsplit("/", 1)[1]
        alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_."
        kind = rng.randrange(9)
        if kind == 0:  # a tampered token
            i = rng.randrange(len(token))
            token = token[:i] + rng.choice([c for c in alphabet if c != token[i]]) + token[i + 1 :]
            path = f"/callbacks/{provider}/{token}"
        elif kind == 1:  # another provider's token
            other = rng.choice([p for p in ("evolink", "apiframe", "rivya") if p != provider])
            path = f"/callbacks/{other}/{token}"
        elif kind == 2:
            path = "/callbacks/evolink/" + "".join(rng.choices(alphabet, k=rng.randrange(1, 4000)))
        elif kind == 3:
            path = "/callbacks/" + rng.choice(["acme", "EVOLINK", "evolink%00", "%ff", "..", "é"])
            path += "/" + token
        elif kind == 4:
            path = "/" + "/".join(
                "".join(rng.choices(alphabet, k=rng.randrange(1, 50)))
                for _ in range(rng.randrange(1, 100))
            )
        elif kind == 5:
            path = rng.choice(
                [
                    "/callbacks/evolink/%2e%2e/%2e%2e/v1/events",
                    "/callbacks/evolink/a/b",
                    "/callbacks/evolink/" + token + "/",
                    "//callbacks//evolink",
                    "/v1/events/",
                    "/callbacks/evolink/%00",
                    "/callbacks/evolink/%ed%a0%80",
                    "/callbacks/rivya",
                    "/callbacks/reve-art/" + token,
                    "/v1/events/%ff%fe",
                    "/%2Fv1%2Fevents",
                ]
            )
        elif kind == 6:  # long and strange, over a raw socket (the parser may refuse it)
            junk = rng.choice([b"\x00", b"\xff", b" ", b"\t", b"%", b"\xe2\x80\xae", b"a"])
            raw = b"POST /callbacks/evolink/" + junk * rng.randrange(1, 120_000)
            raw += b" HTTP/1.1\r\nHost: relay\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
            return Probe(category, raw=raw, server_may_refuse=True)
        elif kind == 7:
            path = f"/callbacks/{provider}/{token}?" + "&".join(
                f"{rng.randrange(10**6)}={'x' * rng.randrange(0, 200)}"
                for _ in range(rng.randrange(1, 200))
            )
            body = self.body() if rng.random() < 0.7 else orjson.dumps(self.payload())
            return Probe(category, path=path, body=body, valid=_genuine(provider, body))
        else:
            path = "/v1/events/" + "".join(rng.choices(alphabet + "~!$&'()*+,;=:@", k=3000))
            return Probe(category, method="GET", path=path)
        body = orjson.dumps(self.payload())  # genuine bodies: only the path is wrong
        return Probe(category, path=path, body=body, headers={"content-type": "application/json"})

    def _header_floods(self, category: str) -> Probe:
        rng = self.rng
        genuine = rng.random() < 0.3
        provider = rng.choice(sorted(self.paths))
        path = (
            self.paths[provider]
            if genuine
            else rng.choice(
                ["/callbacks/evolink/forged", "/v1/events", "/v1/callback-urls", "/callbacks/rivya"]
            )
        )
        body = orjson.dumps(self.payload()) if genuine else self.body()
        method = "GET" if path == "/v1/events" else "POST"
        count = rng.choice([100, 500, 1000, 3000])
        value = "v" * rng.choice([1, 100, 1000])
        lines = [f"X-Flood-{i}: {value}" for i in range(count)]
        if rng.random() < 0.3:
            lines = [f"X-Big: {'b' * rng.randrange(10_000, 200_000)}"]
        if rng.random() < 0.3:
            lines.append("Authorization: Bearer " + "w" * rng.randrange(1, 50_000))
        if rng.random() < 0.2:
            lines += [
                f"Content-Type: {'application/json' if i % 2 else 'text/plain'}" for i in range(50)
            ]
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: relay\r\nContent-Length: {len(body)}\r\n"
            + "".join(line + "\r\n" for line in lines)
            + "Connection: close\r\n\r\n"
        )
        return Probe(
            category,
            method=method,
            raw=head.encode() + body,
            # A head past the protocol's bound is refused (431) however genuine the body.
            valid=genuine and _genuine(provider, body) and len(head) <= MAX_HEAD_BYTES,
            server_may_refuse=True,
        )

    def _admin_bodies(self, category: str) -> Probe:
        rng = self.rng
        path = rng.choice(
            [
                "/v1/callback-urls",
                "/v1/subscribers",
                "/v1/watches",
                "/v1/deliveries/replay",
                "/v1/subscribers/sub_x",
                "/v1/deliveries/dlv_x/replay",
                "/v1/events/evt_x/redeliver",
            ]
        )
        method = "PATCH" if path == "/v1/subscribers/sub_x" else "POST"
        # Each body is wrong for every admin route: no fields they need, or no JSON at all
        # (an empty body means {}, which some routes take: a blank one becomes a list).
        body = self.body().strip() or b"[]"
        if rng.random() < 0.3:
            body = b'{"unexpected": ' + body + b"}"
        headers = {"content-type": "application/json"}
        if rng.random() < 0.8:
            headers["authorization"] = f"Bearer {ADMIN}"
        return Probe(category, method=method, path=path, body=body, headers=headers)

    def _admin_queries(self, category: str) -> Probe:
        rng = self.rng
        path = rng.choice(["/v1/events", "/v1/deliveries", "/v1/watches", "/v1/subscribers"])
        name, value = rng.choice(
            [
                ("limit", rng.choice(["0", "-1", "501", "abc", "1e3", "9" * 400, "", "\x00"])),
                ("cursor", "".join(chr(rng.randrange(32, 0x3000)) for _ in range(40))),
                ("cursor", rng.randbytes(30).hex()),
                ("status", rng.choice(["done", "\x00", "FAILED", "x" * 5000])),
                ("since", rng.choice(["yesterday", "2026-13-45", "2026-01-01T00:00:00", "1e"])),
            ]
        )
        if path in ("/v1/watches", "/v1/subscribers") and name in ("status", "since"):
            name = "limit" if path == "/v1/subscribers" else "state"
            value = "bogus"
        return Probe(
            category,
            method="GET",
            path=path + "?" + httpx.QueryParams({name: value}).__str__(),
            headers={"authorization": f"Bearer {ADMIN}"},
        )


async def _chunks(body: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(body), 4096):
        yield body[start : start + 4096]


async def send_raw(port: int, probe: Probe) -> Answer:
    assert probe.raw is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        try:
            writer.write(probe.raw)
            await writer.drain()
            if probe.cut:
                writer.write_eof()
        except (ConnectionResetError, BrokenPipeError):
            pass  # the server refused before reading all of it; its answer may still be there
        data = b""
        try:
            async with asyncio.timeout(10):
                while chunk := await reader.read(65536):
                    data += chunk
                    if _complete(data):
                        break
        except (ConnectionResetError, BrokenPipeError):
            pass
    finally:
        writer.close()
    if not data:
        return Answer(None)
    head, _, rest = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    headers = dict(
        line.decode("latin-1").lower().split(": ", 1)
        for line in head.split(b"\r\n")[1:]
        if b": " in line
    )
    return Answer(status, headers.get("content-type", ""), rest)


def _complete(data: bytes) -> bool:
    head, sep, rest = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    match = re.search(rb"(?i)content-length: (\d+)", head)
    return match is not None and len(rest) >= int(match.group(1))


async def send_http(client: httpx.AsyncClient, probe: Probe) -> Answer:
    content: Any = probe.body
    if probe.chunked and probe.body is not None:
        content = _chunks(probe.body)
    response = await client.request(
        probe.method, probe.path, content=content, headers=probe.headers
    )
    return Answer(response.status_code, response.headers.get("content-type", ""), response.content)


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@dataclass
class Tally:
    by_category: collections.Counter[str] = field(default_factory=collections.Counter)
    by_kind: collections.Counter[str] = field(default_factory=collections.Counter)
    by_status: collections.Counter[str] = field(default_factory=collections.Counter)
    problems: collections.Counter[str] = field(default_factory=collections.Counter)
    accepted_genuine: int = 0


async def run_probes(port: int, probes: list[Probe], tally: Tally, concurrency: int) -> None:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", timeout=20, limits=limits
    ) as client:
        queue = iter(probes)

        async def worker() -> None:
            for probe in queue:
                try:
                    if probe.raw is not None:
                        answer = await send_raw(port, probe)
                    else:
                        answer = await send_http(client, probe)
                except (httpx.HTTPError, OSError, TimeoutError) as exc:
                    if not probe.server_may_refuse:
                        tally.problems[f"{type(exc).__name__} on {probe.category}"] += 1
                    answer = Answer(None)
                kind, problem = classify(probe, answer)
                tally.by_category[probe.category] += 1
                tally.by_kind[kind] += 1
                tally.by_status[str(answer.status or "closed")] += 1
                if kind == "2xx" and probe.valid:
                    tally.accepted_genuine += 1
                if problem:
                    tally.problems[problem] += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))


def generated_requests(ctx: Context) -> list[Row]:
    """Thousands of hostile requests against the callback and admin routes of one relay."""
    total = ctx.pick(1_200, 12_000)
    work = ctx.scratch("hostile")
    relay = RelayProcess(work, free_port(), RELAY_MAX_BODY_BYTES=str(LIMIT))
    relay.log_path = work / "relay.log"
    relay.start()
    assert relay.process is not None
    try:
        paths = {}
        for provider in ("evolink", "apiframe"):
            minted = httpx.post(
                f"{relay.base}/v1/callback-urls",
                json={"provider": provider, "reusable": True},
                headers=relay.admin,
                timeout=10,
            )
            paths[provider] = httpx.URL(minted.json()["url"]).raw_path.decode()
        generator = Generator(20261121, paths)
        warmup = [generator.probe() for _ in range(300)]
        probes = [generator.probe() for _ in range(total)]
        asyncio.run(run_probes(relay.port, warmup, Tally(), 16))
        before = rss_kb(relay.process.pid)
        peak = [before]
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.wait(0.2):
                try:
                    peak[0] = max(peak[0], rss_kb(relay.process.pid))  # type: ignore[union-attr]
                except (OSError, AssertionError):
                    return

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        tally = Tally()
        started = time.monotonic()
        asyncio.run(run_probes(relay.port, probes, tally, 32))
        seconds = time.monotonic() - started
        sampling.set()
        sampler.join()
        alive = relay.process.poll() is None
        healthy = alive and httpx.get(f"{relay.base}/healthz", timeout=5).status_code == 200
        after = rss_kb(relay.process.pid) if alive else 0
    finally:
        relay.stop()
    log = relay.log_path.read_text(errors="replace")
    unhandled = log.count('"unhandled_error"') + log.count("Exception in ASGI application")
    row = Row(
        SECTION,
        f"{total:,} generated hostile requests",
        {
            "requests": sum(tally.by_category.values()),
            "per category": ", ".join(f"{k} {v}" for k, v in sorted(tally.by_category.items())),
            "per status": ", ".join(f"{k} {v}" for k, v in sorted(tally.by_status.items())),
            "app 4xx JSON": tally.by_kind["app 4xx"],
            "protocol 400/431 (malformed HTTP, head too large)": tally.by_kind["protocol 4xx"],
            "closed without answer (sender cut the request)": tally.by_kind["closed"],
            "2xx (genuine callbacks only)": tally.accepted_genuine,
            "5xx": tally.by_kind["5xx"],
            "unhandled errors in the relay's log": unhandled,
            "seconds": round(seconds, 1),
            "requests/s": round(total / seconds),
            "RSS before / peak / after, MB": (
                f"{before / 1024:.0f} / {peak[0] / 1024:.0f} / {after / 1024:.0f}"
            ),
        },
        f"A `relay serve` process (RELAY_MAX_BODY_BYTES={LIMIT}) fed requests from a seeded "
        "generator over 32 concurrent connections (httpx, raw sockets for lying lengths, raw "
        "chunked bodies, header floods, odd methods and long paths); each answer must be a 4xx "
        "JSON error, a 2xx only to a body the provider's normalizer accepts, and for malformed "
        "HTTP or heads over 64 KiB the protocol's JSON 400/431 or a closed connection (counted "
        "apart); RSS from /proc after 300 "
        "warm-up requests, sampled every 0.2 s.",
    )
    for problem, count in tally.problems.most_common(10):
        row.expect(False, f"{count} x {problem}")
    row.expect(tally.by_kind["5xx"] == 0, "5xx answers")
    row.expect(unhandled == 0, f"{unhandled} unhandled errors in the relay's log")
    row.expect(healthy, "the relay died or stopped answering /healthz")
    row.expect(
        after - before < RSS_BOUND_MB * 1024,
        f"RSS grew by {(after - before) / 1024:.0f} MB (bound {RSS_BOUND_MB} MB)",
    )
    return [row]


SCENARIOS = [property_tests, generated_requests]
