"""The retry decision (``service.attempt_outcome``), without a server or sleeping.

A ``FakeClock`` stands for the time attempts start; each attempt's record says what happens to
its delivery: succeeded, retried 1 s, 2 s and 4 s after the attempt ended, then failed; 410
fails at once and disables the subscriber.
"""

from __future__ import annotations

import pytest

from service.attempt_outcome import GONE_REASON, attempt_outcome
from service.delivery import Attempt
from service.store.base import Claim
from tests.fakes import FakeClock

DEFAULT_DELAYS = (1.0, 2.0, 4.0)


def claim(cycle_attempts: int, trigger: str = "scheduled") -> Claim:
    return Claim(
        delivery_id="dlv_1",
        event_id="evt_1",
        subscriber_id="sub_1",
        url="http://sub.example/hook",
        secrets=("whsec_x",),
        body="{}",
        cycle_attempts=cycle_attempts,
        trigger=trigger,
    )


def attempt(
    clock: FakeClock, status: int | None, latency_ms: float = 250.0, error: str | None = None
) -> Attempt:
    return Attempt(
        started_at=clock(),
        latency_ms=latency_ms,
        status_code=status,
        error=error,
        response_excerpt="answer" if status else None,
    )


def test_a_failing_subscriber_is_retried_after_1_2_and_4_seconds_then_failed() -> None:
    clock = FakeClock()
    first = clock()
    schedule = []
    for cycle_attempts in range(4):
        record = attempt_outcome(claim(cycle_attempts), attempt(clock, 503), DEFAULT_DELAYS)
        assert record.attempted_at == clock()
        assert (record.status_code, record.response_excerpt) == (503, "answer")
        if record.next_attempt_at is None:
            assert record.outcome == "failed"
            break
        assert record.outcome == "pending"
        schedule.append(record.next_attempt_at - first)
        clock.now = record.next_attempt_at  # the next attempt starts when due
    assert schedule == pytest.approx([1.25, 3.5, 7.75])  # each delay counts from the end
    assert record.outcome == "failed" and record.disable_subscriber is None


@pytest.mark.parametrize("status", [200, 201, 204, 299])
def test_any_2xx_succeeds(status: int) -> None:
    clock = FakeClock()
    record = attempt_outcome(claim(3), attempt(clock, status), DEFAULT_DELAYS)
    assert (record.outcome, record.next_attempt_at, record.disable_subscriber) == (
        "succeeded",
        None,
        None,
    )


@pytest.mark.parametrize("status", [None, 199, 301, 400, 429, 500])
def test_everything_else_is_retried(status: int | None) -> None:
    clock = FakeClock()
    error = "connection refused: 127.0.0.1:9" if status is None else None
    record = attempt_outcome(claim(0), attempt(clock, status, 4.0, error), DEFAULT_DELAYS)
    assert record.outcome == "pending"
    assert record.next_attempt_at == pytest.approx(clock() + 0.004 + 1.0)
    assert record.error == error


def test_gone_fails_at_once_and_disables_the_subscriber() -> None:
    clock = FakeClock()
    record = attempt_outcome(claim(0, "replay"), attempt(clock, 410), DEFAULT_DELAYS)
    assert (record.outcome, record.next_attempt_at) == ("failed", None)
    assert record.disable_subscriber == GONE_REASON
    assert record.trigger == "replay"


def test_no_delays_means_one_attempt() -> None:
    clock = FakeClock()
    assert attempt_outcome(claim(0), attempt(clock, 500), ()).outcome == "failed"


def test_a_replay_starts_a_fresh_cycle() -> None:
    """The store counts attempts per cycle: after a replay, the delays start over."""
    clock = FakeClock()
    record = attempt_outcome(claim(0, "replay"), attempt(clock, 500, 0.0), DEFAULT_DELAYS)
    assert record.next_attempt_at == clock() + 1.0
