"""`mailseal serve` and a keystore changed without the master key (tests/tamper.py).

At start: refused, one line, exit 2. While running: every recipient is
answered 451 4.3.0 until the keystore verifies again; nothing is sealed to
the attacker's key and nothing leaves in clear.
"""

from __future__ import annotations

import sqlite3

import pytest

from mailseal import age, bundle, config
from mailseal.keystore import open_keystore

from . import tamper
from .bundle_tools import decoded_parts
from .conftest import run_cli
from .harness import Daemon, Sink, free_port, smtp_transaction

MESSAGE = (b"From: Alice <alice@a.test>\r\nTo: Bob <bob@b.test>, Carol <carol@b.test>\r\n"
           b"Subject: the plan\r\nMessage-ID: <plan@a.test>\r\n\r\nThe secret plan.\r\n")
UNAVAILABLE = (451, b"4.3.0 Keystore unavailable, try again later")


def _gateway(directory, next_hop_port: int) -> tuple[Daemon, dict]:
    daemon = Daemon(directory, outbound={"next_hop": f"127.0.0.1:{next_hop_port}"})
    with open_keystore(config.load(daemon.config).keystore, actor="test") as store:
        return daemon, tamper.victim(store)


@pytest.mark.parametrize("attack, problem", tamper.BRIEF_ATTACKS, ids=tamper.ids(tamper.BRIEF_ATTACKS))
def test_the_daemon_does_not_start_on_a_tampered_keystore(tmp_path, attack, problem):
    daemon, victim = _gateway(tmp_path, free_port())
    db = daemon.dir / "state" / "keystore.sqlite3"
    attack(db, victim)
    result = run_cli("-c", str(daemon.config), "serve")  # exits at once (or the test times out)
    err = result.stderr.decode()
    assert result.returncode == 2, err
    refusal = f"mailseal: error: keystore {db} was changed without the master key: {problem}"
    assert err.splitlines()[-1] == refusal and err.count("without the master key") == 1, err
    assert "Traceback" not in err


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    with Sink() as sink:
        daemon, victim = _gateway(tmp_path_factory.mktemp("tamper"), sink.port)
        daemon.start()
        try:
            yield {"daemon": daemon, "victim": victim, "sink": sink,
                   "db": daemon.dir / "state" / "keystore.sqlite3"}
        finally:
            daemon.stop()
            assert "Traceback" not in daemon.log_text(), daemon.log_text()


def _send(running, rcpts):
    running["sink"].messages.clear()
    return smtp_transaction(running["daemon"].outbound_port, "alice@a.test", rcpts, MESSAGE)


def _sealed_for_bob_alone(running, data: bytes) -> None:
    key, payload = decoded_parts(data)
    assert age.decrypt(key + payload, [running["victim"]["bob"]]) == MESSAGE
    with pytest.raises(age.NoIdentityMatch):
        age.decrypt(key + payload, [tamper.EVE])


# The running daemon checks the rows and the end of the audit log when it sees the
# file change: the recomputed chain shows at its last entry.
SEEN_RUNNING = {tamper.edit_old_entry_and_rechain: "audit log entry 7 was altered"}


@pytest.mark.parametrize("attack, problem", tamper.BRIEF_ATTACKS, ids=tamper.ids(tamper.BRIEF_ATTACKS))
def test_a_running_daemon_refuses_mail_while_its_keystore_is_tampered(running, attack, problem):
    db, sink, daemon = running["db"], running["sink"], running["daemon"]
    # Before: bob's copy is sealed to bob alone; carol (require, her key revoked) is refused for good.
    t = _send(running, ["bob@b.test", "carol@b.test"])
    assert [code for code, _ in t.rcpts] == [250, 550] and t.data[0] == 250
    [copy] = sink.wait(1)
    assert bundle.is_sealed(copy.data)
    _sealed_for_bob_alone(running, copy.data)
    saved = sqlite3.connect(":memory:")
    with sqlite3.connect(db) as live:
        live.backup(saved)
    log_before = len(daemon.log_text().splitlines())

    attack(db, running["victim"])
    for _ in range(2):
        t = _send(running, ["bob@b.test", "carol@b.test"])
        assert t.rcpts == [UNAVAILABLE, UNAVAILABLE] and t.data is None
    assert sink.messages == []  # neither sealed to eve nor carol's in clear
    new_lines = daemon.log_text().splitlines()[log_before:]
    seen = SEEN_RUNNING.get(attack, problem)
    [logged] = [line for line in new_lines if "refusing to use it" in line]  # one line, not one per message
    assert logged.endswith(f"ERROR mailseal.keystore: keystore {db} was changed without the master key: {seen}; "
                           "refusing to use it until it verifies again (mailseal keys audit --verify)")

    # Put back as it was (what restoring a backup does): mail flows again, no restart.
    with sqlite3.connect(db) as live:
        saved.backup(live)
    t = _send(running, ["bob@b.test"])
    assert t.data[0] == 250
    [copy] = sink.wait(1)
    _sealed_for_bob_alone(running, copy.data)
