"""Storage outages: the store stops accepting writes under a running relay, then returns.

Three real outages: a SQLite file on a full file system (a small tmpfs), a SQLite file whose
file system the kernel turns read-only (ext4 on a loop device after an error, as
``errors=remount-ro`` does on a failing disk), and PostgreSQL going away (its real server
stopped and started in the full form; a TCP proxy cut and restored in the short form, so that
``make test`` does not stop the server other work shares). In every case a callback is
answered 503 ``storage_unavailable`` and never 2xx while nothing can be committed, ``/readyz``
says why, and once the store is back callbacks are accepted again and the deliveries that
were pending resume, without restarting the relay where the storage itself allows it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.relay_process import RelayProcess
from tests.reliability import Context, Row
from tests.reliability._harness import (
    Callback,
    Providers,
    accepted,
    mint_paths,
    readyz,
    start_relay,
    stored_events,
    subscribe,
    wait_until,
)
from tests.subscriber_server import SubscriberServer

SECTION = "Storage outages"

#: Retries spaced so that what failed before the outage is still pending after it.
RETRY_DELAYS = ",".join(["2"] + ["1"] * 20)


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def _mount(*command: str) -> None:
    """Run a mount command; skip the scenario (saying why) where mounting is not permitted."""
    done = _run(*command)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small file system here ({' '.join(command)}): {done.stderr}")


@contextlib.contextmanager
def _mounted(*command: str, target: Path) -> Iterator[Path]:
    _mount(*command)
    try:
        yield target
    finally:
        if _run("umount", str(target)).returncode != 0:
            _run("umount", "-l", str(target))  # still busy: detach it, it goes when freed


@dataclass
class Answer:
    callback: Callback
    status: int
    code: str | None
    event_id: str | None
    at: float


@dataclass
class Relayed:
    """A relay and its subscriber for one outage; the subscriber fails while ``down``."""

    relay: RelayProcess
    sink: SubscriberServer
    paths: dict[str, str]
    providers: Providers = field(default_factory=lambda: Providers(pad=4096))
    down: bool = True

    def post(self, client: httpx.Client) -> Answer:
        callback = self.providers.next()
        url = self.relay.base + self.paths[callback.provider]
        try:
            answer = client.post(url, content=callback.body, headers=callback.headers)
        except httpx.TransportError:
            return Answer(callback, 0, None, None, time.monotonic())
        body: dict[str, Any] = answer.json()
        code = body.get("error", {}).get("code") if "error" in body else None
        return Answer(callback, answer.status_code, code, body.get("event_id"), time.monotonic())


@contextlib.contextmanager
def _relayed(work: Path, database_url: str) -> Iterator[Relayed]:
    state: dict[str, Relayed] = {}
    sink = SubscriberServer(
        script=lambda n: (503 if state["r"].down else 204, 0.0),
    ).start()
    relay = start_relay(work, database_url, RELAY_RETRY_DELAYS=RETRY_DELAYS)
    try:
        subscribe(relay, sink)
        state["r"] = relayed = Relayed(relay, sink, mint_paths(relay))
        yield relayed
    finally:
        relay.stop()  # a restarted relay is the same RelayProcess, with its new process
        sink.stop()


def _during(
    r: Relayed, stop: threading.Event, answers: list[Answer], workers: int
) -> list[threading.Thread]:
    """Providers keep posting from ``workers`` threads until ``stop`` is set."""

    def send() -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                answers.append(r.post(client))
                time.sleep(0.02)

    threads = [threading.Thread(target=send, daemon=True) for _ in range(workers)]
    for thread in threads:
        thread.start()
    return threads


def exercise(
    r: Relayed,
    cut: Callable[[], None],
    restore: Callable[[], None],
    *,
    outage_seconds: float,
    before: int = 10,
    workers: int = 3,
    restarts_relay: bool = False,
) -> tuple[dict[str, Any], list[str]]:
    """Break the store under ``r``, post callbacks, restore it, and measure the recovery.

    Before the outage ``before`` callbacks are acknowledged and their first delivery attempt
    fails (the subscriber is down), so their deliveries are pending across the outage; the
    subscriber comes back while the store is away. Returns the figures and the problems.
    """
    problems: list[str] = []
    with httpx.Client(timeout=30) as client:
        first = [r.post(client) for _ in range(before)]
    acked_before = {a.event_id for a in first if a.status == 200 and a.event_id}
    if len(acked_before) != before:
        problems.append(f"before the outage only {len(acked_before)} of {before} were acked")
    wait_until(lambda: r.sink.requests >= before, timeout=15, every=0.05)
    pending_at_cut = len(r.relay.all_deliveries("pending"))
    pid = r.relay.process.pid if r.relay.process else None

    cut()
    r.down = False
    stop, answers = threading.Event(), list[Answer]()
    threads = _during(r, stop, answers, workers)
    begun = time.monotonic()
    time.sleep(min(0.5, outage_seconds / 2))
    # On PostgreSQL this waits for the pool's timeout (5 s) before it answers.
    ready_status, reason = readyz(r.relay.base)
    time.sleep(max(0.0, outage_seconds - (time.monotonic() - begun)))
    stop.set()
    storage_back = time.monotonic()
    restore()
    for thread in threads:
        thread.join(timeout=30)

    # Recovery: a fresh callback every 100 ms until one is acknowledged.
    after: list[Answer] = []
    with httpx.Client(timeout=30) as client:

        def accepted_again() -> bool:
            after.append(r.post(client))
            return after[-1].status == 200

        recovered = wait_until(accepted_again, timeout=60)
    recovered_after = after[-1].at - storage_back if recovered else None
    ready_after, _ = readyz(r.relay.base)

    while_down = [a for a in answers if a.at < storage_back]
    came_back = [a for a in answers if a.at >= storage_back]
    refused = [a for a in while_down if a.status == 503 and a.code == "storage_unavailable"]
    ok_while_down = [a for a in while_down if 200 <= a.status < 300]
    odd = [a for a in while_down if a not in refused and a not in ok_while_down]
    acked = (
        acked_before
        | {a.event_id for a in came_back + after if a.status == 200 and a.event_id}
        | {a.event_id for a in ok_while_down if a.event_id}
    )
    resumed_in = time.monotonic()
    all_delivered = wait_until(lambda: acked <= set(accepted(r.sink)), timeout=60, every=0.2)
    resumed_in = time.monotonic() - resumed_in
    delivered_before = len(acked_before & set(accepted(r.sink)))
    stored = stored_events(r.relay)
    refused_tasks = {a.callback.task_id for a in refused}
    slipped = refused_tasks & set(stored.values())
    same_process = r.relay.process is not None and r.relay.process.pid == pid

    figures = {
        "outage (s)": round(storage_back - begun, 1),
        "callbacks during outage": len(while_down),
        "answered 503 storage_unavailable": len(refused),
        "2xx during outage": len(ok_while_down),
        "other answers during outage": len(odd),
        "/readyz during outage": f"{ready_status}: {reason}",
        "recovered after (s)": "never" if recovered_after is None else round(recovered_after, 2),
        "/readyz after": ready_after,
        "pending deliveries resumed": f"{delivered_before} of {len(acked_before)}"
        f" (pending at outage: {pending_at_cut})",
        "all acked delivered after (s)": round(resumed_in, 1),
        "relay restarted": "yes" if not same_process else "no",
    }
    if came_back:
        # Sent while the store was away, answered once it was back: a 2xx here was committed
        # after the return, which is allowed.
        figures["in flight at return, answered after"] = (
            f"{len(came_back)} (2xx: {sum(a.status == 200 for a in came_back)},"
            f" 503: {sum(a.status == 503 for a in came_back)})"
        )
    # A 2xx while the store is away is a lie unless its event was committed: a full disk can
    # still take a commit that fits in write-ahead log pages already allocated (after a
    # checkpoint restarted the log), and that callback is as safe as any other.
    unstored = [a for a in ok_while_down if a.event_id not in stored]
    if ok_while_down:
        figures["2xx during outage, committed"] = f"{len(ok_while_down) - len(unstored)}"
    problems += [
        f"{len(unstored)} callbacks answered 2xx while the store was away, not stored"
        for _ in unstored[:1]
    ]
    if not refused:
        problems.append("no callback was answered 503 during the outage")
    if odd:
        problems.append(f"unexpected answers during the outage: {sorted({a.status for a in odd})}")
    # A full disk can still take a small commit (the ping's) in write-ahead log pages already
    # allocated, as it took the committed callbacks above: /readyz must name the store only
    # when nothing could be committed.
    if (ready_status != 503 or "store" not in reason) and not ok_while_down:
        problems.append(
            f"/readyz during the outage did not name the store: {ready_status} {reason}"
        )
    if not recovered:
        problems.append("callbacks were not accepted again within 60 s of the store's return")
    if ready_after != 200:
        problems.append(f"/readyz after the outage answered {ready_after}")
    if not all_delivered:
        problems.append(f"{len(acked - set(accepted(r.sink)))} acked events not delivered")
    if slipped:
        problems.append(f"{len(slipped)} callbacks answered 503 were stored anyway")
    lost = acked - set(stored)
    if lost:
        problems.append(f"{len(lost)} acked events are not stored")
    if not same_process and not restarts_relay:
        problems.append("the relay process was restarted")
    if r.sink.errors:
        problems.append(f"subscriber saw bad deliveries: {r.sink.errors[:3]}")
    return figures, problems


def sqlite_disk_full(ctx: Context) -> list[Row]:
    """The relay's SQLite file on an 8 MB tmpfs that is filled up, then freed."""
    mnt = ctx.scratch("tmpfs")
    with _mounted("mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt), target=mnt):
        work = ctx.scratch("work")
        with _relayed(work, f"sqlite:///{mnt / 'relay.db'}") as r:
            filler = mnt / "filler"

            free_before_fill: list[int] = []
            filler_made: list[bool] = []

            def fill() -> None:
                stats = os.statvfs(mnt)
                free_before_fill.append(stats.f_bavail * stats.f_frsize)
                # Even creating the filler can meet ENOSPC when the file system is already
                # full: that is the state this step makes, so it is not an error here.
                with contextlib.suppress(OSError), open(filler, "wb") as out:
                    filler_made.append(True)
                    with contextlib.suppress(OSError):  # ENOSPC: the disk is full
                        while True:
                            out.write(b"\0" * 65536)
                            out.flush()
                    os.fsync(out.fileno())

            def free() -> None:
                filler.unlink(missing_ok=True)

            figures, problems = exercise(r, fill, free, outage_seconds=ctx.pick(2.0, 5.0))
            figures["free before the fill (KiB)"] = free_before_fill[0] // 1024
            if not filler_made and free_before_fill[0] > 1024 * 1024:
                problems.append(
                    f"the filler could not be created with {free_before_fill[0]} bytes free"
                )
    return [
        Row(
            SECTION,
            "SQLite: disk full (tmpfs filled), then freed",
            figures,
            "the database lives on an 8 MB tmpfs; a file fills it to ENOSPC, three providers "
            "keep posting 4 KB callbacks, /readyz is asked, then the file is deleted and a "
            "callback is posted every 100 ms until one is acknowledged; the same relay "
            "process throughout.",
            problems,
        )
    ]


@contextlib.contextmanager
def _ext4_loop(ctx: Context) -> Iterator[tuple[Path, Path]]:
    image, mnt = ctx.scratch("image") / "fs.img", ctx.scratch("ext4")
    with open(image, "wb") as out:
        out.truncate(32 * 1024 * 1024)
    made = _run("mkfs.ext4", "-q", "-F", "-O", "^has_journal", str(image))
    if made.returncode != 0:
        pytest.skip(f"mkfs.ext4 failed: {made.stderr}")
    with _mounted(
        "mount", "-o", "loop,errors=remount-ro", str(image), str(mnt), target=mnt
    ) as target:
        yield image, target


def sqlite_read_only(ctx: Context) -> list[Row]:
    """The relay's file system turned read-only by the kernel, under the running relay."""
    with _ext4_loop(ctx) as (image, mnt):
        source = _run("findmnt", "-no", "SOURCE", str(mnt)).stdout.strip()
        trigger = Path("/sys/fs/ext4") / Path(source).name / "trigger_fs_error"
        if not trigger.exists():
            pytest.skip(f"{trigger} is missing: cannot make ext4 fail on purpose here")
        work = ctx.scratch("work")
        with _relayed(work, f"sqlite:///{mnt / 'relay.db'}") as r:

            def turn_read_only() -> None:
                trigger.write_text("reliability suite: read-only file system\n")

            def remount_and_restart() -> None:
                # The kernel keeps an errored file system read-only until it is unmounted and
                # checked, and unmounting needs the relay's open files closed: restart it.
                r.relay.stop()
                _run("umount", str(mnt))
                _run("e2fsck", "-fy", str(image))
                _mount("mount", "-o", "loop,errors=remount-ro", str(image), str(mnt))
                r.relay.start()

            figures, problems = exercise(
                r,
                turn_read_only,
                remount_and_restart,
                outage_seconds=ctx.pick(2.0, 5.0),
                restarts_relay=True,
            )
    return [
        Row(
            SECTION,
            "SQLite: file system turned read-only (ext4 errors=remount-ro)",
            figures,
            "the database lives on ext4 on a loop device; /sys/fs/ext4/<dev>/trigger_fs_error "
            "makes the kernel remount it read-only under the running relay (EROFS on its open "
            "files; a chmod or `mount -o remount,ro` cannot, the first is ignored by root and "
            "the second refused while files are open for writing); the relay is then stopped, "
            "the file system checked and remounted, and the relay started again, since the "
            "kernel keeps it read-only until then.",
            problems,
        )
    ]


PG_VERSION_DIR = Path("/etc/postgresql")


def _pg_ctl(action: str) -> None:
    (version,) = [p.name for p in PG_VERSION_DIR.iterdir()]
    done = _run("pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action)
    if done.returncode != 0:
        raise RuntimeError(f"pg_ctlcluster {action} failed: {done.stderr}")


def _pg_ready() -> bool:
    return _run("pg_isready", "-h", "127.0.0.1", "-p", "5432", "-q").returncode == 0


def postgres_stopped(ctx: Context) -> list[Row]:
    """PostgreSQL away and back: the real server in the full form, a cut proxy in short."""
    from tests.test_store_contract import ThreadedProxy

    with ctx.postgres() as url:
        work = ctx.scratch("work")
        if ctx.full:
            stopped = {"yes": False}

            def stop_server() -> None:
                stopped["yes"] = True
                _pg_ctl("stop")

            def start_server() -> None:
                _pg_ctl("start")
                stopped["yes"] = not wait_until(_pg_ready, timeout=60, every=0.2)

            try:
                with _relayed(work, url) as r:
                    figures, problems = exercise(
                        r, stop_server, start_server, outage_seconds=3.0, workers=6
                    )
            finally:
                if stopped["yes"] or not _pg_ready():  # never leave the shared server down
                    with contextlib.suppress(RuntimeError):
                        _pg_ctl("start")
                    wait_until(_pg_ready, timeout=60, every=0.2)
            how = (
                "the relay connects to the real server, which is stopped (`pg_ctlcluster "
                "... stop`, fast mode: sessions are cut) while six providers keep posting, "
                "for about 3 s or until /readyz has answered (it waits 5 s for a "
                "connection), then started (back when pg_isready says so)."
            )
            scenario = "PostgreSQL: server stopped, then started"
        else:
            proxy = ThreadedProxy(url)
            try:
                with _relayed(work, proxy.url) as r:
                    figures, problems = exercise(
                        r, proxy.cut, proxy.restore, outage_seconds=2.0, workers=6
                    )
            finally:
                proxy.close()
            how = (
                "the relay reaches PostgreSQL through a TCP proxy that is cut (connections "
                "closed, new ones refused) while six providers keep posting, until /readyz "
                "has answered (it waits 5 s for a connection), then restored (the full "
                "form stops the real server instead)."
            )
            scenario = "PostgreSQL: connection cut (proxy), then restored"
    return [Row(SECTION, scenario, figures, how, problems)]


SCENARIOS = [sqlite_disk_full, sqlite_read_only, postgres_stopped]
