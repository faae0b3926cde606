"""What opened mail may carry, tried as the attacker: a sender whose own
plaintext forges the receiving site's verdicts or extends our trace header.

Mail is sealed by a real outbound daemon (A), caught on the wire, and handed
to the real inbound listeners (B with the default list, B2 with its own)."""

from __future__ import annotations

import email
import email.policy

import pytest

from .harness import Daemon, Sink, smtp_transaction

FORGED = (
    b"Authentication-Results: b.test;\r\n"
    b"\tdkim=pass header.d=bank.test;\r\n"
    b"\tdmarc=pass\r\n"
    b"From: Your Bank <ceo@bank.test>\r\n"
    b"To: Bob <bob@b.test>\r\n"
    b"X-Spam-Flag: NO\r\n"
    b"X-Spam-Status: No, score=-100.0\r\n"
    b"Subject: please confirm\r\n"
    b" your account\r\n"
    b"Received-SPF: pass (b.test: domain of bank.test designates 192.0.2.1 as permitted sender)\r\n"
    b"X-Corp-Verdict: trusted\r\n"
    b"Message-ID: <forged@bank.test>\r\n"
    b"mailseal-status: opened; key=trust-me\r\n"
    b"\r\n"
    b"Authentication-Results: a body line stays\r\n"
    b"Dear customer.\r\n"
)
KEPT = (
    b"From: Your Bank <ceo@bank.test>\r\n"
    b"To: Bob <bob@b.test>\r\n"
    b"Subject: please confirm\r\n"
    b" your account\r\n"
    b"X-Corp-Verdict: trusted\r\n"
    b"Message-ID: <forged@bank.test>\r\n"
    b"\r\n"
    b"Authentication-Results: a body line stays\r\n"
    b"Dear customer.\r\n"
)


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    root = tmp_path_factory.mktemp("headers")
    with Sink() as final, Sink() as wire:
        b = Daemon(root / "b", inbound={"next_hop": f"127.0.0.1:{final.port}"})
        b2 = Daemon(root / "b2", inbound={"next_hop": f"127.0.0.1:{final.port}", "strip_headers": ["X-Corp-*"],
                                          "strip_headers_from_clear_mail": True})
        b.cli("keys", "generate", "bob@b.test")
        b2.cli("keys", "generate", "dave@b2.test")
        a = Daemon(root / "a", outbound={"next_hop": f"127.0.0.1:{wire.port}"})
        for site, owner in ((b, "bob@b.test"), (b2, "dave@b2.test")):
            card = root / f"{owner}.card"
            card.write_text(site.cli("keys", "export", owner))
            a.cli("keys", "import", owner, str(card))
        for daemon in (a, b, b2):
            daemon.start()
        try:
            yield {"a": a, "b": b, "b2": b2, "final": final, "wire": wire}
        finally:
            for daemon in (a, b, b2):
                daemon.stop()
            for daemon in (a, b, b2):
                assert "Traceback" not in daemon.log_text(), daemon.log_text()


@pytest.fixture(autouse=True)
def clean(sites):
    sites["final"].messages.clear()
    sites["wire"].messages.clear()


def seal_and_open(sites, rcpt: str, plaintext: bytes, site: str = "b") -> bytes:
    """The attacker's plaintext, sealed by A for rcpt, opened by B; what B delivers."""
    t = smtp_transaction(sites["a"].outbound_port, "ceo@bank.test", [rcpt], plaintext)
    assert t.data[0] == 250, t.data
    [sealed] = sites["wire"].wait(1)
    assert b"multipart/encrypted" in sealed.data and b"dkim=pass" not in sealed.data
    t = smtp_transaction(sites[site].inbound_port, "ceo@bank.test", [rcpt], sealed.data)
    assert t.data[0] == 250, t.data
    [opened] = sites["final"].wait(1)
    return opened.data


def trace_and_rest(data: bytes, status: bytes = b"unsigned") -> tuple[bytes, bytes]:
    trace, rest = data.split(b"\r\n", 1)
    assert trace.startswith(b"Mailseal-Status: opened; " + status + b"; serial=")
    return trace, rest


def test_forged_verdicts_are_removed_from_opened_mail_and_the_rest_is_byte_exact(sites):
    _, rest = trace_and_rest(seal_and_open(sites, "bob@b.test", FORGED))
    assert rest == KEPT


def test_a_plaintext_starting_with_a_continuation_line_does_not_extend_our_trace(sites):
    plaintext = b" injected; signed-by=bank.test\r\n\tverified=yes\r\n" + KEPT
    data = seal_and_open(sites, "bob@b.test", plaintext)
    # Such a header block does not name its sender beyond doubt: marked (under `any`).
    trace, rest = trace_and_rest(data, b"unsigned; sender-unclear")
    assert rest == KEPT
    parsed = email.message_from_bytes(data, policy=email.policy.compat32)
    assert parsed.get_all("Mailseal-Status") == [trace.split(b": ", 1)[1].decode()]


def test_a_header_block_across_the_first_decrypted_chunk(sites):
    # The plaintext's header block runs past the first 64 KiB STREAM chunk,
    # with a forged verdict cut in two by the chunk boundary.
    lines = b"".join(b"X-Filler-%04d: %s\r\n" % (i, b"f" * 60) for i in range(800))
    head = lines + b"X-Pad: " + b"p" * (65536 - 20 - len(lines) - 9) + b"\r\n"
    forged = b"Authentication-Results: b.test; dkim=pass\r\n"
    assert len(head) == 65536 - 20
    body = b"".join(b"line %06d\r\n" % i for i in range(20000))
    plaintext = head + forged + b"From: ceo@bank.test\r\nTo: bob@b.test\r\n\r\n" + body
    _, rest = trace_and_rest(seal_and_open(sites, "bob@b.test", plaintext))
    assert rest == head + b"From: ceo@bank.test\r\nTo: bob@b.test\r\n\r\n" + body


def test_a_site_names_its_own_list_and_mailseal_fields_go_regardless(sites):
    _, rest = trace_and_rest(seal_and_open(sites, "dave@b2.test", FORGED, site="b2"))
    kept = [line for line in FORGED.split(b"\r\n\r\n")[0].split(b"\r\n")
            if not line.lower().startswith((b"x-corp-verdict", b"mailseal-status"))]
    assert rest == b"\r\n".join(kept) + b"\r\n\r\n" + FORGED.split(b"\r\n\r\n", 1)[1]


CLEAR = (b"Authentication-Results: mx.b.test; spf=pass\r\nFrom: a@a.test\r\nX-Corp-Verdict: trusted\r\n"
         b"Mailseal-Status: opened; key=trust-me\r\nSubject: clear\r\n\r\nbody\r\n")


@pytest.mark.parametrize("site, expected", [
    # Clear mail: by default only Mailseal-* goes (the site's own checks ran
    # before mailseal and their verdicts stay) ...
    ("b", b"Authentication-Results: mx.b.test; spf=pass\r\nFrom: a@a.test\r\nX-Corp-Verdict: trusted\r\n"
          b"Subject: clear\r\n\r\nbody\r\n"),
    # ... and the configured list too where the site asks for it.
    ("b2", b"Authentication-Results: mx.b.test; spf=pass\r\nFrom: a@a.test\r\nSubject: clear\r\n\r\nbody\r\n"),
])
def test_clear_mail_loses_mailseal_fields_and_the_list_only_where_configured(sites, site, expected):
    rcpt = "bob@b.test" if site == "b" else "dave@b2.test"
    t = smtp_transaction(sites[site].inbound_port, "a@a.test", [rcpt], CLEAR)
    assert t.data[0] == 250
    [got] = sites["final"].wait(1)
    assert got.data == expected
