"""``Retry-After`` (``service.retry``, ``service.attempt_outcome``): pure logic, injected time.

A 429 or 503 asking to wait longer than the policy's delay moves the next attempt to no sooner
than it asked, capped at an hour; it never adds attempts, and bad values are ignored.
"""

from __future__ import annotations

import pytest

from service.attempt_outcome import attempt_outcome
from service.delivery import Attempt
from service.retry import RETRY_AFTER_CAP_SECONDS, retry_after_seconds
from service.store.base import Claim
from tests.fakes import FakeClock

DELAYS = (1.0, 2.0, 4.0)
#: 2015-10-21T07:28:00Z, the date of RFC 9110's example.
EXAMPLE_DATE = 1445412480.0


def claim(cycle_attempts: int) -> Claim:
    return Claim(
        delivery_id="dlv_1",
        event_id="evt_1",
        subscriber_id="sub_1",
        url="http://sub.example/hook",
        secrets=("whsec_x",),
        body="{}",
        cycle_attempts=cycle_attempts,
        trigger="scheduled",
    )


def answer(clock: FakeClock, status: int, retry_after: str | None) -> Attempt:
    return Attempt(
        started_at=clock(),
        latency_ms=500.0,
        status_code=status,
        error=None,
        response_excerpt="slow down",
        retry_after=retry_after,
    )


@pytest.mark.parametrize(
    ("value", "now", "seconds"),
    [
        ("120", 0.0, 120.0),
        (" 30 ", 0.0, 30.0),
        ("0", 0.0, 0.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", EXAMPLE_DATE - 90, 90.0),  # IMF-fixdate
        ("Wednesday, 21-Oct-15 07:28:00 GMT", EXAMPLE_DATE - 15, 15.0),  # RFC 850 form
        ("Wed Oct 21 07:28:00 2015", EXAMPLE_DATE - 5, 5.0),  # asctime form
        ("Wed, 21 Oct 2015 07:28:00 GMT", EXAMPLE_DATE + 60, 0.0),  # a date in the past
        ("999999999", 0.0, RETRY_AFTER_CAP_SECONDS),  # capped
        ("Wed, 21 Oct 2065 07:28:00 GMT", EXAMPLE_DATE, RETRY_AFTER_CAP_SECONDS),
    ],
)
def test_both_forms_of_retry_after_are_read(value: str, now: float, seconds: float) -> None:
    assert retry_after_seconds(value, now) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value",
    [None, "", "   ", "-5", "1.5", "1e3", "soon", "\u0663\u0660", "9" * 100, "Wed, 99 Oct 2015"],
)
def test_bad_retry_after_values_are_ignored(value: str | None) -> None:
    assert retry_after_seconds(value, EXAMPLE_DATE) is None


def test_a_429_with_retry_after_moves_the_next_attempt_later() -> None:
    clock = FakeClock()
    record = attempt_outcome(claim(0), answer(clock, 429, "30"), DELAYS)
    assert record.outcome == "pending"
    assert record.next_attempt_at == pytest.approx(clock() + 0.5 + 30)  # from its answer


def test_a_503_with_an_http_date_waits_until_that_date() -> None:
    clock = FakeClock(EXAMPLE_DATE - 100)
    record = attempt_outcome(claim(1), answer(clock, 503, "Wed, 21 Oct 2015 07:28:00 GMT"), DELAYS)
    assert record.next_attempt_at == pytest.approx(EXAMPLE_DATE)


def test_retry_after_shorter_than_the_policy_changes_nothing() -> None:
    clock = FakeClock()
    record = attempt_outcome(claim(2), answer(clock, 429, "1"), DELAYS)
    assert record.next_attempt_at == pytest.approx(clock() + 0.5 + 4.0)


def test_a_retry_after_beyond_the_cap_waits_an_hour() -> None:
    clock = FakeClock()
    record = attempt_outcome(claim(0), answer(clock, 503, "86400"), DELAYS)
    assert record.next_attempt_at == pytest.approx(clock() + 0.5 + 3600)


def test_a_bad_retry_after_leaves_the_policy_alone() -> None:
    clock = FakeClock()
    record = attempt_outcome(claim(0), answer(clock, 429, "tomorrow"), DELAYS)
    assert record.next_attempt_at == pytest.approx(clock() + 0.5 + 1.0)


def test_retry_after_on_other_statuses_is_not_read() -> None:
    """The deliverer keeps the header of 429 and 503 only; the decision trusts that."""
    clock = FakeClock()
    record = attempt_outcome(claim(0), answer(clock, 500, None), DELAYS)
    assert record.next_attempt_at == pytest.approx(clock() + 0.5 + 1.0)


def test_the_last_attempt_fails_whatever_retry_after_asks() -> None:
    clock = FakeClock()
    record = attempt_outcome(claim(3), answer(clock, 429, "5"), DELAYS)
    assert (record.outcome, record.next_attempt_at) == ("failed", None)
