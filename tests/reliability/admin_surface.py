"""Admin surface: every /v1 and /ops route refuses callers without the admin token (compared in
constant time), failed console sign-ins are slowed down, console forms check CSRF, and a
signed-out console cookie opens nothing on any replica.
"""

from __future__ import annotations

import collections
import inspect
import re
import statistics
import time
from collections.abc import Iterator

import httpx

from service import api_keys
from service.app import create_app, route_table
from service.ops import session as sessions
from service.settings import Settings
from tests.relay_process import ADMIN, RelayProcess
from tests.reliability import Context, Row, free_port
from tests.test_ops_console import csrf_of, sign_in

SECTION = "Admin surface"

#: Authorization headers that must all be refused (None: no header at all).
WRONG_AUTH: dict[str, str | None] = {
    "none": None,
    "wrong token": "Bearer not-the-admin-token",
    "last character differs": "Bearer " + ADMIN[:-1] + ("x" if ADMIN[-1] != "x" else "y"),
    "one character longer": f"Bearer {ADMIN}x",
    "prefix only": f"Bearer {ADMIN[:-1]}",
    "no scheme": ADMIN,
    "Basic scheme": "Basic " + ADMIN,
    "scheme only": "Bearer",
    "empty": "",
}


#: Routes outside /v1 and /ops: callbacks (their own token or signature), archived outputs
#: (their key signed by the relay), probes, the schema.
PUBLIC = {
    "/archive/token_x",
    "/callbacks/provider_x",
    "/callbacks/provider_x/token_x",
    "/healthz",
    "/metrics",
    "/openapi.json",
    "/readyz",
}


def served_routes() -> Iterator[tuple[str, str]]:
    """(method, path with example parameters) of every route the app serves."""
    app = create_app(Settings(database_url="sqlite:///:memory:"), run_worker=False)
    for method, route_path in route_table(app):
        path = re.sub(r"\{(\w+)(:\w+)?\}", lambda m: f"{m.group(1).split('_')[0]}_x", route_path)
        yield method, path


def _start(ctx: Context, name: str) -> RelayProcess:
    return RelayProcess(ctx.scratch(name), free_port()).start()


def routes_refuse(ctx: Context) -> list[Row]:
    relay = _start(ctx, "routes")
    answers: collections.Counter[str] = collections.Counter()
    problems: list[str] = []
    routes = list(served_routes())
    v1 = [(m, p) for m, p in routes if p.startswith("/v1/")]
    ops = [(m, p) for m, p in routes if p.startswith("/ops")]
    public = sorted({p for m, p in routes if not p.startswith(("/v1/", "/ops"))})
    try:
        with httpx.Client(base_url=relay.base, timeout=10, follow_redirects=False) as client:
            for method, path in [*v1, ("GET", "/metrics")]:
                for label, header in WRONG_AUTH.items():
                    headers = {} if header is None else {"authorization": header}
                    answer = client.request(method, path, headers=headers, content=b"{}")
                    body_ok = method == "HEAD" or (
                        answer.headers.get("content-type") == "application/json"
                        and answer.json()["error"]["code"] == "unauthorized"
                    )
                    if answer.status_code != 401 or not body_ok:
                        problems.append(f"{method} {path} ({label}): {answer.status_code}")
                    if answer.headers.get("www-authenticate") != "Bearer":
                        problems.append(f"{method} {path} ({label}): no WWW-Authenticate")
                    answers[f"{answer.status_code}"] += 1
            ops_answers: collections.Counter[str] = collections.Counter()
            for method, path in ops:
                for label, header in WRONG_AUTH.items():
                    # The admin bearer token itself is no console session either.
                    headers = {"authorization": header or f"Bearer {ADMIN}"}
                    if label == "none":
                        headers = {}
                    answer = client.request(method, path, headers=headers, data={"csrf": "x"})
                    if path == "/ops/sign-in":
                        # Public by design: the form (GET), or its refusal without the form's
                        # CSRF token (POST), before any token is looked at.
                        expected = 403 if method == "POST" else 200
                    elif method in ("GET", "HEAD"):
                        expected = 303
                    else:
                        expected = 403
                    where = answer.headers.get("location", "")
                    if answer.status_code != expected or (
                        expected == 303 and not where.startswith("/ops/sign-in?next=")
                    ):
                        problems.append(f"{method} {path} ({label}): {answer.status_code}")
                    ops_answers[f"{method} {answer.status_code}"] += 1
            slow, fast = _timing(client, ctx.pick(150, 1500))
    finally:
        relay.stop()
    compare = {
        # The admin token, for the admin API, /metrics and the console's sign-in alike (an API
        # key is looked up by its SHA-256: service.api_keys).
        "service.api_keys.is_admin_token": inspect.getsource(api_keys.is_admin_token),
        "service.ops.session.csrf_ok": inspect.getsource(sessions.csrf_ok),
    }
    constant_time = [name for name, source in compare.items() if "hmac.compare_digest" in source]
    row = Row(
        SECTION,
        "Every /v1 and /ops route without the admin token",
        {
            "routes served (method, path)": len(routes),
            "/v1 routes": len(v1),
            "/ops routes": len(ops),
            "public routes": ", ".join(public),
            "bad Authorization variants per route": len(WRONG_AUTH),
            "/v1 and /metrics answers": ", ".join(f"{k} x{v}" for k, v in sorted(answers.items())),
            "/ops answers": ", ".join(f"{k} x{v}" for k, v in sorted(ops_answers.items())),
            "compared with hmac.compare_digest": ", ".join(constant_time),
            "median 401, no prefix shared / all but the last char, µs": f"{slow:.0f} / {fast:.0f}",
            "timing ratio": round(fast / slow, 3),
        },
        "Routes enumerated from create_app().routes; each /v1 route (and /metrics) requested "
        "with each bad Authorization header against a `relay serve` process: 401 JSON "
        "`unauthorized` with WWW-Authenticate expected; /ops pages must redirect to sign-in "
        "(303) and /ops forms refuse (403) without a console session, the bearer token "
        "included. Constant time: the comparisons' source is inspected, and the median of "
        "interleaved 401s with a token sharing no prefix vs all but its last character is "
        "reported (noise, not a pass/fail figure).",
    )
    for problem in problems[:10]:
        row.expect(False, problem)
    row.expect(len(constant_time) == len(compare), f"not constant time: {compare.keys()}")
    # /metrics is public only with RELAY_METRICS_PUBLIC (checked above, with the /v1 routes).
    row.expect(set(public) <= PUBLIC, f"routes outside /v1 and /ops: {set(public) - PUBLIC}")
    return [row]


def _timing(client: httpx.Client, rounds: int) -> tuple[float, float]:
    """Median µs of a 401 for a token sharing no prefix with the admin token, and for one
    sharing all but its last character (interleaved, so drift hits both alike)."""
    far = "Bearer " + "".join("Z" if c != "Z" else "Y" for c in ADMIN)
    near = WRONG_AUTH["last character differs"]
    times: dict[str, list[float]] = {"far": [], "near": []}
    for _ in range(rounds):
        for name, header in (("far", far), ("near", near)):
            started = time.perf_counter()
            client.get("/v1/events", headers={"authorization": str(header)})
            times[name].append((time.perf_counter() - started) * 1e6)
    return statistics.median(times["far"]), statistics.median(times["near"])


def sign_in_throttle(ctx: Context) -> list[Row]:
    relay = _start(ctx, "throttle")
    log: list[str] = []
    try:
        with httpx.Client(base_url=relay.base, timeout=10, follow_redirects=False) as client:
            statuses = [sign_in(client, token="wrong-token").status_code for _ in range(3)]
            log.append("3 wrong: " + ",".join(map(str, statuses)))
            locked = sign_in(client, token="wrong-token")
            first_wait = locked.headers.get("retry-after")
            log.append(f"4th at once: {locked.status_code} (Retry-After {first_wait})")
            correct = sign_in(client, token=ADMIN)
            log.append(f"the right token at once: {correct.status_code}")
            time.sleep(float(first_wait or 0) + 0.1)
            again = sign_in(client, token="wrong-token")
            log.append(f"after the wait, wrong: {again.status_code}")
            doubled = sign_in(client, token="wrong-token")
            second_wait = doubled.headers.get("retry-after")
            log.append(f"at once: {doubled.status_code} (Retry-After {second_wait})")
            burst = collections.Counter(
                sign_in(client, token="wrong-token").status_code for _ in range(ctx.pick(20, 200))
            )
            log.append("burst: " + ", ".join(f"{k} x{v}" for k, v in sorted(burst.items())))
            time.sleep(float(second_wait or 0) + 0.1)
            finally_in = sign_in(client, token=ADMIN)
            log.append(f"right token after the wait: {finally_in.status_code}")
    finally:
        relay.stop()
    row = Row(
        SECTION,
        "Repeated failed console sign-ins",
        {"answers in order": "; ".join(log)},
        "Wrong tokens posted to /ops/sign-in (with the form's CSRF token) from one address to "
        "a `relay serve` process, then attempts at once and after Retry-After.",
    )
    row.expect(statuses == [401, 401, 401], "the first failures are not 401")
    row.expect(locked.status_code == 429 and first_wait == "1", "no 1 s wait after 3 failures")
    row.expect(correct.status_code == 429, "the right token was tried during the wait")
    row.expect(again.status_code == 401, "still refused after the wait")
    row.expect(doubled.status_code == 429 and second_wait == "2", "the wait did not double")
    row.expect(set(burst) == {429}, "a burst got through")
    row.expect(finally_in.status_code == 303, "the right token refused after the wait")
    return [row]


def csrf(ctx: Context) -> list[Row]:
    relay = _start(ctx, "csrf")
    results: dict[str, int] = {}
    try:
        with (
            httpx.Client(base_url=relay.base, timeout=10, follow_redirects=False) as client,
            httpx.Client(base_url=relay.base, timeout=10, follow_redirects=False) as other,
        ):
            results["sign-in without the form's token"] = client.post(
                "/ops/sign-in", data={"token": ADMIN}
            ).status_code
            assert sign_in(client, token=ADMIN).status_code == 303
            assert sign_in(other, token=ADMIN).status_code == 303
            mine = csrf_of(client.get("/ops/deliveries").text)
            theirs = csrf_of(other.get("/ops/deliveries").text)
            forms = ["/ops/deliveries/replay", "/ops/subscribers", "/ops/sign-out"]
            cases = {
                "no token": ({}, {}),
                "wrong token": ({"csrf": "guess"}, {}),
                "another session's token": ({"csrf": theirs}, {}),
                "foreign Origin": ({"csrf": mine}, {"origin": "https://evil.example"}),
            }
            for label, (form, headers) in cases.items():
                for path in forms:
                    data = {**form, "url": "http://127.0.0.1:9/x", "ids": "dlv_x"}
                    answer = client.post(path, data=data, headers=headers)
                    results[f"{label}, {path}"] = answer.status_code
            # The control: the same form with the right token from the console's own origin.
            own = client.post(
                "/ops/deliveries/replay",
                data={"csrf": mine, "ids": "dlv_x"},
                headers={"origin": relay.base},
            )
            results["control: right token, own Origin"] = own.status_code
    finally:
        relay.stop()
    refused = {k: v for k, v in results.items() if not k.startswith("control")}
    row = Row(
        SECTION,
        "CSRF on the console's forms",
        {
            "forged posts": len(refused),
            "refused (403)": sum(1 for v in refused.values() if v == 403),
            "control (right token, own Origin)": results["control: right token, own Origin"],
        },
        "A signed-in console session on a `relay serve` process posts its forms (replay, add "
        "subscriber, sign out) without a CSRF token, with a wrong one, with another signed-in "
        "session's, and with its own but a foreign Origin; then once correctly as a control.",
    )
    for label, status in refused.items():
        row.expect(status == 403, f"{label}: {status}")
    row.expect(own.status_code == 303, "the control post was refused")
    return [row]


CONSOLE_PAGES = ["/ops", "/ops/deliveries", "/ops/events", "/ops/subscribers"]
CONSOLE_FORMS = [
    "/ops/deliveries/replay",
    "/ops/deliveries/dlv_x/replay",
    "/ops/subscribers",
    "/ops/subscribers/sub_x",
    "/ops/subscribers/sub_x/rotate-secret",
    "/ops/sign-out",
]


def signed_out_cookie(ctx: Context) -> list[Row]:
    with ctx.postgres() as url:
        first = RelayProcess(ctx.scratch("signout-1"), free_port(), RELAY_DATABASE_URL=url)
        second = RelayProcess(ctx.scratch("signout-2"), free_port(), RELAY_DATABASE_URL=url)
        pages: collections.Counter[int] = collections.Counter()
        forms: collections.Counter[int] = collections.Counter()
        try:
            first.start()
            second.start()
            with httpx.Client(base_url=first.base, timeout=10, follow_redirects=False) as client:
                assert sign_in(client, token=ADMIN).status_code == 303
                token = csrf_of(client.get("/ops/deliveries").text)
                cookie = {sessions.COOKIE: client.cookies[sessions.COOKIE]}
                with httpx.Client(base_url=second.base, timeout=10, cookies=cookie) as copy:
                    before = copy.get("/ops/deliveries").status_code
                signed_out = client.post("/ops/sign-out", data={"csrf": token}).status_code
            for relay in (first, second):
                with httpx.Client(base_url=relay.base, timeout=10, cookies=cookie) as copy:
                    for path in CONSOLE_PAGES:
                        pages[copy.get(path).status_code] += 1
                    for path in CONSOLE_FORMS:
                        data = {"csrf": token, "ids": "dlv_x", "url": "http://127.0.0.1:9/x"}
                        forms[copy.post(path, data={**data, "action": "disable"}).status_code] += 1
        finally:
            first.stop()
            second.stop()
    row = Row(
        SECTION,
        "Console cookie copied before sign-out, used after it, two replicas",
        {
            "copy on the other replica before sign-out": before,
            "sign-out": signed_out,
            "pages asked after (both replicas)": sum(pages.values()),
            "pages answered": ", ".join(f"{k} x{v}" for k, v in sorted(pages.items())),
            "forms posted after, with its CSRF token": sum(forms.values()),
            "forms answered": ", ".join(f"{k} x{v}" for k, v in sorted(forms.items())),
        },
        "Two `relay serve` processes on one PostgreSQL schema; a console session signs in on "
        "the first, its cookie is copied and opens a page on the second, then it signs out on "
        "the first; the copy then asks every console page and posts every console form (with "
        "the session's CSRF token) on both: pages must send it to sign in (303), forms refuse "
        "(403).",
    )
    row.expect(before == 200, f"the copy did not work before sign-out: {before}")
    row.expect(signed_out == 303, f"sign-out answered {signed_out}")
    row.expect(set(pages) == {303}, f"pages answered {dict(pages)}")
    row.expect(set(forms) == {403}, f"forms answered {dict(forms)}")
    return [row]


SCENARIOS = [routes_refuse, sign_in_throttle, csrf, signed_out_cookie]
