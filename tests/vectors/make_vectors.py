"""Generate mailseal's own bundle test vectors (tests/vectors/*.txt).

Run from the project root: `python -m tests.vectors.make_vectors`.
Each file is a text header (`expect:`, `identity:`, `payload:` = SHA-256 of the
opened message, `date:`, `serial:`, `rcpt:` = the envelope recipient to
open for, `version:`, `comment:`), an empty line, then the bundle bytes
exactly as they travel. `expect` is one of: success, not sealed, malformed,
no match, tampered, not bound; for signed bundles (which open) the outcome of
the signature check: signed, bad signature, signer unknown, unsigned, with
`verify-for` and `verify-key`: the one signer key the verifier has imported.

Classic (X25519) vectors use a seeded randomness source, so they are
reproducible: tests regenerate them and compare bytes, which pins the format.
Post-quantum ones cannot be (HPKE draws its randomness inside OpenSSL).
"""

from __future__ import annotations

import hashlib
import re
import sys
from pathlib import Path

import base64

from mailseal import age, bundle, mime, signing
from mailseal.age.header import encode_header

HERE = Path(__file__).resolve().parent
NOW = 1_795_000_000  # Wed, 18 Nov 2026 11:06:40 +0000
# Fixed test identities; never use them for anything else.
IDENTITY = age.X25519Identity(hashlib.sha256(b"mailseal test vector identity").digest())
OTHER = age.X25519Identity(hashlib.sha256(b"mailseal test vector other").digest())
PQ_IDENTITY = age.HybridIdentity(hashlib.sha256(b"mailseal test vector pq identity").digest())
SIGNER = "example.org"
SIGNING_KEY = signing.parse_signing_key("MAILSEAL-SIGNING-KEY-HYBRID-1:" + base64.b64encode(
    hashlib.sha256(b"mailseal test vector ed25519").digest()
    + hashlib.sha256(b"mailseal test vector ml-dsa-65").digest()).decode())

MESSAGE = (
    b"From: Alice <alice@example.org>\r\nTo: Bob <bob@example.net>\r\n"
    b"Subject: test vector\r\nDate: Thu, 19 Nov 2026 09:00:00 +0000\r\n"
    b"Message-ID: <vector@example.org>\r\n\r\nHello Bob.\r\n.\r\nFrom here on.\r\n"
)


def seeded(name: str):
    counter = [0]

    def rng(n: int) -> bytes:
        out = b""
        while len(out) < n:
            counter[0] += 1
            out += hashlib.sha256(f"{name}/{counter[0]}".encode()).digest()
        return out[:n]

    return rng


RCPT = "bob@example.net"  # the envelope recipient the vectors are bound to


def sealed(name: str, message: bytes = MESSAGE, identity=IDENTITY, bind=(RCPT,), version: int = 2) -> bytes:
    return bundle.seal(message, [identity.recipient()], now=NOW, rng=seeded(name), bind=bind, version=version)


def _parts(data: bytes) -> tuple[bytes, bytes]:
    key = re.search(rb"Mailseal-Serial: \w+\r?\n\r?\n([A-Za-z0-9+/=\r\n]+?)\r?\n--", data).group(1)
    pay = re.search(rb"octet-stream\r?\nContent-Transfer-Encoding: base64\r?\n\r?\n([A-Za-z0-9+/=\r\n]+?)\r?\n--",
                    data).group(1)
    return key, pay


def replace_part(data: bytes, index: int, new_decoded: bytes) -> bytes:
    eol = mime.line_ending(data)
    old = _parts(data)[index]
    return data.replace(old, b"".join(mime.base64_lines(new_decoded, eol))[: -len(eol)], 1)


def decoded(data: bytes, index: int) -> bytes:
    return b"".join(mime.decode_base64(_parts(data)[index]))


def flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :]


def with_header(stanzas_edit, name: str) -> bytes:
    """A bundle whose age header was rebuilt (validly MACed) with edited stanzas.

    stanzas_edit(recipient stanzas, file key) returns the stanzas to use.
    """
    rng = seeded(name)
    file_key = rng(16)
    stanzas = [IDENTITY.recipient().wrap(file_key, rng)]
    stanzas = stanzas_edit(stanzas, file_key)
    header = encode_header(stanzas, file_key)
    payload = b"".join(age.encrypt_payload(file_key, MESSAGE, rng))
    base = sealed(name)
    return replace_part(replace_part(base, 0, header), 1, payload)


def resigned(data: bytes, edit) -> bytes:
    """data with its age header rebuilt by someone who holds the file key (a
    co-recipient): edit(stanzas, file key) returns the new stanzas."""
    header = age.parse_header(decoded(data, 0))
    file_key = age.unwrap_file_key(header, [IDENTITY])
    return replace_part(data, 0, encode_header(edit(list(header.stanzas), file_key), file_key))


def edit_sig(edit):
    def apply(stanzas, _key):
        return [age.Stanza(s.type, s.args, edit(s.body)) if s.type == bundle.SIG_STANZA else s for s in stanzas]
    return apply


def serial_of(data: bytes) -> str:
    return re.search(rb"Mailseal-Serial: (\w+)", data).group(1).decode()


def build() -> dict[str, tuple[dict[str, str], bytes]]:
    """name -> (metadata, bundle bytes)."""
    v: dict[str, tuple[dict[str, str], bytes]] = {}

    def add(name, expect, data, comment, identity=IDENTITY, message=MESSAGE, reproducible=True, version=2):
        meta = {"expect": expect, "identity": str(identity), "rcpt": RCPT, "version": str(version),
                "comment": comment}
        if expect in SIGNATURE_OUTCOMES:
            meta["verify-for"] = SIGNER
            meta["verify-key"] = str(SIGNING_KEY.public())
            reproducible = False  # ML-DSA signing is randomised (hedged)
        if expect in ("success", *SIGNATURE_OUTCOMES):
            meta["payload"] = hashlib.sha256(message).hexdigest()
            meta["date"] = str(NOW)
            meta["serial"] = serial_of(data)
        meta["reproducible"] = "yes" if reproducible else "no"
        v[name] = (meta, data)

    add("success_crlf", "success", sealed("success_crlf"), "X25519 bundle, CRLF line ends")
    lf = MESSAGE.replace(b"\r\n", b"\n")
    add("success_lf", "success", sealed("success_lf", lf), "X25519 bundle of an LF message", message=lf)
    add("success_empty", "success", sealed("success_empty", b""), "the empty message", message=b"")
    add("success_pq", "success", bundle.seal(MESSAGE, [PQ_IDENTITY.recipient()], now=NOW, bind=[RCPT]),
        "mlkem768x25519 bundle (not reproducible: HPKE randomness)", identity=PQ_IDENTITY,
        reproducible=False)
    base = sealed("success_relayed")
    relayed = (b"Received: from relay.example.net\r\n\tby mx.example.org; Thu, 19 Nov 2026\r\n"
               + base.replace(b"This message is sealed", b"A relay rewrote this preamble. Sealed")
               + b"\r\nepilogue added by a list server\r\n")
    add("success_relayed", "success", relayed, "Received header, changed preamble, added epilogue")
    add("not_sealed_plain", "not sealed", MESSAGE, "an ordinary message")
    add("not_sealed_pgp", "not sealed",
        b'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted"; boundary=b\r\n\r\n'
        b"--b\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n--b--\r\n",
        "PGP/MIME is not a mailseal bundle")
    add("no_match", "no match", sealed("no_match", identity=OTHER), "sealed to another key")
    base = sealed("tampered_payload")
    add("tampered_payload", "tampered", replace_part(base, 1, flip(decoded(base, 1), 30)),
        "one bit of the ciphertext flipped")
    base = sealed("tampered_mac")
    key = decoded(base, 0)
    add("tampered_mac", "tampered", replace_part(base, 0, flip(key, len(key) - 3)),
        "one bit of the header MAC flipped")
    base = sealed("truncated_payload")
    add("truncated_payload", "tampered", replace_part(base, 1, decoded(base, 1)[:-1]),
        "the last byte of the ciphertext is missing")
    a, b = sealed("swapped_a"), sealed("swapped_b", MESSAGE.replace(b"Hello", b"Howdy"))
    add("swapped_keyblob", "tampered", replace_part(b, 0, decoded(a, 0)),
        "the key blob of another bundle (the visible headers left alone)")
    base = sealed("visible_date_changed")
    changed = base.replace(b"Mailseal-Date: Wed, 18 Nov 2026 11:06:40 +0000",
                           b"Mailseal-Date: Wed, 18 Nov 2026 11:06:41 +0000")
    assert changed != base
    add("visible_date_changed", "tampered", changed,
        "Mailseal-Date differs from the authenticated date")
    base = sealed("visible_serial_changed")
    s = serial_of(base)
    add("visible_serial_changed", "tampered",
        base.replace(s.encode(), ("0" if s[0] != "0" else "1").encode() + s[1:].encode(), 1),
        "Mailseal-Serial differs from the authenticated serial")
    def bind(key):
        return bundle.bind_stanza(key, [RCPT])

    add("no_replay_stanza", "malformed", with_header(lambda st, key: st + [bind(key)], "no_replay_stanza"),
        "a valid age header without the replay stanza")
    add("two_replay_stanzas", "malformed",
        with_header(lambda st, key: st + [bundle.replay_stanza(NOW, "0" * 32), bundle.replay_stanza(NOW, "1" * 32),
                                          bind(key)], "two_replay_stanzas"),
        "two replay stanzas")
    add("bad_replay_serial", "malformed",
        with_header(lambda st, key: st + [age.Stanza(bundle.REPLAY_STANZA, (str(NOW), "ABC"), b""), bind(key)],
                    "bad_replay_serial"),
        "the authenticated serial is not 32 lowercase hex digits")
    # Version 2: the recipient binding.
    add("not_bound", "not bound", sealed("not_bound", bind=["carol@example.net"]),
        "genuine, but bound to another envelope recipient (carol), opened for bob")
    add("bound_several", "success", sealed("bound_several", bind=["carol@example.net", RCPT, "dave@example.org"]),
        "bound to three recipients, bob among them")
    add("no_bind_stanza", "malformed",
        with_header(lambda st, key: st + [bundle.replay_stanza(NOW, "2" * 32)], "no_bind_stanza"),
        "a version 2 replay stanza without the bind stanza (a stripped binding)")
    add("two_bind_stanzas", "malformed",
        with_header(lambda st, key: st + [bundle.replay_stanza(NOW, "3" * 32), bind(key),
                                          bundle.bind_stanza(key, ["eve@example.net"])], "two_bind_stanzas"),
        "two bind stanzas (one binding eve)")
    add("bind_bad_length", "malformed",
        with_header(lambda st, key: st + [bundle.replay_stanza(NOW, "4" * 32),
                                          age.Stanza(bundle.BIND_STANZA, (), bind(key).body + b"x")],
                    "bind_bad_length"),
        "a bind stanza whose body is not a whole number of 16-byte tags")
    base = sealed("bind_tampered")
    key_blob = decoded(base, 0)
    at = key_blob.index(b"-> " + bundle.BIND_STANZA.encode()) + len(bundle.BIND_STANZA) + 5
    add("bind_tampered", "tampered", replace_part(base, 0, flip(key_blob, at)),
        "one bit of the binding changed (the header MAC no longer verifies)")
    # Version 1, still opened for one release (no binding to check).
    add("v1_success", "success", sealed("v1_success", bind=(), version=1), "a version 1 bundle", version=1)
    add("v1_with_bind_stanza", "malformed",
        with_header(lambda st, key: st + [bundle.replay_stanza(NOW, "5" * 32, version=1), bind(key)],
                    "v1_with_bind_stanza"),
        "a version 1 replay stanza next to a bind stanza", version=1)
    base = sealed("no_close_boundary")
    add("no_close_boundary", "malformed", base[: base.rindex(b"--=_mailseal_")], "truncated: no close delimiter")
    base = sealed("three_parts")
    boundary = re.search(rb"--(=_mailseal_\w+)--", base).group(1)
    add("three_parts", "malformed",
        base.replace(b"--" + boundary + b"--", b"--" + boundary + b"\r\n\r\nextra\r\n--" + boundary + b"--"),
        "a third body part")
    base = sealed("keyblob_trailing_data")
    add("keyblob_trailing_data", "malformed", replace_part(base, 0, decoded(base, 0) + b"x"),
        "bytes after the age header in the key blob")
    base = sealed("bad_base64")
    k = _parts(base)[1]
    add("bad_base64", "malformed", base.replace(k, k[:10] + b"*" + k[11:], 1), "a non-base64 character")
    base = sealed("no_serial_header")
    add("no_serial_header", "malformed", re.sub(rb"Mailseal-Serial: \w+\r\n", b"", base),
        "the key blob lacks Mailseal-Serial")
    base = sealed("no_nonce")
    add("no_nonce", "malformed", replace_part(base, 1, decoded(base, 1)[:10]), "payload shorter than its nonce")
    # Sender signatures (section 2.3); the tampering is done by a co-recipient,
    # who holds the file key and so can make the header MAC verify again.
    def signed(name: str, message: bytes = MESSAGE, signer: str = SIGNER) -> bytes:
        return bundle.seal(message, [IDENTITY.recipient()], now=NOW, rng=seeded(name), bind=[RCPT],
                           signer=(signer, SIGNING_KEY))

    add("signed", "signed", signed("signed"), "signed by example.org with the composite key")
    add("signed_bad_ed25519", "bad signature",
        resigned(signed("signed_bad_ed25519"), edit_sig(lambda b: flip(b, 5))),
        "one bit of the Ed25519 half flipped, header MAC recomputed")
    add("signed_bad_mldsa", "bad signature",
        resigned(signed("signed_bad_mldsa"), edit_sig(lambda b: flip(b, len(b) - 40))),
        "one bit of the ML-DSA-65 half flipped, header MAC recomputed")
    add("signed_signer_unknown", "signer unknown", signed("signed_signer_unknown", signer="example.com"),
        "signed as example.com, for which the verifier has no key")
    base = signed("signed_other_payload")
    file_key = age.unwrap_file_key(age.parse_header(decoded(base, 0)), [IDENTITY])
    other = MESSAGE.replace(b"Hello Bob.", b"Pay Mallory.")
    add("signed_other_payload", "bad signature",
        replace_part(base, 1, b"".join(age.encrypt_payload(file_key, other, seeded("other")))),
        "a co-recipient's own payload under the genuine signed header", message=other)
    add("signed_stripped", "unsigned",
        resigned(signed("signed_stripped"), lambda st, _k: [s for s in st if s.type != bundle.SIG_STANZA]),
        "the sig stanza removed by a co-recipient (header MAC recomputed): opens, unsigned")
    base = signed("signed_stripped_no_file_key")
    header = age.parse_header(decoded(base, 0))
    kept = b"".join(s.encode() for s in header.stanzas if s.type != bundle.SIG_STANZA)
    old_mac_line = decoded(base, 0)[len(header.mac_input):]
    add("signed_stripped_no_file_key", "tampered",
        replace_part(base, 0, b"age-encryption.org/v1\n" + kept + b"---" + old_mac_line),
        "the sig stanza removed by an outsider (the old header MAC kept)", reproducible=False)
    return v


SIGNATURE_OUTCOMES = ("signed", "bad signature", "signer unknown", "unsigned")


def render(meta: dict[str, str], data: bytes) -> bytes:
    return "".join(f"{k}: {v}\n" for k, v in meta.items()).encode() + b"\n" + data


def parse(raw: bytes) -> tuple[dict[str, str], bytes]:
    head, _, data = raw.partition(b"\n\n")
    meta = dict(line.split(": ", 1) for line in head.decode().splitlines())
    return meta, data


def main() -> int:
    for name, (meta, data) in build().items():
        (HERE / f"{name}.txt").write_bytes(render(meta, data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
