"""Log lines: one JSON object each, naming what they are about, and never a token or secret.

One test reads the JSON lines of a real ``relay serve`` subprocess through a whole callback,
delivery, refusal, console sign-in and secret rotation; another captures the delivery
worker's events in-process (``structlog.testing.capture_logs``); a third checks the console
format a person reads on a terminal.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import os
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from structlog.testing import capture_logs

from service.logs import LineWriter, _add_timestamp, mask_callback_path
from tests.conftest import EVOLINK_COMPLETED, RelayServer, bound_socket
from tests.log_capture import PhaseStream
from tests.subscriber_server import SubscriberServer

ADMIN = "logs-admin-token-0123456789"
SIGNING_KEY = "logs-signing-key-9876543210"


def evolink(task_id: str, status: str = "completed", progress: int = 100) -> dict[str, Any]:
    payload = copy.deepcopy(EVOLINK_COMPLETED)
    payload.update(id=task_id, status=status, progress=progress)
    return payload


def _wait_healthy(base: str) -> None:
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.05)
    raise AssertionError("relay did not start")


def test_subprocess_lines_are_json_with_ids_and_no_secrets(tmp_path: Path) -> None:
    sink = SubscriberServer(script=lambda n: (503, 0.0) if n == 0 else (204, 0.0)).start()
    sock = bound_socket()
    port = sock.getsockname()[1]
    sock.close()
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env.update(
        RELAY_DATABASE_URL=f"sqlite:///{tmp_path / 'logs.db'}",
        RELAY_PUBLIC_URL=base,
        RELAY_ADMIN_TOKEN=ADMIN,
        RELAY_SECRET_KEY=SIGNING_KEY,
        RELAY_ALLOW_PRIVATE_TARGETS="true",
        RELAY_RETRY_DELAYS="0.2",
        RELAY_LOG_LEVEL="debug",
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "service", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    admin = {"authorization": f"Bearer {ADMIN}"}
    secrets: list[str] = []
    try:
        _wait_healthy(base)
        created = httpx.post(f"{base}/v1/subscribers", json={"url": sink.url}, headers=admin)
        subscriber = created.json()
        secrets.append(subscriber["secret"])
        sink.secrets.append(subscriber["secret"])
        url = httpx.post(
            f"{base}/v1/callback-urls", json={"provider": "evolink"}, headers=admin
        ).json()["url"]
        token = url.rsplit("/", 1)[1]
        accepted = httpx.post(url, json=evolink("t-logs")).json()
        httpx.post(url + "tampered", json=evolink("t-logs-2"))
        deadline = time.time() + 15
        while not sink.accepted_ids():
            assert time.time() < deadline, "not delivered"
            time.sleep(0.05)
        rotated = httpx.post(
            f"{base}/v1/subscribers/{subscriber['id']}/rotate-secret", headers=admin
        )
        secrets.append(rotated.json()["secret"])
        with httpx.Client(base_url=base) as browser:  # the console's sign-in form carries the token
            page = browser.get("/ops/sign-in").text
            csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
            browser.post("/ops/sign-in", data={"csrf": csrf, "token": "wrong-guess-123"})
            assert (
                browser.post("/ops/sign-in", data={"csrf": csrf, "token": ADMIN}).status_code == 303
            )
        httpx.get(f"{base}/metrics", headers=admin)
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=30)
        sink.stop()

    lines = [line for line in stderr.splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"event", "level", "timestamp"} <= set(r) for r in records)
    for secret in (ADMIN, SIGNING_KEY, token, *secrets, "wrong-guess-123"):
        assert secret not in stderr, f"a secret leaked into the logs: {secret[:12]}..."

    callback_lines = [r for r in records if r["event"] == "request" and "/callbacks/" in r["path"]]
    accepted_line = next(r for r in callback_lines if r.get("outcome") == "accepted")
    assert accepted_line["path"] == "/callbacks/evolink/***"
    assert accepted_line["request_id"].startswith("req_")
    assert accepted_line["provider"] == "evolink"
    assert accepted_line["task_id"] == "t-logs"
    assert accepted_line["event_id"] == accepted["event_id"]
    refused = next(r for r in callback_lines if r.get("error_code") == "invalid_token")
    assert refused["path"] == "/callbacks/evolink/***" and refused["status"] == 401

    attempts = [r for r in records if r["event"] == "delivery_attempt"]
    assert [r["outcome"] for r in attempts] == ["pending", "succeeded"]
    for record in attempts:
        assert record["event_id"] == accepted["event_id"]
        assert record["subscriber_id"] == subscriber["id"]
        assert record["delivery_id"].startswith("dlv_")
        assert (record["provider"], record["task_id"]) == ("evolink", "t-logs")
        assert "request_id" not in record  # the worker's lines belong to no request
    assert attempts[0]["status_code"] == 503
    signed_in = [r for r in records if r["event"] in ("ops_signed_in", "ops_sign_in_failed")]
    assert len(signed_in) == 2 and all("token" not in r for r in signed_in)
    # Logged while a request ran: its request_id is bound, and it is that request's.
    sign_in_requests = {
        r["request_id"] for r in records if r["event"] == "request" and r["path"] == "/ops/sign-in"
    }
    assert all(r["request_id"] in sign_in_requests for r in signed_in)


def test_worker_lines_carry_the_delivery_context(
    relay_factory: Callable[..., RelayServer],
) -> None:
    """Captured in-process: the attempt's lines get their ids from structlog.contextvars."""
    sink = SubscriberServer(script=lambda n: (500, 0.0)).start()
    try:
        relay = relay_factory(retry_delays=(0.1,))
        subscriber = relay.add_subscriber(sink.url)
        url = relay.mint()
        with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
            event_id = relay.post_callback(url, evolink("t-capture")).json()["event_id"]
            relay.wait_deliveries(1, "failed")
            time.sleep(0.1)
    finally:
        sink.stop()
    attempts = [e for e in logs if e["event"] == "delivery_attempt"]
    assert [e["outcome"] for e in attempts] == ["pending", "failed"]
    for entry in attempts:
        assert entry["event_id"] == event_id
        assert entry["subscriber_id"] == subscriber["id"]
        assert entry["provider"] == "evolink" and entry["task_id"] == "t-capture"
        assert entry["status_code"] == 500
        assert "request_id" not in entry
    access = next(e for e in logs if e["event"] == "request" and e.get("outcome") == "accepted")
    assert access["event_id"] == event_id and access["request_id"].startswith("req_")
    assert all(subscriber["secret"] not in json.dumps(e, default=str) for e in logs)


def test_console_format_is_readable_and_redacted(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import structlog
        from service.logs import configure_logging
        configure_logging("console", "info")
        log = structlog.get_logger("demo")
        log.info("delivery_attempt", delivery_id="dlv_1", secret="whsec_hidden", status_code=503)
        log.info("request", path="/callbacks/evolink/abc.def.ghi", status=200)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    lines = result.stderr.splitlines()
    assert len(lines) == 2
    assert not lines[0].startswith("{")  # not JSON: a line for a person
    assert "delivery_attempt" in lines[0] and "delivery_id=dlv_1" in lines[0]
    assert "whsec_hidden" not in result.stderr and "secret=***" in lines[0]
    assert "/callbacks/evolink/***" in lines[1] and "abc.def.ghi" not in result.stderr


def test_json_lines_are_stamped_redacted_masked_and_filtered() -> None:
    """``configure_logging``'s JSON: level and UTC time on every line, secrets and callback
    tokens hidden (exception text included), lines under the level dropped, foreign loggers
    (uvicorn) in the same format, all on the stream it was given."""
    script = textwrap.dedent(
        """
        import logging, sys
        import structlog
        from service.logs import configure_logging
        configure_logging("json", "info", sys.stdout)
        log = structlog.get_logger("demo")
        structlog.contextvars.bind_contextvars(request_id="req_1")
        log.debug("hidden", n=1)
        log.info("request", path="/callbacks/evolink/tok.en", status=200, secret="s3", n=1.5)
        try:
            raise ValueError("posted to /callbacks/evolink/tok.en")
        except ValueError:
            log.exception("failed")
        logging.getLogger("uvicorn.error").warning("from uvicorn")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stderr == ""
    request, failed, foreign = (json.loads(line) for line in result.stdout.splitlines())
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z", request.pop("timestamp"))
    assert request == {
        "path": "/callbacks/evolink/***",
        "status": 200,
        "secret": "***",
        "n": 1.5,
        "event": "request",
        "request_id": "req_1",
        "level": "info",
    }
    assert failed["level"] == "error" and failed["event"] == "failed"
    assert "ValueError: posted to /callbacks/evolink/***" in failed["exception"]
    assert (foreign["event"], foreign["level"]) == ("from uvicorn", "warning")
    assert "tok.en" not in result.stdout and "s3" not in result.stdout


class _Recording:
    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        pass


def test_a_loop_iteration_s_lines_are_written_together_other_lines_at_once() -> None:
    stream = _Recording()
    writer = LineWriter(stream)  # type: ignore[arg-type]
    writer.info("off a loop")
    assert stream.writes == ["off a loop\n"]

    async def log_on_a_loop() -> list[str]:
        writer.info("one")
        writer.info("two")
        kept = list(stream.writes)
        await asyncio.sleep(0)  # the iteration ends
        return kept

    kept = asyncio.run(log_on_a_loop())
    assert kept == ["off a loop\n"]  # nothing written while the iteration ran
    assert stream.writes == ["off a loop\n", "one\ntwo\n"]


def test_lines_between_test_phases_wait_for_the_next_phase(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The tests' log stream (``tests.log_capture``): written to the captured stdout while a
    phase is open, held while none is, so a line never lands on pytest's own output."""
    stream = PhaseStream()
    stream.close()
    stream.write("late line\n")
    stream.flush()
    assert capsys.readouterr().out == "" and stream.held() == "late line\n"
    stream.open()
    assert capsys.readouterr().out == "late line\n" and stream.held() == ""
    stream.write("on time\n")
    assert capsys.readouterr().out == "on time\n"


def test_relays_under_test_log_into_the_tests_capture(capfd: pytest.CaptureFixture[str]) -> None:
    """Lines of the relay's own configuration (console format here), and uvicorn's through
    the standard library, reach what a test reads with ``capfd``."""
    structlog.get_logger("demo").info("seen_by_the_test", delivery_id="dlv_1", secret="s3")
    logging.getLogger("uvicorn.error").warning("uvicorn_line")
    out = capfd.readouterr().out
    (line,) = [line for line in out.splitlines() if "seen_by_the_test" in line]
    assert "delivery_id=dlv_1" in line and "secret=***" in line and "s3" not in out
    assert "uvicorn_line" in out


def test_mask_callback_path_masks_every_token() -> None:
    line = 'url="/callbacks/evolink/abc.def" again /callbacks/apiframe/x1?y=2 done /callbacks/a/***'
    assert mask_callback_path(line) == (
        'url="/callbacks/evolink/***" again /callbacks/apiframe/***?y=2 done /callbacks/a/***'
    )


def test_access_line_masks_tokens_in_misrouted_callback_paths(
    relay_server: RelayServer, capfd: pytest.CaptureFixture[str]
) -> None:
    """A token in a path no route takes is masked too: every segment under ``/callbacks/``
    that is not a provider's name is ``***``."""
    token = relay_server.mint().rsplit("/", 1)[1]
    paths = {
        f"/callbacks/{token}": "/callbacks/***",
        f"/callbacks//evolink/{token}": "/callbacks//evolink/***",
        f"/callbacks/evolink/x/{token}": "/callbacks/evolink/***/***",
        # ("evolink" too: after a masked segment, the line's own mask takes it for a token.)
        f"/callbacks/%2e%2e/evolink/{token}": "/callbacks/***/***/***",
        f"/callbacks/evolink/{token}/": "/callbacks/evolink/***/",
    }
    capfd.readouterr()
    for path in paths:
        answer = relay_server.client.post(path, json=EVOLINK_COMPLETED)
        assert 400 <= answer.status_code < 500
    logged = ""
    deadline = time.monotonic() + 5
    # A request's line is written once its answer is sent: wait for the last one's.
    while logged.count(" path=/callbacks/") < len(paths):
        assert time.monotonic() < deadline, logged
        time.sleep(0.01)
        logged += capfd.readouterr().out
    leaked = [line for line in logged.splitlines() if token.split(".")[0] in line]
    assert leaked == []
    for shown in paths.values():
        assert f"path={shown} " in logged, shown


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (1767225600.5, "2026-01-01T00:00:00.500000Z"),
        (1767225661.25, "2026-01-01T00:01:01.250000Z"),
        (1767225600.0, "2026-01-01T00:00:00.000000Z"),
    ],
)
def test_line_timestamp_is_utc_to_the_microsecond(
    monkeypatch: pytest.MonkeyPatch, now: float, expected: str
) -> None:
    monkeypatch.setattr(time, "time", lambda: now)
    assert _add_timestamp(None, "info", {})["timestamp"] == expected
