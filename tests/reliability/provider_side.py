"""Provider side: what a provider's status API (or a forged callback) can make the poller do.

Each scenario runs a real ``relay serve`` process whose base URLs point at the loopback
emulator of ``tests/provider_emulators.py``, and measures the relay from outside: its memory
and CPU from ``/proc``, ``/healthz`` latency, the requests the emulator (and a canary) saw.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.conftest import ServerThread, bound_socket
from tests.provider_emulators import Fault, ProviderEmulator
from tests.relay_process import RelayProcess
from tests.reliability import Context, Row, free_port
from tests.reliability._harness import wait_until

SECTION = "Provider side"
#: The watch worker's concurrency: that many polls at once.
CONCURRENCY = 32
#: Above this the relay is stopped at once (the old code reached 4 GB with 32 polls).
RSS_SAFETY_MB = 1024


#: Samples the relay's VmRSS and times GET /healthz every ~0.05 s; argv: pid, base URL, seconds.
SAMPLER = f"""
import json, sys, time, httpx
pid, base, seconds = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
rss, healthz, stopped = [], [], None
def vmrss():
    with open(f"/proc/{{pid}}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
with httpx.Client(base_url=base, timeout=30) as client:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        rss.append(vmrss())
        if rss[-1] > {RSS_SAFETY_MB}:
            stopped = rss[-1]
            break
        started = time.perf_counter()
        client.get("/healthz").raise_for_status()
        healthz.append((time.perf_counter() - started) * 1000)
        time.sleep(0.05)
print(json.dumps({{"rss_mb": rss, "healthz_ms": healthz, "stopped_at_mb": stopped}}))
"""


def _proc(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of ``pid`` in kB, and its CPU time in clock ticks."""
    values: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0])
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    values["cpu_ticks"] = int(fields[11]) + int(fields[12])  # utime + stime
    return values


def _spread(values: list[float]) -> tuple[float, float, float]:
    """p50, p95 and max of ``values`` (all 0 when there are none)."""
    if not values:
        return 0.0, 0.0, 0.0
    ordered = sorted(values)
    return ordered[len(ordered) // 2], ordered[int(len(ordered) * 0.95)], ordered[-1]


def _cpu_seconds(before: dict[str, int], after: dict[str, int]) -> float:
    return (after["cpu_ticks"] - before["cpu_ticks"]) / os.sysconf("SC_CLK_TCK")


def _said(answer: httpx.Response) -> str:
    """``200 held`` or ``422 invalid_payload``: what the relay answered a callback."""
    body = answer.json()
    word = "held" if body.get("held") else body.get("error", {}).get("code", "")
    return f"{answer.status_code} {word}".strip()


def _gzip_bomb(expanded: int) -> bytes:
    """``expanded`` bytes of zeros as gzip: about a thousandth of that on the wire."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(8 * 1024 * 1024)
    parts = [packer.compress(block) for _ in range(expanded // len(block))]
    return b"".join(parts) + packer.flush()


@contextmanager
def _relay(
    ctx: Context, name: str, emulator: ProviderEmulator, **env: str
) -> Iterator[RelayProcess]:
    # Request budgets no scenario of something else runs into (the budget's own sets its).
    keys = {
        f"RELAY_{provider.upper().replace('-', '_')}_{kind}": value
        for provider, key in emulator.keys.items()
        for kind, value in (("BASE_URL", emulator.url), ("API_KEY", key), ("API_RATE", "6000"))
    }
    work = ctx.scratch(name)
    relay = RelayProcess(work, free_port(), **{**keys, **env})
    relay.log_path = Path(work) / "relay.log"
    relay.start()
    try:
        yield relay
    finally:
        relay.stop()


@contextmanager
def _emulator() -> Iterator[ProviderEmulator]:
    emulator = ProviderEmulator().start()
    try:
        yield emulator
    finally:
        emulator.stop()


def _watch(relay: RelayProcess, provider: str, task_id: str) -> dict:
    answer = httpx.post(
        f"{relay.base}/v1/watches",
        json={"provider": provider, "task_id": task_id},
        headers=relay.admin,
        timeout=10,
    )
    answer.raise_for_status()
    return answer.json()


def _get_watch(relay: RelayProcess, watch_id: str) -> dict:
    answer = httpx.get(f"{relay.base}/v1/watches/{watch_id}", headers=relay.admin, timeout=10)
    answer.raise_for_status()
    return answer.json()


def _log_count(relay: RelayProcess, word: str) -> int:
    assert relay.log_path is not None
    return relay.log_path.read_text(errors="replace").count(word)


def provider_gzip_bomb_at_full_concurrency(ctx: Context) -> list[Row]:
    """32 watches whose status API answers a small gzip that expands to gigabytes."""
    expanded = ctx.pick(256 * 1024**2, 2 * 1024**3)
    seconds = ctx.pick(5.0, 15.0)
    bomb = _gzip_bomb(expanded)
    answer = Fault(
        200, content=bomb, headers={"content-encoding": "gzip", "content-type": "application/json"}
    )
    with (
        _emulator() as emulator,
        _relay(
            ctx, "gzip-bomb", emulator, RELAY_WATCH_BACKOFF="0.2,1", RELAY_LOG_LEVEL="warning"
        ) as relay,
    ):
        assert relay.process is not None
        pid = relay.process.pid
        before = _proc(pid)
        # Registered while the API answers 503, then all armed at once: 32 bombs together.
        tasks = [emulator.add_task("reve-art", always=Fault(503)) for _ in range(CONCURRENCY)]
        watches = [_watch(relay, "reve-art", task)["id"] for task in tasks]
        with emulator.lock:
            for task in tasks:
                emulator.tasks[("reve-art", task)].always = answer
        # Sampled from a process of its own: this one serves the emulator (and its GIL).
        sampled = subprocess.run(
            [sys.executable, "-c", SAMPLER, str(pid), relay.base, str(seconds)],
            capture_output=True,
            timeout=seconds + 60,
            check=True,
        )
        samples = json.loads(sampled.stdout)
        rss, healthz = samples["rss_mb"], samples["healthz_ms"]
        stopped_at = samples["stopped_at_mb"]
        if stopped_at is not None:  # the old code: do not take the machine down
            relay.kill()
        after = _proc(pid) if stopped_at is None else before
        shown = []
        try:
            if stopped_at is None:
                shown = [_get_watch(relay, w) for w in watches]
        except httpx.TransportError:  # the old code: the relay does not answer in time
            pass
    polls = sum(hit.status_code == 200 for task in tasks for hit in emulator.hits_for(task))
    peak_mb = after["VmHWM"] / 1024
    errors = {w["last_error"] for w in shown}
    row = Row(
        SECTION,
        f"gzip bomb ({len(bomb) / 1024**2:.2f} MB expanding to {expanded / 1024**3:g} GiB),"
        f" {CONCURRENCY} watches polling at once",
        {
            "status requests answered with the bomb": polls,
            "relay RSS before / peak (VmHWM), MB": f"{before['VmRSS'] / 1024:.0f} / {peak_mb:.0f}",
            "RSS samples": len(rss),
            "/healthz p50 / p95 / max, ms": " / ".join(f"{v:.1f}" for v in _spread(healthz)),
            "/healthz over 100 ms": f"{sum(v >= 100 for v in healthz)} of {len(healthz)}",
            "watches' last_error": ", ".join(sorted(e or "none" for e in errors)) or "n/a",
            "watches still active": sum(w["state"] == "active" for w in shown),
            "relay CPU, s": f"{_cpu_seconds(before, after):.1f}",
        },
        f"A `relay serve` process (RELAY_WATCH_BACKOFF=0.2,1) with {CONCURRENCY} Reve Art"
        " watches, the worker's concurrency, against the emulator answering every status"
        " request 200 with Content-Encoding: gzip and the bomb as body, for"
        f" {seconds:g} s; VmRSS sampled from /proc every ~0.05 s between GET /healthz (timed),"
        " the peak read from VmHWM at the end.",
    )
    row.expect(stopped_at is None, f"RSS passed {RSS_SAFETY_MB} MB: the relay was stopped")
    row.expect(peak_mb < 150, f"peak RSS {peak_mb:.0f} MB, not under 150 MB")
    # 100 ms at the 95th percentile, 500 ms at most: on a shared 2-core machine a relay
    # polling ~40 times a second is sometimes descheduled for 100-200 ms, bomb or not (see
    # docs/reliability.md); the old code's median was over 500 ms.
    _, p95, worst = _spread(healthz)
    row.expect(bool(healthz) and p95 < 100, f"/healthz p95 {p95:.0f} ms, not under 100 ms")
    row.expect(worst < 500, f"/healthz took {worst:.0f} ms, not under 500 ms")
    row.expect(polls >= 2 * CONCURRENCY, f"only {polls} status requests: the bomb was not polled")
    refused = "the answer is 'gzip'-encoded; the relay asks for identity"
    row.expect(errors == {refused}, f"last_error: {errors}")
    row.expect(len(shown) == CONCURRENCY, "the admin API did not show every watch")
    row.expect(all(w["state"] == "active" for w in shown), "a watch ended")
    return [row]


def provider_forged_evolink_callbacks_do_not_spin(ctx: Context) -> list[Row]:
    """The two forged Evolink callbacks that made the watch worker loop without back-off are
    refused at the door; a forged `completed` the relay does hold is polled with back-off."""
    seconds = ctx.pick(6.0, 10.0)
    with _emulator() as emulator, _relay(ctx, "forged-evolink", emulator) as relay:
        assert relay.process is not None
        pid = relay.process.pid
        minted = httpx.post(
            f"{relay.base}/v1/callback-urls",
            json={"provider": "evolink", "reusable": True},
            headers=relay.admin,
            timeout=10,
        ).json()["url"]
        running = emulator.add_task("evolink", timeline=((0.0, "running"),))
        forged = (
            b'{"id": "%s", "status": "completed", "progress": 100,'
            b' "results": ["https://forged.example/x.png"]' % running.encode()
        )
        deep = forged + b', "x": %s}' % (b"[" * 1010 + b"]" * 1010)
        long_id = '{"id": "%s", "status": "completed", "progress": 100}' % ("\u20ac" * 7300)
        before = _proc(pid)
        started = time.monotonic()
        answers = [
            httpx.post(minted, content=body, timeout=10)
            for body in (deep, long_id.encode(), forged + b"}")
        ]
        time.sleep(seconds)  # the window in which the old code polled ~140 times a second
        after = _proc(pid)
        elapsed = time.monotonic() - started
        active = httpx.get(
            f"{relay.base}/v1/watches",
            params={"state": "active", "provider": "evolink"},
            headers=relay.admin,
            timeout=10,
        ).json()["items"]
        errors = _log_count(relay, "watch_poll_error")
    hits = emulator.hits_for(running)
    cpu = _cpu_seconds(before, after)
    # Back-off 2 s, 4 s, 8 s...: polls at about 0, 2, 6 s, 14 s.
    allowed = 1 + sum(1 for k in range(10) if 2 * (2**k - 1) <= elapsed)
    said = [_said(a) for a in answers]
    row = Row(
        SECTION,
        "forged Evolink callbacks: nested 1,010 deep; task id of 7,300 euro signs; a plain one",
        {
            "answers to the three callbacks": ", ".join(said),
            "window, s": f"{elapsed:.1f}",
            "status requests for the held one": f"{len(hits)} (back-off allows {allowed})",
            "status requests per second": f"{len(hits) / elapsed:.2f}",
            "relay CPU in the window, s": f"{cpu:.2f}",
            "watches still active": ", ".join(w["task_id"][:40] for w in active) or "none",
            "watch_poll_error lines in the log": errors,
        },
        "A `relay serve` process with RELAY_EVOLINK_API_KEY (confirmation on, back-off 2,60)"
        " gets, on a minted Evolink URL, a `completed` callback nested 1,010 levels for a task"
        " the emulated API says is running, a `completed` one whose task id is 7,300 euro"
        " signs (a 65 KB status URL, past httpx's limit), then the first one without its"
        " nesting; the emulator counts status requests, /proc gives the relay's CPU time.",
    )
    row.expect(said[0].startswith("400 invalid_json"), f"the deep one was answered {said[0]}")
    row.expect(said[1].startswith("422 invalid_task_id"), f"the long id was answered {said[1]}")
    row.expect(said[2].startswith("200"), f"the plain one was answered {said[2]}")
    row.expect(len(hits) <= allowed, f"{len(hits)} status requests in {elapsed:.1f} s")
    row.expect(len(hits) >= 1, "the held callback was never confirmed")
    row.expect(cpu < 0.2 * elapsed, f"the relay used {cpu:.2f} s of CPU in {elapsed:.1f} s")
    row.expect(errors == 0, f"{errors} watch_poll_error lines")
    row.expect([w["task_id"] for w in active] == [running], "not only the held one is active")
    return [row]


class _Canary:
    """A server on another loopback address that counts who reaches it, with which key."""

    def __init__(self) -> None:
        self.requests: list[dict[str, str]] = []
        self.lock = threading.Lock()

        async def seen(request: Request) -> Response:
            with self.lock:
                self.requests.append(dict(request.headers))
            return Response(b'{"id": "x", "status": "COMPLETED"}', 200)

        app = Starlette(routes=[Route("/{path:path}", seen, methods=["GET", "POST"])])
        self.thread = ServerThread(app, bound_socket("127.0.0.9")).start()
        self.url = f"http://127.0.0.9:{self.thread.port}"

    def stop(self) -> None:
        self.thread.stop()


def provider_redirects_are_not_followed(ctx: Context) -> list[Row]:
    """Apiframe's status API redirecting elsewhere: no request leaves, no key with it."""
    polls_wanted = ctx.pick(3, 6)
    canary = _Canary()
    try:
        with (
            _emulator() as emulator,
            _relay(ctx, "redirects", emulator, RELAY_WATCH_BACKOFF="0.2,1") as relay,
        ):
            targets = {
                "302 to a canary on 127.0.0.9": (302, f"{canary.url}/v2/jobs/steal?k=1"),
                # (the canary stands in for 169.254.169.254: a test must not reach the real one)
                "307 to a metadata path on the canary": (307, f"{canary.url}/latest/meta-data/"),
                "308 to the same path with a slash": (308, "/v2/jobs/same/"),
            }
            watches = {}
            for name, (status, location) in targets.items():
                task = emulator.add_task(
                    "apiframe", always=Fault(status, headers={"location": location})
                )
                watches[name] = _watch(relay, "apiframe", task)["id"]
            wait_until(
                lambda: all(
                    _get_watch(relay, w)["polls"] >= polls_wanted for w in watches.values()
                ),
                timeout=30,
            )
            shown = {name: _get_watch(relay, w) for name, w in watches.items()}
    finally:
        canary.stop()
    keys_seen = sum("x-api-key" in r for r in canary.requests)
    row = Row(
        SECTION,
        "status API redirects (Apiframe, X-API-Key)",
        {
            "polls per watch": ", ".join(str(w["polls"]) for w in shown.values()),
            "canary requests / with the key": f"{len(canary.requests)} / {keys_seen}",
            **{f"last_error, {name}": w["last_error"] for name, w in shown.items()},
        },
        "A `relay serve` process (RELAY_WATCH_BACKOFF=0.2,1) watches three Apiframe tasks whose"
        " status API answers a redirect: twice to a canary server on 127.0.0.9 counting"
        " requests and X-API-Key headers (as another host would, or the cloud metadata"
        " address), and once to the same path with a trailing slash; each watch is polled a"
        " few times and shown by GET /v1/watches/{id}.",
    )
    row.expect(not canary.requests, f"{len(canary.requests)} requests reached the canary")
    for name, watch in shown.items():
        row.expect(
            watch["polls"] >= polls_wanted and watch["state"] == "active", f"{name}: {watch}"
        )
        error = watch["last_error"] or ""
        row.expect("redirects are not followed" in error, f"{name}: last_error {error!r}")
        row.expect("steal" not in error and "meta-data" not in error, f"{name}: path leaked")
    return [row]


def _list_watches(relay: RelayProcess, **params: str) -> list[dict]:
    items: list[dict] = []
    cursor = None
    while True:
        page = httpx.get(
            f"{relay.base}/v1/watches",
            params={**params, "limit": "500", **({"cursor": cursor} if cursor else {})},
            headers=relay.admin,
            timeout=10,
        ).json()
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items


def _events(relay: RelayProcess) -> int:
    page = httpx.get(f"{relay.base}/v1/events", headers=relay.admin, timeout=10).json()
    return len(page["items"])


def _requests(emulator: ProviderEmulator, task_ids: set[str]) -> int:
    with emulator.lock:
        return sum(1 for hit in emulator.hits if hit.task_id in task_ids)


#: The bounds the flood runs with (small, so that the short form reaches them fast).
FLOOD_PER_URL, FLOOD_MAX, FLOOD_DEADLINE = 50, 120, 10


def provider_forged_callback_flood(ctx: Context) -> list[Row]:
    """Forged ``completed`` Evolink callbacks for random tasks, the API answering 404, then 503."""
    count = ctx.pick(200, 2000)
    env = {
        "RELAY_HOLDS_PER_URL": str(FLOOD_PER_URL),
        "RELAY_HOLDS_MAX": str(FLOOD_MAX),
        "RELAY_HOLD_DEADLINE": str(FLOOD_DEADLINE),
    }
    with _emulator() as emulator, _relay(ctx, "forged-flood", emulator, **env) as relay:

        def mint() -> str:
            return httpx.post(
                f"{relay.base}/v1/callback-urls",
                json={"provider": "evolink", "reusable": True},
                headers=relay.admin,
                timeout=10,
            ).json()["url"]

        def send(urls: list[str], task_ids: list[str]) -> dict[str, int]:
            said: dict[str, int] = {}
            with httpx.Client(timeout=10) as client:
                for n, task in enumerate(task_ids):
                    body = {
                        "id": task,
                        "status": "completed",
                        "progress": 100,
                        "results": ["https://forged.example/x.png"],
                    }
                    word = _said(client.post(urls[n * len(urls) // len(task_ids)], json=body))
                    said[word] = said.get(word, 0) + 1
            return said

        unknown = [f"task-unified-1700000000-u{n:05d}" for n in range(count)]
        started = time.monotonic()
        said_404 = send([mint()], unknown)
        rejected = wait_until(
            lambda: len(_list_watches(relay, state="rejected")) >= FLOOD_PER_URL, 30
        )
        took_404 = time.monotonic() - started
        requests_404 = _requests(emulator, set(unknown))

        down = [f"task-unified-1700000000-d{n:05d}" for n in range(count)]
        for task in down:
            emulator.add_task("evolink", task, always=Fault(503))
        started = time.monotonic()
        said_503 = send([mint() for _ in range(3)], down)
        expired = wait_until(
            lambda: len(_list_watches(relay, state="expired")) >= FLOOD_MAX, FLOOD_DEADLINE + 20
        )
        took_503 = time.monotonic() - started
        requests_503 = _requests(emulator, set(down))
        time.sleep(2)  # after the deadline: no poll left
        late = _requests(emulator, set(down)) - requests_503
        suspects = _list_watches(relay, suspect="true")
        events = _events(relay)
        released, dismissed, undecided_left, events_after = _operator_decides(relay, suspects)
    reasons: dict[str, int] = {}
    for watch in suspects:
        reason = (watch["suspect"] or {}).get("reason", "?")
        reasons[reason] = reasons.get(reason, 0) + 1
    held_404, held_503 = said_404.get("200 held", 0), said_503.get("200 held", 0)
    row = Row(
        SECTION,
        f"{count:,} forged Evolink callbacks for unknown tasks (404), then {count:,} while the"
        " API answers 503",
        {
            "answers, API 404": ", ".join(f"{v} {k}" for k, v in sorted(said_404.items())),
            "status requests, API 404": f"{requests_404} in {took_404:.1f} s"
            f" ({requests_404 / max(held_404, 1):.1f} per hold)",
            "answers, API 503": ", ".join(f"{v} {k}" for k, v in sorted(said_503.items())),
            "status requests, API 503": f"{requests_503} in {took_503:.1f} s"
            f" ({requests_503 / max(held_503, 1):.1f} per hold), {late} after the deadline",
            "suspect watches": ", ".join(f"{v} {k}" for k, v in sorted(reasons.items())),
            "events emitted": events,
            "one suspect released by 8 clients at once": ", ".join(
                f"{v} {k}" for k, v in sorted(released.items())
            ),
            "the others dismissed": f"{dismissed}, undecided left {undecided_left}",
            "events after the operator's decisions": events_after,
        },
        f"A `relay serve` process with RELAY_EVOLINK_API_KEY (confirmation on, back-off 2,60),"
        f" RELAY_HOLDS_PER_URL={FLOOD_PER_URL}, RELAY_HOLDS_MAX={FLOOD_MAX},"
        f" RELAY_HOLD_DEADLINE={FLOOD_DEADLINE}: forged `completed` callbacks for random task"
        " ids through one reusable URL while the emulated API answers 404 (unknown tasks),"
        " then through three URLs while it answers 503; the emulator counts status requests."
        " The relay before this fix held every one: 3 requests each for 404, and for 503 a"
        " poll a minute each for 24 h, then a `generation.failed` event each. Then the"
        " operator: 8 clients release one suspect callback at once (POST"
        " /v1/watches/{id}/release), the rest are dismissed one by one.",
    )
    row.expect(held_404 == FLOOD_PER_URL, f"{held_404} held with the API answering 404")
    row.expect(
        said_404.get("429 too_many_held_callbacks", 0) == count - FLOOD_PER_URL,
        f"answers {said_404}",
    )
    row.expect(rejected and requests_404 == 3 * held_404, f"{requests_404} requests for 404")
    row.expect(held_503 == FLOOD_MAX, f"{held_503} held with the API answering 503")
    row.expect(said_503.get("503 held_callbacks_full", 0) > 0, f"answers {said_503}")
    row.expect(expired and late == 0, f"{late} requests after the deadline")
    row.expect(requests_503 <= 5 * held_503, f"{requests_503} requests for 503")
    row.expect(events == 0, f"{events} events emitted for forged tasks")
    row.expect(
        reasons == {"task_not_found": held_404, "deadline_unconfirmed": held_503},
        f"suspect watches {reasons}",
    )
    row.expect(released == {"200": 1, "409 already_decided": 7}, f"releases {released}")
    row.expect(
        dismissed == len(suspects) - 1 and undecided_left == 0,
        f"{dismissed} dismissed, {undecided_left} left",
    )
    row.expect(events_after == 1, f"{events_after} events after the decisions")
    return [row]


def _operator_decides(
    relay: RelayProcess, suspects: list[dict]
) -> tuple[dict[str, int], int, int, int]:
    """Release the first suspect from 8 clients at once, dismiss the others: the answers to the
    releases, how many were dismissed, how many stay undecided, the events stored after."""
    if not suspects:
        return {}, 0, 0, _events(relay)
    start = threading.Barrier(8)
    answers: list[str] = []

    def release() -> None:
        with httpx.Client(base_url=relay.base, headers=relay.admin, timeout=30) as client:
            start.wait()
            answer = client.post(f"/v1/watches/{suspects[0]['id']}/release")
            code = "" if answer.status_code == 200 else " " + answer.json()["error"]["code"]
            answers.append(f"{answer.status_code}{code}")

    threads = [threading.Thread(target=release) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    dismissed = 0
    with httpx.Client(base_url=relay.base, headers=relay.admin, timeout=30) as client:
        for watch in suspects[1:]:
            dismissed += client.post(f"/v1/watches/{watch['id']}/dismiss").status_code == 200
    released = {word: answers.count(word) for word in set(answers)}
    left = len(_list_watches(relay, suspect="undecided"))
    return released, dismissed, left, _events(relay)


def provider_slow_provider_does_not_starve_another(ctx: Context) -> list[Row]:
    """64 Evolink watches whose API hangs past the timeout, then one Reve Art watch."""
    timeout = ctx.pick(5, 10)
    env = {"RELAY_PROVIDER_TIMEOUT": str(timeout)}
    with _emulator() as emulator, _relay(ctx, "slow-provider", emulator, **env) as relay:
        for _ in range(64):
            task = emulator.add_task("evolink", always=Fault(hang=timeout + 5))
            _watch(relay, "evolink", task)
        wait_until(lambda: len(emulator.arrivals) >= 16, 10)
        genuine = emulator.add_task("reve-art", timeline=((0.0, "succeeded"),))
        due = time.time() + 2  # a watch's first poll: 2 s after registration
        _watch(relay, "reve-art", genuine)
        polled = wait_until(lambda: bool(emulator.hits_for(genuine)), 3 * timeout + 10)
        delay = emulator.hits_for(genuine)[0].at - due if polled else float("inf")
        with emulator.lock:
            hanging = sum(1 for provider, _ in emulator.arrivals if provider == "evolink")
    row = Row(
        SECTION,
        "64 Evolink watches hanging until the timeout beside one Reve Art watch",
        {
            "Reve Art first poll after its due time, s": f"{delay:.2f}",
            "Evolink polls started meanwhile": hanging,
            "status timeout, s": timeout,
        },
        "A `relay serve` process (32 polls at once) watches 64 Evolink tasks whose emulated"
        " API answers only after the status timeout, then one Reve Art task due 2 s later."
        " Before this fix the Evolink polls took every slot in due order: the Reve Art poll"
        " waited for two rounds of timeouts (22 s with 10 s timeouts).",
    )
    row.expect(delay < 2.0, f"the Reve Art watch was polled {delay:.2f} s after it was due")
    return [row]


def provider_budget_across_replicas(ctx: Context) -> list[Row]:
    """30 Reve Art watches, a budget of 10 a window, two replicas on PostgreSQL, against an
    emulator that answers 429 past 10 requests in any window."""
    rate, watches = 10, 30
    window = ctx.pick(3.0, 20.0)
    env = {
        "RELAY_REVE_ART_API_RATE": str(rate),
        "RELAY_API_RATE_WINDOW": str(window),
        "RELAY_WATCH_BACKOFF": f"0.2,{window / 4:g}",
    }
    emulator = ProviderEmulator(rate_limits={"reve-art": (rate, window)}).start()
    try:
        with ctx.postgres() as url:
            env["RELAY_DATABASE_URL"] = url
            with (
                _relay(ctx, "budget-a", emulator, **env) as first,
                _relay(ctx, "budget-b", emulator, **env) as second,
            ):
                started = time.time()
                ids = []
                for n in range(watches):
                    # Done after half a window: the first polls see "pending", so poll again.
                    task = emulator.add_task(
                        "reve-art", timeline=((0.0, "queued"), (window / 2, "succeeded"))
                    )
                    ids.append(_watch((first, second)[n % 2], "reve-art", task)["id"])
                done = wait_until(
                    lambda: all(
                        _get_watch(first, watch_id)["state"] == "completed" for watch_id in ids
                    ),
                    watches / rate * window * 3 + 30,
                    every=0.5,
                )
                elapsed = time.time() - started
    finally:
        emulator.stop()
    counts = emulator.window_counts("reve-art", window)
    with emulator.lock:
        arrived = sorted(emulator.arrival_times.get("reve-art", []))
        refused = sum(1 for hit in emulator.hits if hit.status_code == 429)
    per_window = [0] * (int((arrived[-1] - started) // window) + 1) if arrived else []
    for at in arrived:
        per_window[int((at - started) // window)] += 1
    row = Row(
        SECTION,
        "Reve Art's rate limit held by two replicas on PostgreSQL (30 watches, 10 a window)",
        {
            "window, s": f"{window:g}",
            "requests": len(arrived),
            "most in any window (sliding)": max(counts, default=0),
            "per window from the start": ", ".join(map(str, per_window)),
            "429 answers": refused,
            "watches completed": f"{watches if done else 'not all'} of {watches}",
            "all completed after, s": f"{elapsed:.1f}",
        },
        "Two `relay serve` processes on one PostgreSQL schema with RELAY_REVE_ART_API_RATE=10"
        " and RELAY_API_RATE_WINDOW set to the window; 30 Reve Art watches registered on both"
        " in turn; the emulated API answers 429 past 10 requests in any sliding window (as"
        " Reve Art's 10 a minute per account) and counts every request as it arrives. Without"
        " the budget each watch polled on its own back-off: the emulator answered 429 to"
        " nearly every poll and no watch completed.",
    )
    row.expect(max(counts, default=0) <= rate, f"{max(counts)} requests in one window")
    row.expect(refused == 0, f"{refused} requests answered 429")
    row.expect(done, "not every watch completed")
    return [row]


SCENARIOS = [
    provider_gzip_bomb_at_full_concurrency,
    provider_forged_evolink_callbacks_do_not_spin,
    provider_redirects_are_not_followed,
    provider_forged_callback_flood,
    provider_slow_provider_does_not_starve_another,
    provider_budget_across_replicas,
]
