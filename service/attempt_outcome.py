"""What one delivery attempt's result means for its delivery: the retry decision (pure).

* A 2xx answer: the delivery succeeded.
* 410 Gone: the delivery failed for good and its subscriber is disabled.
* Anything else (another status, a timeout, a refused or reset connection, a blocked target):
  the delivery is retried after the next delay of the policy (``service.retry``: by default
  1 s, 2 s, then 4 s after the attempt ended), and failed once the delays are used up; an
  operator's replay then starts a fresh cycle. A 429 or 503 with ``Retry-After`` moves that
  retry later when it asks for more than the policy's delay (capped at one hour), never adds
  one (``service.retry``).

The time comes from the attempt itself (when it started, and how long it took), never from a
clock read here, so the same attempt always gives the same record.
"""

from __future__ import annotations

from collections.abc import Sequence

from service.delivery import Attempt
from service.retry import next_delay, retry_after_seconds, retry_at
from service.store.base import AttemptRecord, Claim, DeliveryStatus

GONE_REASON = "the subscriber answered 410 Gone"


def attempt_outcome(claim: Claim, attempt: Attempt, retry_delays: Sequence[float]) -> AttemptRecord:
    """The record of ``attempt`` at ``claim``'s delivery: outcome, next attempt, disabling."""
    done_at = attempt.started_at + attempt.latency_ms / 1000
    outcome: DeliveryStatus
    next_at: float | None = None
    disable = None
    if attempt.ok:
        outcome = "succeeded"
    elif attempt.status_code == 410:
        outcome, disable = "failed", GONE_REASON
    else:
        delay = next_delay(retry_delays, claim.cycle_attempts + 1)
        if delay is None:
            outcome = "failed"
        else:
            asked = retry_after_seconds(attempt.retry_after, done_at)
            outcome, next_at = "pending", retry_at(done_at, delay, asked)
    return AttemptRecord(
        delivery_id=claim.delivery_id,
        attempted_at=attempt.started_at,
        trigger=claim.trigger,
        latency_ms=attempt.latency_ms,
        status_code=attempt.status_code,
        error=attempt.error,
        response_excerpt=attempt.response_excerpt,
        outcome=outcome,
        next_attempt_at=next_at,
        disable_subscriber=disable,
        subscriber_failing=claim.subscriber_failing,
    )
