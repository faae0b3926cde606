"""The replay window and the durable cache of two-phase claims, through the
path the daemon uses (`aclaim` on an event loop, group commit, WAL fsync),
on real SQLite files, with real processes for crashes and races."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from mailseal import liveness
from mailseal.purge_clock import CLOCK_TRUST
from mailseal.replay import (CacheUnavailable, Claim, ClockWentBack, FromTheFuture, InFlight, Replayed,
                             ReplayCache, ReplayError, TooOld, Window)

from .conftest import ROOT

NOW = 1_800_000_000
DAY = 86400
WINDOW = Window(max_age=7 * DAY, max_skew=3600)
SERIAL = "5e" * 16
TAG = "a1" * 32  # the hex of a header MAC
FORGED_TAG = "f0" * 32


class Clocks:
    """The wall clock and the never-stepped elapsed clock, moved by the test."""

    def __init__(self, wall: float = NOW) -> None:
        self.wall, self.elapsed = float(wall), 5000.0

    def advance(self, seconds: float) -> None:  # time really passes
        self.wall += seconds
        self.elapsed += seconds


def open_cache(path, clocks: Clocks | None = None, **options) -> ReplayCache:
    clocks = clocks or Clocks()
    options.setdefault("heartbeat", None)
    return ReplayCache(path, WINDOW, clock=lambda: clocks.wall, elapsed=lambda: clocks.elapsed, **options)


@pytest.fixture()
def clocks():
    return Clocks()


@pytest.fixture()
def path(tmp_path):
    return tmp_path / "replay.sqlite3"


@pytest.fixture()
def cache(path, clocks):
    c = open_cache(path, clocks)
    yield c
    c.close()


def claim(cache: ReplayCache, recipient="bob@b.test", serial=SERIAL, tag=TAG, date=NOW) -> Claim:
    return asyncio.run(cache.aclaim(recipient, serial, tag, date))


def stored(path) -> set[tuple]:
    with sqlite3.connect(path) as db:
        return set(db.execute("SELECT recipient, serial, tag, state FROM claims"))


# --- the window --------------------------------------------------------------------------

def test_window_bounds_and_which_refusals_are_temporary():
    WINDOW.check(NOW, NOW)
    WINDOW.check(NOW - 7 * DAY, NOW)
    WINDOW.check(NOW + 3600, NOW)
    with pytest.raises(TooOld):
        WINDOW.check(NOW - 7 * DAY - 1, NOW)
    with pytest.raises(FromTheFuture):
        WINDOW.check(NOW + 3601, NOW)
    # A clock that is off gets fixed: the MTA must retry, not bounce.
    assert FromTheFuture.temporary and InFlight.temporary and ClockWentBack.temporary
    assert CacheUnavailable.temporary and issubclass(CacheUnavailable, ReplayError)
    assert not Replayed.temporary and not TooOld.temporary


def test_dated_outside_the_window_is_refused_and_nothing_is_stored(cache, path):
    with pytest.raises(TooOld):
        claim(cache, date=NOW - 7 * DAY - 1)
    with pytest.raises(FromTheFuture):
        claim(cache, date=NOW + 3601)
    assert stored(path) == set()


# --- claims ------------------------------------------------------------------------------

def test_a_delivered_claim_refuses_the_replay_per_recipient(cache, path):
    cache.delivered([claim(cache)])
    with pytest.raises(Replayed):
        claim(cache)
    claim(cache, recipient="carol@b.test")  # another mailbox of the same bundle
    assert stored(path) == {("bob@b.test", SERIAL, TAG, "delivered"), ("carol@b.test", SERIAL, TAG, "pending")}


def test_a_forger_who_saw_the_serial_cannot_pre_empt_the_real_bundle(cache):
    # The attacker delivers a forgery with the real serial first...
    cache.delivered([claim(cache, tag=FORGED_TAG)])
    # ...and the real bundle (its own header MAC) is still accepted, once.
    cache.delivered([claim(cache, tag=TAG)])
    with pytest.raises(Replayed):
        claim(cache, tag=TAG)


def test_release_after_failed_delivery_allows_the_retry(cache, path):
    cache.release([claim(cache)])
    assert stored(path) == set()
    cache.delivered([claim(cache)])
    with pytest.raises(Replayed):
        claim(cache)


def test_a_pending_claim_of_a_live_instance_is_in_flight(cache, path, clocks):
    first = claim(cache)
    with pytest.raises(InFlight):
        claim(cache)  # the same process: alive
    other = open_cache(path, clocks)  # a second worker of this host
    try:
        with pytest.raises(InFlight):
            claim(other)
        cache.delivered([first])
        with pytest.raises(Replayed):
            claim(other)
    finally:
        other.close()


def test_the_claim_is_on_disk_before_aclaim_returns(path, clocks):
    seen_at_fsync = []

    def fsync(fd: int) -> None:
        with sqlite3.connect(path) as db:  # what a reader sees when the disk is made to hold it
            seen_at_fsync.append(set(db.execute("SELECT serial, state FROM claims")))
        os.fsync(fd)

    c = open_cache(path, clocks, fsync=fsync)
    try:
        seen_at_fsync.clear()
        claim(c)
        assert seen_at_fsync and (SERIAL, "pending") in seen_at_fsync[-1]
    finally:
        c.close()


class HeldFsync:
    """An fsync that, once armed, counts its calls, says when one starts and waits for `go`."""

    def __init__(self) -> None:
        self.entered, self.go = threading.Event(), threading.Event()
        self.armed, self.calls = False, 0

    def __call__(self, fd: int) -> None:
        if self.armed:
            self.calls += 1
            self.entered.set()
            self.go.wait(30)
        os.fsync(fd)

    async def started(self) -> None:
        """On the event loop: until an armed fsync has started (waited for off the loop)."""
        await asyncio.get_running_loop().run_in_executor(None, self.entered.wait, 30)


@pytest.fixture()
def held(path, clocks):
    """(the fsync, a cache that uses it); the fsync is armed."""
    fsync = HeldFsync()
    c = open_cache(path, clocks, fsync=fsync)
    fsync.armed = True
    yield fsync, c
    fsync.go.set()
    c.close()


def test_claims_arriving_during_an_fsync_share_the_next_one(held, path):
    fsync, c = held

    async def scenario():
        first = asyncio.ensure_future(c.aclaim("a@b.test", SERIAL, TAG, NOW))
        await fsync.started()
        rest = [asyncio.ensure_future(c.aclaim(f"u{i}@b.test", SERIAL, TAG, NOW)) for i in range(49)]
        await asyncio.sleep(0)
        fsync.go.set()
        return await asyncio.gather(first, *rest)

    claims = asyncio.run(scenario())
    assert len(claims) == 50 and all(isinstance(x, Claim) for x in claims)
    assert fsync.calls == 2  # one for the first claim, one for the 49 that waited
    assert len(stored(path)) == 50


def test_a_failed_fsync_undoes_the_claims_so_the_retry_is_accepted(path, clocks):
    failing = [True]

    def fsync(fd: int) -> None:
        if failing[0]:
            raise OSError(5, "Input/output error")
        os.fsync(fd)

    failing[0] = False
    c = open_cache(path, clocks, fsync=fsync)
    try:
        failing[0] = True
        with pytest.raises(CacheUnavailable) as refused:
            claim(c)
        assert refused.value.temporary and "fsync failed" in str(refused.value)
        assert stored(path) == set()
        failing[0] = False
        c.delivered([claim(c)])  # the MTA's retry: not a replay, not in flight
    finally:
        c.close()


def test_delivered_is_written_at_once_without_waiting_for_the_disk(held, path, clocks):
    fsync, c = held
    fsync.go.set()
    other = open_cache(path, clocks)

    async def scenario():
        done = await c.aclaim("bob@b.test", SERIAL, TAG, NOW)
        fsync.calls = 0
        c.delivered([done])
        c.release([done])  # a release after delivered changes nothing
        await asyncio.sleep(0)  # one turn of the loop: the mark is written
        with pytest.raises(Replayed):  # another worker sees it delivered, not in flight
            await other.aclaim("bob@b.test", SERIAL, TAG, NOW)

    try:
        asyncio.run(scenario())
        assert fsync.calls == 0  # a delivered mark does not wait for an fsync
    finally:
        other.close()


def test_delivered_just_before_the_daemon_stops_is_kept_by_close(path, clocks):
    c = open_cache(path, clocks)

    async def scenario():
        c.delivered([await c.aclaim("bob@b.test", SERIAL, TAG, NOW)])
        c.close()  # as `serve` does, on the loop, before the mark's turn came

    asyncio.run(scenario())
    assert stored(path) == {("bob@b.test", SERIAL, TAG, "delivered")}
    assert_replayed_after_a_restart(path, clocks)


def _trigger(path, sql: str | None) -> None:
    """A database that refuses some writes (as a failing disk or a full one would)."""
    with sqlite3.connect(path) as db:
        db.execute("DROP TRIGGER IF EXISTS trouble")
        if sql:
            db.execute(f"CREATE TRIGGER trouble {sql} BEGIN SELECT RAISE(ABORT, 'disk trouble'); END")


def test_a_delivered_mark_that_fails_is_written_with_the_next_batch(cache, path):
    first = claim(cache)
    _trigger(path, "BEFORE UPDATE ON claims")
    cache.delivered([first])
    assert stored(path) == {("bob@b.test", SERIAL, TAG, "pending")}
    _trigger(path, None)
    claim(cache, recipient="carol@b.test")
    assert ("bob@b.test", SERIAL, TAG, "delivered") in stored(path)


@pytest.mark.parametrize("retried_by", ["next batch", "heartbeat"])
def test_a_release_that_fails_is_tried_again(path, clocks, retried_by):
    c = open_cache(path, clocks, heartbeat=0.01 if retried_by == "heartbeat" else None)
    try:
        first = claim(c)
        _trigger(path, "BEFORE DELETE ON claims")
        c.release([first])
        assert stored(path) == {("bob@b.test", SERIAL, TAG, "pending")}
        _trigger(path, None)
        if retried_by == "next batch":
            claim(c, recipient="carol@b.test")
        else:
            deadline = time.monotonic() + 30
            while ("bob@b.test", SERIAL, TAG, "pending") in stored(path) and time.monotonic() < deadline:
                time.sleep(0.01)
        assert ("bob@b.test", SERIAL, TAG, "pending") not in stored(path)
        claim(c)  # the MTA's retry
    finally:
        c.close()


def test_a_claim_needs_the_tag(cache):
    with pytest.raises(ValueError):
        claim(cache, tag="")


def assert_replayed_after_a_restart(path, clocks) -> None:
    again = open_cache(path, clocks)
    try:
        with pytest.raises(Replayed):
            claim(again)
    finally:
        again.close()


def test_the_cache_survives_a_restart(path, clocks):
    first = open_cache(path, clocks)
    first.delivered([claim(first)])
    first.close()
    assert_replayed_after_a_restart(path, clocks)


def test_unusable_or_newer_cache_is_an_error_not_a_pass(tmp_path):
    bad = tmp_path / "r.sqlite3"
    bad.write_bytes(b"not a database" * 100)
    with pytest.raises(CacheUnavailable):
        ReplayCache(bad, WINDOW, heartbeat=None)
    newer = tmp_path / "newer.sqlite3"
    with sqlite3.connect(newer) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(CacheUnavailable, match="newer mailseal"):
        ReplayCache(newer, WINDOW, heartbeat=None)


# --- cancellation --------------------------------------------------------------------------

def test_a_caller_cancelled_during_the_fsync_leaves_no_pending_claim(held, path):
    """The client disconnects while its claim is being made durable: the
    MTA's retry must find nothing in its way."""
    fsync, c = held

    async def scenario():
        task = asyncio.ensure_future(c.aclaim("bob@b.test", SERIAL, TAG, NOW))
        await fsync.started()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        fsync.go.set()
        # the retry, queued behind the abandoned batch
        return await c.aclaim("bob@b.test", SERIAL, TAG, NOW)

    assert asyncio.run(scenario()) == Claim("bob@b.test", SERIAL, TAG, NOW)
    assert stored(path) == {("bob@b.test", SERIAL, TAG, "pending")}


def test_a_caller_cancelled_before_its_batch_is_written_never_claims(held, path):
    fsync, c = held

    async def scenario():
        first = asyncio.ensure_future(c.aclaim("alice@b.test", SERIAL, TAG, NOW))
        await fsync.started()
        queued = asyncio.ensure_future(c.aclaim_all(["bob@b.test", "carol@b.test"], SERIAL, TAG, NOW))
        await asyncio.sleep(0)  # it is queued behind the batch being synced
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        fsync.go.set()
        await first

    asyncio.run(scenario())
    assert stored(path) == {("alice@b.test", SERIAL, TAG, "pending")}


def test_a_caller_cancelled_just_after_its_claims_were_answered_releases_them(path, clocks):
    """The narrowest window: the claims are durable and answered, and the
    caller is cancelled before it resumes to take them."""
    loop_and_task = []

    def fsync(fd: int) -> None:
        os.fsync(fd)
        if loop_and_task:
            loop, task = loop_and_task
            # Three turns of the loop: after the batch's answers are set, before the caller resumes.
            loop.call_soon_threadsafe(lambda: loop.call_soon(lambda: loop.call_soon(task.cancel)))

    c = open_cache(path, clocks, fsync=fsync)

    async def scenario():
        task = asyncio.ensure_future(c.aclaim_all(["bob@b.test", "carol@b.test"], SERIAL, TAG, NOW))
        loop_and_task.extend([asyncio.get_running_loop(), task])
        with pytest.raises(asyncio.CancelledError):
            await task
        loop_and_task.clear()
        return await c.aclaim_all(["bob@b.test", "carol@b.test"], SERIAL, TAG, NOW)

    try:
        assert all(isinstance(x, Claim) for x in asyncio.run(scenario()))
    finally:
        c.close()


# --- instances: crash, restart, other nodes ---------------------------------------------------

HOLDER = r"""
import asyncio, sys
from mailseal.replay import ReplayCache, Window
cache = ReplayCache(sys.argv[1], Window(86400, 3600))
asyncio.run(cache.aclaim("bob@b.test", sys.argv[2], sys.argv[3], int(sys.argv[4])))
print("claimed", flush=True)
sys.stdin.read()
"""


def test_a_pending_claim_of_a_killed_process_is_taken_over_at_once(path):
    """SIGKILL between claim and relay: the retry proceeds (a duplicate at
    worst), without waiting for the heartbeat to go stale."""
    date = int(time.time())
    with subprocess.Popen([sys.executable, "-c", HOLDER, str(path), SERIAL, TAG, str(date)],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, env={"PYTHONPATH": str(ROOT)}) as holder:
        try:
            assert holder.stdout.readline() == b"claimed\n"
            retry = ReplayCache(path, WINDOW, heartbeat=None)
            try:
                with pytest.raises(InFlight):  # alive: still delivering
                    asyncio.run(retry.aclaim("bob@b.test", SERIAL, TAG, date))
                holder.send_signal(signal.SIGKILL)
                holder.wait(30)
                taken = asyncio.run(retry.aclaim("bob@b.test", SERIAL, TAG, date))
                retry.delivered([taken])
                with pytest.raises(Replayed):
                    asyncio.run(retry.aclaim("bob@b.test", SERIAL, TAG, date))
            finally:
                retry.close()
        finally:
            holder.kill()


def test_a_closed_instance_leaves_its_pending_claims_to_the_retry(path, clocks):
    gone = open_cache(path, clocks)
    claim(gone)
    gone.close()
    c = open_cache(path, clocks)
    try:
        c.delivered([claim(c)])
        assert stored(path) == {("bob@b.test", SERIAL, TAG, "delivered")}
    finally:
        c.close()


def test_another_nodes_claim_is_in_flight_until_its_heartbeat_is_stale(path):
    here_clocks, there_clocks = Clocks(), Clocks()
    there = open_cache(path, there_clocks, host="node-b")
    here = open_cache(path, here_clocks, host="node-a")
    try:
        theirs = claim(there)
        here_clocks.advance(liveness.INSTANCE_TIMEOUT)
        with pytest.raises(InFlight):
            claim(here)
        here_clocks.advance(1)  # node-b has not beaten for longer than the timeout
        ours = claim(here)
        there.release([theirs])  # the old holder's late release must not undo the takeover
        assert stored(path) == {("bob@b.test", SERIAL, TAG, "pending")}
        here.delivered([ours])
        with pytest.raises(Replayed):
            claim(there)
    finally:
        here.close()
        there.close()


def test_the_heartbeat_keeps_a_busy_node_alive(path):
    shared = Clocks()
    there = open_cache(path, shared, host="node-b", heartbeat=0.01)
    here = open_cache(path, shared, host="node-a")
    try:
        claim(there)
        shared.advance(10 * liveness.INSTANCE_TIMEOUT)
        deadline = time.monotonic() + 30
        with sqlite3.connect(path) as db:
            while time.monotonic() < deadline and db.execute(
                    "SELECT heartbeat FROM instances WHERE id = ?", (there.instance,)).fetchone()[0] < shared.wall:
                time.sleep(0.01)
        with pytest.raises(InFlight):
            claim(here, date=int(shared.wall))
    finally:
        here.close()
        there.close()


def test_liveness_on_this_host_is_the_pid_and_its_start():
    me = liveness.this_process()
    assert liveness.alive(me, NOW, NOW, me.host)
    assert not liveness.alive(me, NOW - liveness.INSTANCE_TIMEOUT - 1, NOW, me.host)
    reused_pid = liveness.Process(me.host, me.pid, me.start + "0")  # same pid, another process
    assert not liveness.alive(reused_pid, NOW, NOW, me.host)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not liveness.alive(liveness.Process(me.host, child.pid, me.start), NOW, NOW, me.host)
    assert liveness.alive(liveness.Process("elsewhere", child.pid, ""), NOW, NOW, me.host)
    assert not liveness.alive(None, NOW, NOW, me.host)


RACER = r"""
import asyncio, json, sys, time
from mailseal.replay import Claim, InFlight, Replayed, ReplayCache, Window
cache = ReplayCache(sys.argv[1], Window(86400, 3600))
count, tag = int(sys.argv[2]), sys.argv[3]
print("ready", flush=True)
sys.stdin.readline()  # the barrier: both processes are ready
async def race():
    wins, refusals = [], set()
    for start in range(0, count, 25):
        serials = [f"{i:032x}" for i in range(start, start + 25)]
        outcomes = await asyncio.gather(*(cache.aclaim("bob@b.test", s, tag, int(time.time())) for s in serials),
                                        return_exceptions=True)
        for serial, outcome in zip(serials, outcomes):
            if isinstance(outcome, Claim):
                cache.delivered([outcome])
                wins.append(serial)
            else:
                refusals.add(type(outcome).__name__)
    return wins, sorted(refusals)
print(json.dumps(asyncio.run(race())))
"""


def test_two_processes_racing_on_the_same_serials_exactly_one_wins_each(path):
    ReplayCache(path, WINDOW, heartbeat=None).close()
    count = 400
    procs = [subprocess.Popen([sys.executable, "-c", RACER, str(path), str(count), TAG], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, env={"PYTHONPATH": str(ROOT)}) for _ in range(2)]
    try:
        for p in procs:
            assert p.stdout.readline() == b"ready\n"
        for p in procs:
            p.stdin.write(b"go\n")
            p.stdin.flush()
        results = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.communicate()
    (wins_a, refused_a), (wins_b, refused_b) = results
    assert not set(wins_a) & set(wins_b)
    assert sorted(wins_a + wins_b) == [f"{i:032x}" for i in range(count)]
    assert set(refused_a + refused_b) <= {"Replayed", "InFlight"}


# --- forgetting: purge, expiry, clock jumps -----------------------------------------------------

def _delivered(cache, **kw) -> None:
    cache.delivered([claim(cache, **kw)])


def test_purge_keeps_claims_in_their_window_and_drops_expired_ones(cache, path, clocks):
    _delivered(cache, serial="01" * 16, date=NOW)
    clocks.advance(3 * DAY)
    _delivered(cache, serial="02" * 16, date=int(clocks.wall))
    clocks.advance(7 * DAY)  # the first is 10 days old, the second 7
    cache.purge()
    assert stored(path) == {("bob@b.test", "02" * 16, TAG, "delivered")}
    with pytest.raises(Replayed):
        claim(cache, serial="02" * 16, date=NOW + 3 * DAY)


def test_claims_are_purged_as_they_are_written(path, clocks):
    c = open_cache(path, clocks, purge_every=3)
    try:
        _delivered(c, serial="01" * 16, date=NOW)
        clocks.advance(7 * DAY + 2)
        _delivered(c, serial="02" * 16, date=NOW + 3 * DAY)
        assert len(stored(path)) == 2
        _delivered(c, serial="03" * 16, date=int(clocks.wall))  # the third claim: a purge
        assert stored(path) == {("bob@b.test", "02" * 16, TAG, "delivered"),
                                ("bob@b.test", "03" * 16, TAG, "delivered")}
    finally:
        c.close()


@pytest.mark.parametrize("before_expiry", [1, 0])
def test_a_replay_at_the_end_of_the_window_is_refused_after_a_purge(cache, clocks, before_expiry):
    _delivered(cache)
    clocks.advance(WINDOW.max_age - before_expiry)  # the last seconds the window accepts the bundle
    cache.purge()
    with pytest.raises(Replayed):
        claim(cache)
    clocks.advance(before_expiry + 1)
    with pytest.raises(TooOld):
        claim(cache)


def test_a_wall_clock_jump_forward_does_not_purge_claims_in_their_window(cache, path, clocks):
    _delivered(cache)
    clocks.wall += 30 * DAY  # stepped forward; only seconds really passed
    clocks.elapsed += 10
    cache.purge()
    assert stored(path) == {("bob@b.test", SERIAL, TAG, "delivered")}
    clocks.wall -= 30 * DAY  # and set right again
    with pytest.raises(Replayed):
        claim(cache)


def test_a_forward_step_that_lasts_is_believed(cache, path, clocks):
    _delivered(cache)
    clocks.wall += 30 * DAY  # a machine booted with a stale clock, then fixed by NTP
    cache.purge()
    assert len(stored(path)) == 1
    clocks.advance(CLOCK_TRUST)
    cache.purge()
    assert stored(path) == set()


def test_a_clock_stepped_back_after_a_purge_does_not_reopen_the_window(cache, path, clocks):
    _delivered(cache)
    clocks.advance(10 * DAY)
    cache.purge()  # rightly forgotten: the window refuses it now
    assert stored(path) == set()
    clocks.wall -= 5 * DAY  # stepped back: by this clock the bundle is in its window again
    with pytest.raises(ClockWentBack) as refused:
        claim(cache)
    assert refused.value.temporary
    cache.purge()  # a purge by the stepped-back clock does not lower the mark
    with pytest.raises(ClockWentBack):
        claim(cache)
    claim(cache, serial="03" * 16, date=int(clocks.wall))  # mail sealed now still passes


def test_purge_forgets_dead_instances_that_hold_nothing(path, clocks):
    holder, idle = open_cache(path, clocks), open_cache(path, clocks)
    claim(holder)
    clocks.advance(liveness.INSTANCE_TIMEOUT + 1)
    fresh = open_cache(path, clocks)
    clocks.advance(1)
    fresh.purge()
    with sqlite3.connect(path) as db:
        left = {row[0] for row in db.execute("SELECT id FROM instances")}
    assert left == {holder.instance, fresh.instance}
    for x in (holder, idle, fresh):
        x.close()


# --- the schema of earlier releases ---------------------------------------------------------------

def test_a_legacy_cache_is_migrated_and_its_rows_refuse_any_tag(path, clocks):
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE seen (recipient TEXT NOT NULL, serial TEXT NOT NULL, expires INTEGER NOT NULL, "
                   "PRIMARY KEY (recipient, serial)) WITHOUT ROWID")
        db.execute("INSERT INTO seen VALUES ('bob@b.test', ?, ?)", (SERIAL, NOW + WINDOW.max_age + 1))
    c = open_cache(path, clocks)
    try:
        with sqlite3.connect(path) as db:
            assert db.execute("PRAGMA user_version").fetchone()[0] == 2
            assert not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'seen'").fetchone()
        for tag in (TAG, FORGED_TAG):  # delivered before the upgrade, whatever its MAC
            with pytest.raises(Replayed):
                claim(c, tag=tag)
        claim(c, serial="04" * 16)
        clocks.advance(WINDOW.max_age)  # still in the window: the migrated row is kept by a purge
        c.purge()
        with pytest.raises(Replayed):
            claim(c)
    finally:
        c.close()
