"""Forged and replayed callbacks: none forged is forwarded, none is forwarded twice.

A real relay process and a real subscriber (which verifies every Standard Webhooks
signature); forged callbacks of every kind the issue names, then genuine callbacks replayed
100 times (concurrently) and old updates replayed after a task's terminal one.
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any

import httpx
import orjson
from starlette.datastructures import Secret

from service.providers.apiframe import apiframe_signature
from service.settings import Settings
from service.simulate import build_callback
from tests.relay_process import RelayProcess
from tests.reliability import Context, Row, free_port
from tests.subscriber_server import SubscriberServer
from tests.test_receiver import evolink

SECTION = "Forged and replayed callbacks"
APIFRAME_KEY = "forged-suite-apiframe-key"
OLD_KEY, NEW_KEY = "retired-signing-key", "current-signing-key"
JSON = {"content-type": "application/json"}


def _mint(client: httpx.Client, relay: RelayProcess, provider: str, **body: Any) -> str:
    answer = client.post(
        "/v1/callback-urls",
        json={"provider": provider, "reusable": True, **body},
        headers=relay.admin,
    )
    answer.raise_for_status()
    return httpx.URL(answer.json()["url"]).raw_path.decode()


def _apiframe(task_id: str, status: str) -> tuple[bytes, dict[str, str]]:
    """A genuine Apiframe v2 callback, signed as Apiframe signs it (service.simulate)."""
    callback = build_callback(
        "apiframe", status, task_id, Settings(apiframe_api_key=Secret(APIFRAME_KEY))
    )
    return callback.body, callback.headers(callback.body)


def _flip(token: str, index: int) -> str:
    char = token[index]
    return token[:index] + ("A" if char != "A" else "B") + token[index + 1 :]


def forged_and_replayed(ctx: Context) -> list[Row]:
    rounds = ctx.pick(2, 10)  # forged callbacks of each kind, and genuine tasks per provider
    replays = 100
    work = ctx.scratch("forged")
    sink = SubscriberServer().start()
    relay = RelayProcess(
        work,
        free_port(),
        RELAY_SECRET_KEY=OLD_KEY,
        RELAY_APIFRAME_API_KEY=APIFRAME_KEY,
        RELAY_APIFRAME_SIGNATURE="required",  # so that an unsigned v2 callback is a forgery
    )
    try:
        relay.start()
        with httpx.Client(base_url=relay.base, timeout=10) as client:
            retired = [_mint(client, relay, "evolink") for _ in range(rounds)]
        # Rotate: the new key signs, the old one is retired (no longer in the list).
        relay.stop()
        relay.env["RELAY_SECRET_KEY"] = NEW_KEY
        relay.start()
        with httpx.Client(base_url=relay.base, timeout=10) as client:
            answer = client.post("/v1/subscribers", json={"url": sink.url}, headers=relay.admin)
            answer.raise_for_status()
            sink.secrets.append(answer.json()["secret"])
            rows = _run(ctx, client, relay, sink, retired, rounds, replays)
    finally:
        relay.stop()
        sink.stop()
    return rows


def _run(
    ctx: Context,
    client: httpx.Client,
    relay: RelayProcess,
    sink: SubscriberServer,
    retired: list[str],
    rounds: int,
    replays: int,
) -> list[Row]:
    evolink_url = _mint(client, relay, "evolink")
    apiframe_url = _mint(client, relay, "apiframe")
    expiring = [_mint(client, relay, "evolink", ttl_seconds=1) for _ in range(rounds)]
    token = evolink_url.rsplit("/", 1)[1]
    url_id, expiry, signature = token.split(".")

    # -- forged ------------------------------------------------------------------------------
    forged: list[tuple[str, str, bytes, dict[str, str]]] = []  # kind, path, body, headers
    serial = 0

    def task() -> str:
        nonlocal serial
        serial += 1
        return f"forged-{serial}"

    for i in range(rounds):
        body = orjson.dumps(evolink(task()))
        forged.append(
            ("token of another provider", apiframe_url.replace("apiframe", "evolink"), body, JSON)
        )
        a_body, a_headers = _apiframe(task(), "completed")
        forged.append(
            (
                "token of another provider",
                evolink_url.replace("/evolink/", "/apiframe/"),
                a_body,
                a_headers,
            )
        )
        later = f"{int(expiry, 16) + 10**6:x}"
        for path in (
            # Not the signature's last character: of its 6 bits only 4 are data (32 bytes in
            # base64), so A, B, C and D there decode to the same signature, and a "tampered"
            # token ending in one of them was the genuine one in 3 runs out of 64.
            f"/callbacks/evolink/{url_id}.{expiry}.{_flip(signature, i % (len(signature) - 1))}",
            f"/callbacks/evolink/{_flip(url_id, i % len(url_id))}.{expiry}.{signature}",
            f"/callbacks/evolink/{url_id}.{later}.{signature}",  # a longer life, same signature
            f"/callbacks/evolink/{url_id}.{expiry}",
            "/callbacks/evolink/" + "x" * len(token),
        ):
            forged.append(("tampered token", path, orjson.dumps(evolink(task())), JSON))
        forged.append(("retired signing key", retired[i], orjson.dumps(evolink(task())), JSON))
        a_body, a_headers = _apiframe(task(), "completed")
        forged.append(
            (
                "Apiframe signature missing",
                apiframe_url,
                a_body,
                {k: v for k, v in a_headers.items() if k != "x-webhook-signature"},
            )
        )
        forged.append(
            (
                "Apiframe signature wrong",
                apiframe_url,
                a_body,
                {**a_headers, "x-webhook-signature": "sha256=" + "0" * 64},
            )
        )
        wrong_key = apiframe_signature("not-the-key", a_body)
        forged.append(
            (
                "Apiframe signature wrong",
                apiframe_url,
                a_body,
                {**a_headers, "x-webhook-signature": f"sha256={wrong_key}"},
            )
        )
        other_body, _ = _apiframe(task(), "completed")
        forged.append(("Apiframe signature over another body", apiframe_url, other_body, a_headers))
    time.sleep(1.2)  # the 1-second URLs expire
    for path in expiring:
        forged.append(("expired token", path, orjson.dumps(evolink(task())), JSON))

    refused: collections.Counter[str] = collections.Counter()
    accepted_forged = 0
    for _kind, path, body, headers in forged:
        answer = client.post(path, content=body, headers=headers)
        if answer.status_code < 300:
            accepted_forged += 1
        else:
            refused[f"{answer.status_code} {answer.json()['error']['code']}"] += 1

    # -- genuine, then replayed ----------------------------------------------------------------
    expected: dict[str, int] = {}  # task id -> distinct updates that must be forwarded
    answers: collections.Counter[str] = collections.Counter()
    replay_jobs: list[tuple[str, bytes, dict[str, str]]] = []
    stale_jobs: list[tuple[str, bytes, dict[str, str]]] = []
    for i in range(rounds):
        task_id = f"genuine-evolink-{i}"
        steps = [
            evolink(task_id, "processing", 30),
            evolink(task_id, "processing", 60),
            evolink(task_id, "completed", 100),
        ]
        for payload in steps:
            client.post(evolink_url, json=payload).raise_for_status()
        expected[task_id] = len(steps)
        replay_jobs.append((evolink_url, orjson.dumps(steps[-1]), JSON))
        # Older updates and a different terminal status, after the terminal one.
        stale_jobs += [
            (evolink_url, orjson.dumps(steps[0]), JSON),
            (evolink_url, orjson.dumps(evolink(task_id, "failed", 0)), JSON),
        ]
        task_id = f"genuine-apiframe-{i}"
        for status in ("processing", "completed"):
            body, headers = _apiframe(task_id, status)
            client.post(apiframe_url, content=body, headers=headers).raise_for_status()
        expected[task_id] = 2
        replay_jobs.append((apiframe_url, body, headers))
        old_body, old_headers = _apiframe(task_id, "processing")
        stale_jobs += [
            (apiframe_url, old_body, old_headers),
            (apiframe_url, *_apiframe(task_id, "failed")),
        ]

    async def replay_all() -> None:
        # 50 at a time: concurrent enough to race the dedup, bounded so none waits for a slot.
        gate = asyncio.Semaphore(50)
        async with httpx.AsyncClient(base_url=relay.base, timeout=20) as aclient:

            async def one(path: str, body: bytes, headers: dict[str, str]) -> None:
                async with gate:
                    answer = await aclient.post(path, content=body, headers=headers)
                data = answer.json() if answer.status_code == 200 else {}
                key = (
                    "superseded"
                    if data.get("superseded")
                    else "duplicate"
                    if data.get("duplicate")
                    else f"{answer.status_code} new"
                )
                answers[key] += 1

            await asyncio.gather(
                *(one(*job) for job in replay_jobs for _ in range(replays)),
                *(one(*job) for job in stale_jobs),
            )

    asyncio.run(replay_all())

    # -- what reached the subscriber -----------------------------------------------------------
    total = sum(expected.values())
    deadline = time.monotonic() + ctx.pick(20, 40)
    while time.monotonic() < deadline and len(sink.receipts) < total:
        time.sleep(0.05)
    # Anything extra (a duplicate, a forged one) is a stored delivery: once none is pending,
    # each has been answered and the sink holds all it will ever receive.
    while time.monotonic() < deadline and relay.all_deliveries("pending"):
        time.sleep(0.05)
    with sink.lock:
        receipts = list(sink.receipts)
    per_task = collections.Counter(r.data["task_id"] for r in receipts)
    per_event = collections.Counter(r.event_id for r in receipts)
    per_update = collections.Counter(
        (r.data["task_id"], r.data["status"], r.data["progress"]) for r in receipts
    )
    from_forged = sum(n for t, n in per_task.items() if t.startswith("forged-"))
    stored_forged = [
        e
        for e in client.get("/v1/events", params={"limit": 500}, headers=relay.admin).json()[
            "items"
        ]
        if e["subject"].startswith("forged-")
    ]
    wrong_counts = {t: per_task.get(t, 0) for t, n in expected.items() if per_task.get(t, 0) != n}
    # No genuine task failed: a failed event could only come from a replay after the terminal.
    after_terminal = sum(1 for r in receipts if r.data["status"] == "failed")

    kinds = collections.Counter(kind for kind, *_ in forged)
    forged_row = Row(
        SECTION,
        "Forged callbacks",
        {
            "forged sent": len(forged),
            "per kind": ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())),
            "answers": ", ".join(f"{k} x{v}" for k, v in sorted(refused.items())),
            "forged accepted (2xx)": accepted_forged,
            "forged stored as events": len(stored_forged),
            "forged forwarded to the subscriber": from_forged,
        },
        "A `relay serve` process with RELAY_APIFRAME_API_KEY set, "
        "RELAY_APIFRAME_SIGNATURE=required and RELAY_SECRET_KEY rotated (URLs minted under "
        "the old key, then the relay restarted with only the new one); "
        "each forgery posted once with its own task id, then the subscriber's receipts and "
        "GET /v1/events searched for those ids.",
    )
    forged_row.expect(accepted_forged == 0, f"{accepted_forged} forged callbacks accepted")
    forged_row.expect(not stored_forged, f"{len(stored_forged)} forged callbacks stored")
    forged_row.expect(from_forged == 0, f"{from_forged} forged callbacks forwarded")
    forged_row.expect(
        all(code.startswith("401 ") for code in refused), f"refusals other than 401: {refused}"
    )
    forged_row.expect(
        refused["401 token_expired"] == rounds, "expired tokens not refused as token_expired"
    )

    sent = len(replay_jobs) * replays + len(stale_jobs)
    replay_row = Row(
        SECTION,
        f"Genuine callbacks replayed {replays} times, old ones after the terminal",
        {
            "tasks": len(expected),
            "replays sent (50 at a time)": sent,
            "answers": ", ".join(f"{k} x{v}" for k, v in sorted(answers.items())),
            "events expected / forwarded": f"{total} / {len(receipts)}",
            "tasks with a wrong count": len(wrong_counts),
            "duplicates delivered": sum(n - 1 for n in per_event.values() if n > 1)
            + sum(n - 1 for n in per_update.values() if n > 1),
            "updates after the terminal one forwarded": after_terminal,
            "signatures verified by the subscriber": sum(1 for r in receipts if r.verified_with),
        },
        "Per task: its updates in order (Evolink processing 30, 60, completed; Apiframe v2 "
        "signed processing, completed), then the terminal one replayed 100 times (50 "
        "requests in flight) and an old processing and a different terminal (failed) sent "
        "after it; the subscriber "
        "(Standard Webhooks verification) counts receipts per task, event id and update.",
    )
    replay_row.expect(not wrong_counts, f"forwarded per task differs: {wrong_counts}")
    replay_row.expect(
        all(n == 1 for n in per_event.values()) and all(n == 1 for n in per_update.values()),
        "an update was delivered twice",
    )
    replay_row.expect(after_terminal == 0, f"{after_terminal} updates after a terminal forwarded")
    replay_row.expect(
        answers["duplicate"] + answers["superseded"] == sent,
        "a replay was answered as a new update",
    )
    replay_row.expect(
        answers["superseded"] >= len(stale_jobs) // 2, "a second terminal status not superseded"
    )
    replay_row.expect(not sink.errors, f"subscriber errors: {sink.errors[:3]}")
    return [forged_row, replay_row]


#: What each Apiframe callback gets under each RELAY_APIFRAME_SIGNATURE: (optional, required).
#: A presented credential that is wrong is refused wherever it is checked; the URL token is
#: required of all; a v1 callback is judged by its secret alone.
SIGNATURE_RULES = {
    "v2 signed": (200, 200),
    "v2 unsigned": (200, 401),
    "v2 signature wrong": (401, 401),
    "v2 signed, no URL token": (401, 401),
    "v1 with its secret": (200, 200),
    "v1 secret wrong": (401, 401),
    "v1 without its secret": (401, 401),
}
MODES = ("optional", "required")
V1_SECRET = "forged-suite-v1-secret"


def _v1(task_id: str) -> bytes:
    return orjson.dumps(
        {"task_id": task_id, "task_type": "imagine", "image_urls": ["https://cdn.example/a.png"]}
    )


def _signature_kinds(url: str, task_id: str) -> dict[str, tuple[str, bytes, dict[str, str]]]:
    signed_body, signed = _apiframe(task_id + "-s", "completed")
    unsigned = {k: v for k, v in signed.items() if k != "x-webhook-signature"}
    wrong_body, wrong = _apiframe(task_id + "-w", "completed")
    return {
        "v2 signed": (url, signed_body, signed),
        "v2 unsigned": (url, _apiframe(task_id + "-u", "completed")[0], unsigned),
        "v2 signature wrong": (url, wrong_body, {**wrong, "x-webhook-signature": "0" * 64}),
        "v2 signed, no URL token": ("/callbacks/apiframe", signed_body, signed),
        "v1 with its secret": (url, _v1(task_id + "-1"), {**JSON, "x-webhook-secret": V1_SECRET}),
        "v1 secret wrong": (url, _v1(task_id + "-2"), {**JSON, "x-webhook-secret": "nope"}),
        "v1 without its secret": (url, _v1(task_id + "-3"), JSON),
    }


def apiframe_signature_settings(ctx: Context) -> list[Row]:
    rounds = ctx.pick(2, 10)  # callbacks of each kind per mode, each its own task
    answers: dict[str, list[collections.Counter[int]]] = {
        kind: [collections.Counter() for _ in MODES] for kind in SIGNATURE_RULES
    }
    for index, mode in enumerate(MODES):
        relay = RelayProcess(
            ctx.scratch(f"signature-{mode}"),
            free_port(),
            RELAY_APIFRAME_API_KEY=APIFRAME_KEY,
            RELAY_APIFRAME_WEBHOOK_SECRET=V1_SECRET,
            RELAY_APIFRAME_SIGNATURE=mode,
        )
        try:
            relay.start()
            with httpx.Client(base_url=relay.base, timeout=10) as client:
                url = _mint(client, relay, "apiframe")
                for n in range(rounds):
                    for kind, (path, body, headers) in _signature_kinds(url, f"{mode}-{n}").items():
                        answer = client.post(path, content=body, headers=headers)
                        answers[kind][index][answer.status_code] += 1
        finally:
            relay.stop()

    def cell(counts: collections.Counter[int]) -> str:
        return " ".join(f"{status} x{n}" for status, n in sorted(counts.items()))

    row = Row(
        SECTION,
        "Apiframe callbacks under each RELAY_APIFRAME_SIGNATURE",
        {
            f"{kind} (optional / required)": " / ".join(cell(c) for c in counts)
            for kind, counts in answers.items()
        },
        f"Three `relay serve` processes with RELAY_APIFRAME_API_KEY and "
        f"RELAY_APIFRAME_WEBHOOK_SECRET set, one per RELAY_APIFRAME_SIGNATURE value; {rounds} "
        "callbacks of each kind (v2 built and signed as `relay simulate` does) posted to a "
        "minted URL (or token-less to /callbacks/apiframe), each with its own task id.",
    )
    for kind, expected in SIGNATURE_RULES.items():
        for index, mode in enumerate(MODES):
            got = answers[kind][index]
            row.expect(
                got == collections.Counter({expected[index]: rounds}),
                f"{kind} with {mode}: {cell(got)}, expected {expected[index]}",
            )
    return [row]


SCENARIOS = [forged_and_replayed, apiframe_signature_settings]
