"""Crashes: relays killed with SIGKILL at a random moment under mixed load, then restarted.

Each cycle runs callbacks from Evolink, Apiframe v2 (HMAC-signed) and Apiframe v1 (static
secret) into the relay while a subscriber fails a third of its requests, SIGKILLs the relay at
a random moment and restarts it on the same store. The providers retry every callback whose
answer was lost, as real ones do, until it is answered 2xx. At the end every delivery settles,
and what used up its retries on the subscriber's errors is replayed, as the person on call
would; then each acknowledged callback must be stored and delivered at least once. Duplicates (an
attempt the subscriber answered but the killed relay never recorded) are counted, not hidden.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

from tests.relay_process import RelayProcess
from tests.reliability import Context, Row
from tests.reliability._harness import (
    Delivered,
    Load,
    mint_paths,
    settle,
    start_relay,
    stored_events,
    subscribe,
)
from tests.subscriber_server import SubscriberServer

SECTION = "Crashes"

#: Nine attempts: with a third of requests failing at random, a delivery uses up its retries
#: once in 3^9 (about 1 in 20,000; so now and then in a full run of 8,000): those are replayed.
RETRY_DELAYS = "0.2,0.5,1,1,1,1,1,1"


def _flaky_subscriber(seed: int) -> SubscriberServer:
    """Answers 500 to a third of its requests (at random), each after 10 ms: kills land while
    attempts are in flight."""
    rng = random.Random(seed)
    return SubscriberServer(script=lambda n: (500 if rng.random() < 1 / 3 else 204, 0.01)).start()


def _cycles(
    ctx: Context, relays: list[RelayProcess], rng: random.Random
) -> tuple[int, list[float]]:
    """Kill one relay (in turn) at a random moment and restart it, ``ctx.pick(3, 10)`` times."""
    count = ctx.pick(3, 10)
    moments = []
    for cycle in range(count):
        moment = rng.uniform(*ctx.pick((0.3, 1.2), (0.5, 3.0)))
        moments.append(moment)
        time.sleep(moment)
        victim = relays[cycle % len(relays)]
        victim.kill()
        victim.start()
    time.sleep(0.5)  # a little load on the restarted relay before the providers stop
    return count, moments


def _row(
    scenario: str,
    method: str,
    load: Load,
    finished: bool,
    stored: dict[str, str],
    delivered: Delivered,
    failed: int,
    cycles: int,
    moments: list[float],
    settled: tuple[float, int],
    subscriber_errors: list[str],
) -> Row:
    acked = set(load.acked.values())
    lost = acked - set(stored)
    row = Row(
        SECTION,
        scenario,
        {
            "cycles": cycles,
            "kill moments (s)": f"{min(moments):.1f} to {max(moments):.1f}",
            "callbacks sent": load.made,
            "attempts without a 2xx (retried)": load.unanswered,
            "acked 2xx": len(acked),
            "events stored": len(stored),
            "events delivered at least once": delivered.at_least_once,
            "duplicates delivered": delivered.duplicates,
            "deliveries failed (retries used up), replayed": settled[1],
            "failed at the end": failed,
            "lost (acked, not stored or never delivered)": len(lost | delivered.never),
            "settled after (s)": round(settled[0], 1),
        },
        method,
    )
    row.expect(finished, f"{load.made - len(load.acked)} callbacks never got a 2xx answer")
    row.expect(len(acked) == len(load.acked), "two callbacks were answered with one event id")
    row.expect(not lost, f"{len(lost)} acknowledged callbacks are not stored")
    row.expect(
        not delivered.never,
        f"{len(delivered.never)} acknowledged events never reached the subscriber",
    )
    mismatched = [k for k, e in load.acked.items() if e in stored and stored[e] != load.tasks[k]]
    row.expect(not mismatched, f"{len(mismatched)} acked event ids name another task")
    row.expect(not subscriber_errors, f"subscriber saw bad deliveries: {subscriber_errors[:3]}")
    return row


def sqlite_kill_restart(ctx: Context) -> list[Row]:
    """One relay on a SQLite file, SIGKILLed and restarted on the same file each cycle."""
    work: Path = ctx.scratch("sqlite")
    rng = random.Random()
    sink = _flaky_subscriber(rng.randrange(2**32))
    relay = start_relay(work, f"sqlite:///{work / 'relay.db'}", RELAY_RETRY_DELAYS=RETRY_DELAYS)
    try:
        subscribe(relay, sink)
        load = Load([relay.base], mint_paths(relay)).start()
        cycles, moments = _cycles(ctx, [relay], rng)
        finished = load.finish(timeout=60)
        acked = set(load.acked.values())
        settled = settle(relay, acked, sink, timeout=ctx.pick(60, 180))
        stored = stored_events(relay)
        failed = len(relay.all_deliveries("failed"))
    finally:
        relay.stop()
        sink.stop()
    return [
        _row(
            "SQLite, one relay: SIGKILL under load, restart",
            "4 concurrent providers (Evolink, Apiframe v2 signed, v1 secret; statuses "
            "completed/failed/processing) retry every callback without a 2xx; the relay is "
            "SIGKILLed at a random moment and restarted on the same file; after the last "
            "cycle deliveries settle (9 attempts each; what fails is replayed through the admin "
            "API) and the acked event ids are compared with /v1/events and with what the "
            "subscriber (500 to a third, at random) accepted.",
            load,
            finished,
            stored,
            Delivered.of(acked, sink),
            failed,
            cycles,
            moments,
            settled,
            sink.errors,
        )
    ]


def postgres_replica_killed(ctx: Context) -> list[Row]:
    """Two relays on one PostgreSQL schema, the load spread over both; one killed per cycle."""
    rng = random.Random()
    with ctx.postgres() as url:
        sink = _flaky_subscriber(rng.randrange(2**32))
        relays: list[RelayProcess] = []
        try:
            for name in ("a", "b"):
                relays.append(start_relay(ctx.scratch(name), url, RELAY_RETRY_DELAYS=RETRY_DELAYS))
            subscribe(relays[0], sink)
            paths = mint_paths(relays[0])
            load = Load([relay.base for relay in relays], paths).start()
            cycles, moments = _cycles(ctx, relays, rng)
            finished = load.finish(timeout=60)
            acked = set(load.acked.values())
            # A killed replica's leases lapse after 3 x 1 s + 10 s; then the other delivers.
            settled = settle(relays[0], acked, sink, timeout=ctx.pick(60, 180))
            stored = stored_events(relays[0])
            failed = len(relays[0].all_deliveries("failed"))
        finally:
            for relay in relays:
                relay.stop()
            sink.stop()
    return [
        _row(
            "PostgreSQL, two replicas: one SIGKILLed under load, restarted",
            "as the SQLite row, with two relay processes on one schema: callbacks alternate "
            "between them (a retry goes to the other), each cycle SIGKILLs the next replica "
            "in turn and restarts it; what it held is taken over when its leases lapse.",
            load,
            finished,
            stored,
            Delivered.of(acked, sink),
            failed,
            cycles,
            moments,
            settled,
            sink.errors,
        )
    ]


SCENARIOS = [sqlite_kill_restart, postgres_replica_killed]
