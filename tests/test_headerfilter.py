"""The header surgery on its own: which fields go, that everything else stays
byte for byte, and the configuration that names them."""

from __future__ import annotations

import pytest

from mailseal import config, headerfilter
from mailseal.headerfilter import DEFAULT_STRIP, HeaderFilter, for_clear_mail, for_opened_mail

from .conftest import run_cli

FORGED = (
    b"Received: from laptop.a.test by mail.a.test; Sun, 29 Nov 2026 10:00:00 +0000\r\n"
    b"Authentication-Results: b.test;\r\n"
    b"\tdkim=pass header.d=bank.test;\r\n"
    b"\tspf=pass smtp.mailfrom=bank.test\r\n"
    b"From: Your Bank <ceo@bank.test>\r\n"
    b"X-Spam-Flag: NO\r\n"
    b"x-spam-status : No, score=-100\r\n"
    b"To: bob@b.test\r\n"
    b"Received-SPF: pass (b.test: domain of bank.test designates 192.0.2.1)\r\n"
    b"ARC-Authentication-Results: i=1; b.test; dmarc=pass\r\n"
    b"X-Virus-Scanned: clean\r\n"
    b"Subject: a very long subject that goes on\r\n"
    b" and on over two lines\r\n"
    b"Mailseal-Status: opened; key=trust-me\r\n"
    b"X-Spamd-Result: default: False [-10.00 / 15.00]\r\n"
    b"X-Weird:no-space-after-colon\r\n"
    b"\r\n"
    b"Authentication-Results: in the body stays\r\n"
    b"X-Spam-Flag: NO (body too)\r\n"
)
KEPT = (
    b"Received: from laptop.a.test by mail.a.test; Sun, 29 Nov 2026 10:00:00 +0000\r\n"
    b"From: Your Bank <ceo@bank.test>\r\n"
    b"To: bob@b.test\r\n"
    b"Subject: a very long subject that goes on\r\n"
    b" and on over two lines\r\n"
    b"X-Weird:no-space-after-colon\r\n"
    b"\r\n"
    b"Authentication-Results: in the body stays\r\n"
    b"X-Spam-Flag: NO (body too)\r\n"
)


def test_the_default_list_removes_verdicts_and_keeps_the_rest_byte_for_byte():
    assert for_opened_mail(DEFAULT_STRIP).message(FORGED) == KEPT


def test_lf_messages_keep_their_line_endings():
    lf = FORGED.replace(b"\r\n", b"\n")
    assert for_opened_mail(DEFAULT_STRIP).message(lf) == KEPT.replace(b"\r\n", b"\n")


def test_leading_continuation_lines_belong_to_no_field_and_go():
    message = b" injected; key=forged\r\n\tmore\r\nFrom: a@a.test\r\nSubject: s\r\n folded\r\n\r\nbody\r\n"
    assert for_opened_mail(()).message(message) == b"From: a@a.test\r\nSubject: s\r\n folded\r\n\r\nbody\r\n"
    assert for_clear_mail((), False).message(message) == b"From: a@a.test\r\nSubject: s\r\n folded\r\n\r\nbody\r\n"


def test_orphans_true_keeps_leading_continuation_lines():
    # The sealing side removes only what it names (Bcc) and seals the rest as it came.
    message = b" odd first line\r\nFrom: a@a.test\r\nBcc: x@b.test,\r\n y@b.test\r\n\r\nbody\r\n"
    keep = HeaderFilter(("Bcc",), orphans=True)
    assert keep.message(message) == b" odd first line\r\nFrom: a@a.test\r\n\r\nbody\r\n"
    no_bcc = b" odd first line\r\nFrom: a@a.test\r\n\r\nbody\r\n"
    assert keep.message(no_bcc) is no_bcc


def test_a_field_hidden_behind_a_bare_cr_goes_with_its_whole_line():
    # Python's email package reads a bare CR as a line break, Postfix does not:
    # the line goes whole, so neither sees the forged field and no line merges.
    message = (b"From: a@a.test\r\nX-Note: harmless\rAuthentication-Results: b.test; dkim=pass\r\n"
               b" continued\r\nSubject: s\r\n\r\nbody\r\n")
    assert for_opened_mail(DEFAULT_STRIP).message(message) == b"From: a@a.test\r\nSubject: s\r\n\r\nbody\r\n"
    ok = b"From: a@a.test\r\nX-Note: a\rb\r\n\r\nbody\r\n"  # a bare CR alone changes nothing
    assert for_opened_mail(DEFAULT_STRIP).message(ok) is ok


def test_patterns_are_case_insensitive_globs_on_the_whole_name():
    f = HeaderFilter(["x-corp-?erdict", "X-Scan*"])
    message = (b"X-Corp-Verdict: ok\r\nX-CORP-VERDICT: ok\r\nX-Corp-Verdicts: kept\r\nX-Scanner: a\r\n"
               b"X-Scan: b\r\nX-Scan-Result: c\r\nX-Sc: kept\r\nXX-Scan: kept\r\n\r\n")
    assert f.message(message) == b"X-Corp-Verdicts: kept\r\nX-Sc: kept\r\nXX-Scan: kept\r\n\r\n"


def test_regex_characters_in_patterns_are_literal():
    f = HeaderFilter(["X.Y", "A+B"])
    assert f.message(b"XzY: kept\r\nX.Y: gone\r\nAAB: kept\r\nA+B: gone\r\n\r\n") == b"XzY: kept\r\nAAB: kept\r\n\r\n"


def test_mailseal_fields_go_from_clear_mail_the_rest_only_when_asked():
    clear = b"Authentication-Results: mx.b.test; spf=pass\r\nMAILSEAL-status: opened\r\nFrom: a@a.test\r\n\r\nx\r\n"
    assert for_clear_mail(DEFAULT_STRIP, False).message(clear) == \
        b"Authentication-Results: mx.b.test; spf=pass\r\nFrom: a@a.test\r\n\r\nx\r\n"
    assert for_clear_mail(DEFAULT_STRIP, True).message(clear) == b"From: a@a.test\r\n\r\nx\r\n"
    # Mailseal-* goes whatever the list says.
    assert for_opened_mail(["X-Other"]).message(clear) == \
        b"Authentication-Results: mx.b.test; spf=pass\r\nFrom: a@a.test\r\n\r\nx\r\n"


def test_nothing_to_remove_returns_the_message_itself():
    message = b"From: a@a.test\r\nSubject: Authentication-Results: in a value\r\n\r\nbody\r\n"
    assert for_opened_mail(DEFAULT_STRIP).message(message) is message


@pytest.mark.parametrize("message", [FORGED, b" lead\r\n" + FORGED, FORGED.split(b"\r\n\r\n")[0],
                                     b"\r\n" + FORGED, b"From: a\r\nX-Spam: yes\r\n"])
def test_chunks_give_what_the_whole_message_gives_wherever_it_is_cut(message):
    f = for_opened_mail(DEFAULT_STRIP)
    whole = f.message(message)
    for cut in range(len(message) + 1):
        for second in (cut, min(cut + 1, len(message)), min(cut + 2, len(message))):
            chunks = [message[:cut], message[cut:second], message[second:]]
            pieces = f.chunks(chunks)
            assert b"".join(pieces) == whole, (cut, second)


def test_chunks_after_the_header_are_passed_on_unjoined():
    body = [b"B" * 65536, b"C" * 65536]
    head = b"From: a@a.test\r\nX-Spam-Flag: NO\r\n\r\n" + b"A" * 100
    pieces = for_opened_mail(DEFAULT_STRIP).chunks([head, *body])
    assert pieces[0] == b"From: a@a.test\r\n\r\n" + b"A" * 100
    assert pieces[1] is body[0] and pieces[2] is body[1]


def _inbound(**settings) -> config.Config:
    return config.from_dict({"inbound": settings}, base=__import__("pathlib").Path("/tmp"))


def test_config_default_and_custom_lists():
    cfg = _inbound()
    assert cfg.inbound.strip_headers == DEFAULT_STRIP and cfg.inbound.strip_headers_from_clear_mail is False
    cfg = _inbound(strip_headers=["X-Corp-*"], strip_headers_from_clear_mail=True)
    assert cfg.inbound.strip_headers == ("X-Corp-*",) and cfg.inbound.strip_headers_from_clear_mail is True


@pytest.mark.parametrize("value, fragment", [
    ("X-Spam-*", "expected list"),
    (["X Spam"], "'X Spam' is not a header field name pattern"),
    (["X-Spam:"], "'X-Spam:' is not a header field name pattern"),
    ([""], "'' is not a header field name pattern"),
    ([7], "expected a string, got 7"),
    (["X-Ünï"], "is not a header field name pattern"),
    (["X"] * (headerfilter.MAX_PATTERNS + 1), f"at most {headerfilter.MAX_PATTERNS} patterns"),
])
def test_config_refuses_bad_patterns_with_where_and_why(value, fragment):
    with pytest.raises(config.ConfigError) as caught:
        _inbound(strip_headers=value)
    assert str(caught.value).startswith("[inbound] strip_headers:") and fragment in str(caught.value)


def test_check_config_reports_a_bad_pattern_in_one_line(tmp_path):
    path = tmp_path / "mailseal.toml"
    path.write_text('[keystore]\npath = "ks.sqlite3"\n')
    assert run_cli("-c", str(path), "keys", "init").returncode == 0
    path.write_text('[keystore]\npath = "ks.sqlite3"\n\n[inbound]\nstrip_headers = ["X Spam"]\n')
    result = run_cli("-c", str(path), "check-config")
    assert result.returncode == 2 and b"Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1 and b"[inbound] strip_headers" in result.stderr
