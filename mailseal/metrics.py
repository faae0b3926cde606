"""Prometheus metrics: what the listeners count, and what a scrape reads.

Per message the handlers call `Metrics.message` once: a few counter
increments on label children bound in advance, and one histogram
observation. Labels come from small fixed sets (direction, decision, refusal
reason): never an address, a key or anything a sender chooses.

Read at scrape time, in the process that serves the endpoint: the replay
cache's size and the seconds until the soonest key expiry, per scope (our
own identities, partners' keys), from the SQLite files themselves.

With `workers > 1` the supervisor serves the one endpoint: the workers count
in prometheus-client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR, one set
of files per worker, set before the workers start) and a scrape adds them up,
so counters keep counting across a worker's replacement.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from pathlib import Path

DIRECTIONS = ("outbound", "forward", "inbound")  # forward: [outbound] forward_listen
DECISIONS = ("sealed", "clear", "opened", "refused", "quarantined", "deferred", "shadow")
REASONS = ("policy-require", "bad-address", "keystore-unavailable", "replayed", "too-old", "from-the-future",
           "tampered", "malformed", "no-local-key", "no-matching-key", "not-bound", "version-1-refused",
           "replay-cache-unavailable", "unsigned", "signature-invalid", "signer-unknown", "signer-mismatch",
           "not-sealed", "signer-key-revoked", "signature-downgrade", "sender-unclear", "other")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def decision_of(decision: str, outcome: dict) -> tuple[str, str | None]:
    """(the decision label, the refusal reason or None) of one logged decision string."""
    if decision.startswith("shadow:"):
        return "shadow", None
    if decision.startswith("refused:"):
        reason = decision[len("refused:"):]
        reason = reason if reason in REASONS else "other"
        quarantined = outcome and all(r.ok for r in outcome.values())
        return ("quarantined" if quarantined else "refused"), reason
    if decision == "opened":
        return "opened", None
    parts = set(decision.split("+"))
    if parts & {"pq", "classic"}:
        return "sealed", None
    if any(p.startswith("clear") for p in parts):
        return "clear", None
    return "deferred", None


class NullMetrics:
    """Metrics off (no [metrics] listen): nothing is counted."""

    def message(self, direction: str, label: str, reason: str | None, outcome: dict, seconds: float) -> None:
        pass

    def rcpt_refused(self, direction: str, reason: str) -> None:
        pass


class Metrics(NullMetrics):
    def __init__(self, registry=None) -> None:
        from prometheus_client import REGISTRY, Counter, Histogram

        registry = registry if registry is not None else REGISTRY
        messages = Counter("mailseal_messages", "Messages by direction and decision", ["direction", "decision"],
                           registry=registry)
        refusals = Counter("mailseal_refusals", "Refused recipients or messages by reason (quarantined included)",
                           ["direction", "reason"], registry=registry)
        errors = Counter("mailseal_next_hop_errors", "Messages the next hop did not accept (4xx, 5xx, unreachable)",
                         ["direction", "class"], registry=registry)
        latency = Histogram("mailseal_message_seconds", "Time from the end of DATA to our reply",
                            ["direction"], buckets=LATENCY_BUCKETS, registry=registry)
        # Bound once: the per-message path is a dictionary look-up and an increment.
        self._messages = {(d, k): messages.labels(d, k) for d in DIRECTIONS for k in DECISIONS}
        self._refusals = {(d, r): refusals.labels(d, r) for d in DIRECTIONS for r in REASONS}
        self._errors = {(d, c): errors.labels(d, c) for d in DIRECTIONS for c in ("4xx", "5xx")}
        self._latency = {d: latency.labels(d) for d in DIRECTIONS}

    def message(self, direction: str, label: str, reason: str | None, outcome: dict, seconds: float) -> None:
        """One message: `label` and `reason` from decision_of."""
        self._messages[direction, label].inc()
        if reason is not None:
            self._refusals[direction, reason].inc()
        self._latency[direction].observe(seconds)
        if label != "refused" and outcome:
            failed = [r for r in outcome.values() if not r.ok]
            if failed:
                self._errors[direction, "4xx" if any(r.temporary for r in failed) else "5xx"].inc()

    def rcpt_refused(self, direction: str, reason: str) -> None:
        self._refusals[direction, reason if reason in REASONS else "other"].inc()


class StateCollector:
    """Read at each scrape: replay cache size, seconds to the soonest key expiry."""

    def __init__(self, keystore: Path, replay_cache: Path | None, clock=time.time) -> None:
        self.keystore, self.replay_cache, self.clock = keystore, replay_cache, clock

    @staticmethod
    def _query(path: Path, sql: str, args: tuple = ()) -> list[tuple]:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1.0)
        try:
            return db.execute(sql, args).fetchall()
        finally:
            db.close()

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        if self.replay_cache is not None:
            size = GaugeMetricFamily("mailseal_replay_cache_entries", "Entries in the replay cache")
            try:
                size.add_metric([], self._query(self.replay_cache, "SELECT count(*) FROM claims")[0][0])
            except sqlite3.Error:
                pass  # /health says why
            yield size
        now = self.clock()
        expiry = GaugeMetricFamily("mailseal_key_expiry_seconds",
                                   "Seconds until the soonest expiry of a usable key (local: our identities, "
                                   "remote: partners' keys)", labels=["scope"])
        try:
            rows = self._query(self.keystore, "SELECT scope, min(expires) FROM keys WHERE revoked IS NULL "
                               "AND retired IS NULL AND expires IS NOT NULL AND expires > ? GROUP BY scope",
                               (int(now),))
        except sqlite3.Error:
            rows = []
        for scope, soonest in rows:
            expiry.add_metric([scope], soonest - now)
        yield expiry


def prepare_multiprocess(state_dir: Path, port: int) -> Path:
    """A fresh directory for the workers' counters, named before prometheus_client is imported
    (one per endpoint: two instances that share a state directory never share an endpoint)."""
    directory = Path(state_dir) / f"metrics-{port}"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True, mode=0o700)
    os.environ[MULTIPROC_ENV] = str(directory)
    return directory


def registry_for(cfg, multiprocess: bool):
    """The registry a scrape reads: this process's metrics, or every worker's."""
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    if multiprocess:
        from prometheus_client import multiprocess as mp

        mp.MultiProcessCollector(registry)
    replay = cfg.server.state_dir / "replay.sqlite3" if cfg.inbound is not None else None
    registry.register(StateCollector(cfg.keystore.path, replay))
    return registry
