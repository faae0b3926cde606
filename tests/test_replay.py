"""The replay window and the durable cache, on a real SQLite file."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mailseal.replay import CacheUnavailable, FromTheFuture, Replayed, ReplayCache, TooOld, Window

from .conftest import ROOT

NOW = 1_800_000_000
WINDOW = Window(max_age=7 * 86400, max_skew=3600)


@pytest.fixture()
def cache(tmp_path):
    c = ReplayCache(tmp_path / "replay.sqlite3", WINDOW, clock=lambda: NOW)
    yield c
    c.close()


def test_window():
    WINDOW.check(NOW, NOW)
    WINDOW.check(NOW - 7 * 86400, NOW)
    WINDOW.check(NOW + 3600, NOW)
    with pytest.raises(TooOld):
        WINDOW.check(NOW - 7 * 86400 - 1, NOW)
    with pytest.raises(FromTheFuture):
        WINDOW.check(NOW + 3601, NOW)


def test_second_claim_is_a_replay_per_recipient(cache):
    cache.claim("bob@b.test", "a" * 32, NOW)
    with pytest.raises(Replayed):
        cache.claim("bob@b.test", "a" * 32, NOW)
    cache.claim("carol@b.test", "a" * 32, NOW)  # another recipient of the same bundle


def test_release_after_failed_delivery_allows_the_retry(cache):
    cache.claim("bob@b.test", "b" * 32, NOW)
    cache.release("bob@b.test", "b" * 32)
    cache.claim("bob@b.test", "b" * 32, NOW)


def test_cache_survives_a_restart(tmp_path):
    first = ReplayCache(tmp_path / "r.sqlite3", WINDOW, clock=lambda: NOW)
    first.claim("bob@b.test", "c" * 32, NOW)
    first.close()
    again = ReplayCache(tmp_path / "r.sqlite3", WINDOW, clock=lambda: NOW)
    with pytest.raises(Replayed):
        again.claim("bob@b.test", "c" * 32, NOW)
    again.close()


def test_expired_entries_are_purged(tmp_path):
    now = [NOW]
    c = ReplayCache(tmp_path / "r.sqlite3", WINDOW, clock=lambda: now[0])
    c.claim("bob@b.test", "d" * 32, NOW)
    now[0] = NOW + 7 * 86400 + 10
    assert c.purge() == 1
    c.close()


def test_unusable_cache_is_an_error_not_a_pass(tmp_path):
    bad = tmp_path / "r.sqlite3"
    bad.write_bytes(b"not a database" * 100)
    with pytest.raises(CacheUnavailable):
        ReplayCache(bad, WINDOW)


RACER = r"""
import sys, time
from mailseal.replay import ReplayCache, Window, Replayed
cache = ReplayCache(sys.argv[1], Window(86400, 3600))
start = float(sys.argv[2])
while time.time() < start:
    pass
wins = 0
for i in range(200):
    try:
        cache.claim("bob@b.test", f"{i:032x}", int(time.time()))
        wins += 1
    except Replayed:
        pass
print(wins)
"""


def test_two_processes_racing_on_the_same_serials_exactly_one_wins_each(tmp_path):
    import time

    path = tmp_path / "race.sqlite3"
    ReplayCache(path, WINDOW).close()
    start = time.time() + 1.0
    procs = [subprocess.Popen([sys.executable, "-c", RACER, str(path), str(start)], stdout=subprocess.PIPE,
                              env={"PYTHONPATH": str(ROOT)}) for _ in range(2)]
    wins = [int(p.communicate(timeout=60)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sum(wins) == 200
