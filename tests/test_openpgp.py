"""PGP/MIME copies: made by us, opened by GnuPG and Sequoia's sq; made by GnuPG as
Thunderbird lays them out, opened by us."""

from __future__ import annotations

import email
import subprocess
from email import policy

import pysequoia
import pytest

from mailseal import mime, openpgp, protect
from mailseal.partner_errors import MalformedMessage, NoKeyMatch, NotThisFormat, Tampered, UnsupportedKey
from tests.partner_keys import MESSAGES, gnupg_home, gpg_keys


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> list[pysequoia.Tsk]:
    return gpg_keys(tmp_path_factory.mktemp("keys"), "Bob <bob@b.test>", "Carol <carol@b.test>",
                    "Alice <alice@a.test>")


@pytest.fixture(scope="module")
def bob(keys) -> pysequoia.Tsk:
    return keys[0]


@pytest.fixture(scope="module")
def carol(keys) -> pysequoia.Tsk:
    return keys[1]


@pytest.fixture(scope="module")
def alice(keys) -> pysequoia.Tsk:
    return keys[2]


def _run(*args: str, input: bytes, env: dict | None = None) -> bytes:
    done = subprocess.run(list(args), input=input, capture_output=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done.stdout


def _armored_part(sealed: bytes) -> bytes:
    """Part 2 of a PGP/MIME message, found by the standard library's parser."""
    outer = email.message_from_bytes(sealed, policy=policy.default)
    assert outer.get_content_type() == "multipart/encrypted"
    assert outer.get_param("protocol") == "application/pgp-encrypted"
    control, data = outer.get_payload()
    assert control.get_content_type() == "application/pgp-encrypted"
    assert control.get_payload().strip() == "Version: 1"
    assert data.get_content_type() == "application/octet-stream"
    return data.get_payload(decode=True)


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_every_copy_decrypts_with_gpg_and_sq_byte_exact(tmp_path, bob, carol, name):
    message = MESSAGES[name]
    sealed = openpgp.seal(message, [bob.extract_certificate(), carol.extract_certificate()], now=1_767_000_000)
    armored = _armored_part(sealed)
    for index, key in enumerate((bob, carol)):
        secret = tmp_path / f"key{index}.pgp"
        secret.write_bytes(bytes(key))
        inner = _run("sq", "decrypt", "--recipient-key", str(secret), input=armored)
        assert inner == protect.wrap(message) and protect.unwrap(inner) == message
        directory = tmp_path / f"gpg{index}"
        directory.mkdir()
        with gnupg_home(directory, bytes(key)) as env:
            inner = _run("gpg", "--batch", "--quiet", "--decrypt", input=armored, env=env)
        assert protect.unwrap(inner) == message


def test_outer_message_keeps_routing_fields_and_hides_the_rest(bob):
    sealed = openpgp.seal(MESSAGES["plain"], [bob.extract_certificate()], now=1_767_000_000)
    outer = email.message_from_bytes(sealed, policy=policy.default)
    assert outer["Subject"] == "[...]"
    assert outer["From"] == "Alice <alice@a.test>" and outer["To"] == "Bob <bob@b.test>"
    assert outer["Message-ID"] == "<m1@a.test>"
    assert b"merger" not in sealed and b"caf" not in sealed
    assert all(len(line) <= 78 and b"\n" not in line for line in sealed.split(b"\r\n"))
    assert openpgp.open_message(sealed, [bob]).message == MESSAGES["plain"]


def _thunderbird(armored: bytes) -> bytes:
    """PGP/MIME laid out as Thunderbird 115 sends it."""
    armored = armored.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return (b"Message-ID: <tb1@a.test>\r\nDate: Mon, 2 Mar 2026 11:00:00 +0100\r\nMIME-Version: 1.0\r\n"
            b"User-Agent: Mozilla Thunderbird\r\nFrom: Alice <alice@a.test>\r\nTo: Bob <bob@b.test>\r\n"
            b"Subject: ...\r\nContent-Type: multipart/encrypted;\r\n protocol=\"application/pgp-encrypted\";\r\n"
            b" boundary=\"------------enigB1A2C3D4E5F6\"\r\n\r\n"
            b"This is an OpenPGP/MIME encrypted message (RFC 4880 and 3156)\r\n"
            b"--------------enigB1A2C3D4E5F6\r\nContent-Type: application/pgp-encrypted\r\n"
            b"Content-Description: PGP/MIME version identification\r\n\r\nVersion: 1\r\n\r\n"
            b"--------------enigB1A2C3D4E5F6\r\nContent-Type: application/octet-stream; name=\"encrypted.asc\"\r\n"
            b"Content-Description: OpenPGP encrypted message\r\n"
            b"Content-Disposition: inline; filename=\"encrypted.asc\"\r\n\r\n"
            + armored + b"\r\n--------------enigB1A2C3D4E5F6--\r\n")


THUNDERBIRD_INNER = (
    b"Content-Type: multipart/mixed; boundary=\"------------mixed1\";\r\n protected-headers=\"v1\"\r\n"
    b"From: Alice <alice@a.test>\r\nTo: Bob <bob@b.test>\r\nMessage-ID: <tb1@a.test>\r\nSubject: quarterly\r\n\r\n"
    b"--------------mixed1\r\nContent-Type: text/plain; charset=UTF-8; format=flowed\r\n"
    b"Content-Transfer-Encoding: 7bit\r\n\r\nthe figures\r\n\r\n--------------mixed1--\r\n")


def test_mail_encrypted_by_gpg_as_thunderbird_sends_it_opens(tmp_path, bob, alice):
    encrypt = ("gpg", "--batch", "--quiet", "--trust-model", "always", "--armor", "--encrypt", "-r", "bob@b.test")
    with gnupg_home(tmp_path, bytes(bob.extract_certificate()), bytes(alice)) as env:
        plain = _run(*encrypt, input=THUNDERBIRD_INNER, env=env)
        signed = _run(*encrypt, "-z", "0", "--sign", "-u", "alice@a.test", input=THUNDERBIRD_INNER, env=env)
        compressed = _run(*encrypt, "--sign", "-u", "alice@a.test", input=THUNDERBIRD_INNER, env=env)
    opened = openpgp.open_message(_thunderbird(plain), [bob])
    assert opened.message == THUNDERBIRD_INNER
    assert opened.fingerprint == bob.extract_certificate().fingerprint
    assert opened.signers == ()
    alice_cert = alice.extract_certificate()
    verified = openpgp.open_message(_thunderbird(signed), [bob], lambda _ids: [alice_cert])
    assert verified.message == THUNDERBIRD_INNER and verified.signers == (alice_cert.fingerprint,)
    # Signed by someone whose certificate we do not hold: opened, no signer named.
    unknown = openpgp.open_message(_thunderbird(signed), [bob], lambda _ids: [])
    assert unknown.message == THUNDERBIRD_INNER and unknown.signers == ()
    # Unsigned, checked: opened, no signer named.
    assert openpgp.open_message(_thunderbird(plain), [bob], lambda _ids: [alice_cert]).signers == ()
    # Signed inside compressed data (GnuPG's default): opened, the signature not verified.
    assert openpgp.open_message(_thunderbird(compressed), [bob], lambda _ids: [alice_cert]) == \
        openpgp.Opened(THUNDERBIRD_INNER, bob.extract_certificate().fingerprint, ())


def test_forged_signature_names_no_signer(tmp_path, bob, alice, carol):
    """Signed by carol's key under alice's name: checked against alice's certificate, it names nobody."""
    with gnupg_home(tmp_path, bytes(bob.extract_certificate()), bytes(carol)) as env:
        signed = _run("gpg", "--batch", "--quiet", "--trust-model", "always", "--armor", "--encrypt", "-z", "0",
                      "--sign", "-u", "carol@b.test", "-r", "bob@b.test", input=THUNDERBIRD_INNER, env=env)
    opened = openpgp.open_message(_thunderbird(signed), [bob], lambda _ids: [alice.extract_certificate()])
    assert opened.message == THUNDERBIRD_INNER and opened.signers == ()


def _rearmored(sealed: bytes, change) -> bytes:
    binary = _dearmor(_armored_part(sealed))
    armored = pysequoia.armor(change(binary), pysequoia.ArmorKind.Message)
    return _thunderbird(armored.encode() if isinstance(armored, str) else armored)


def _dearmor(armored: bytes) -> bytes:
    lines = armored.decode().strip().splitlines()
    body = lines[lines.index("") + 1 : -1]
    if body and body[-1].startswith("="):
        body = body[:-1]
    return b"".join(mime.decode_base64("".join(body).encode()))


def _flip(index: int):
    def change(data: bytes) -> bytes:
        out = bytearray(data)
        out[index] ^= 0x01
        return bytes(out)
    return change


@pytest.mark.parametrize("index", [-1, -30, -200])
def test_tampered_ciphertext_is_refused(bob, index):
    sealed = openpgp.seal(MESSAGES["plain"], [bob.extract_certificate()])
    with pytest.raises(Tampered):
        openpgp.open_message(_rearmored(sealed, _flip(index)), [bob])


@pytest.mark.parametrize("cut", [1, 22, 300])
def test_truncated_is_refused(bob, cut):
    sealed = openpgp.seal(MESSAGES["plain"], [bob.extract_certificate()])
    with pytest.raises(Tampered):
        openpgp.open_message(_rearmored(sealed, lambda data: data[:-cut]), [bob])


def test_truncated_mime_is_malformed(bob):
    sealed = openpgp.seal(MESSAGES["plain"], [bob.extract_certificate()])
    with pytest.raises(MalformedMessage):
        openpgp.open_message(sealed[: len(sealed) // 2], [bob])


def test_wrong_key_is_no_match(bob, carol):
    sealed = openpgp.seal(MESSAGES["plain"], [bob.extract_certificate()])
    with pytest.raises(NoKeyMatch):
        openpgp.open_message(sealed, [carol])
    assert openpgp.open_message(sealed, [carol, bob]).fingerprint == bob.extract_certificate().fingerprint


def test_plain_mail_is_not_pgp_mime(bob):
    with pytest.raises(NotThisFormat):
        openpgp.open_message(MESSAGES["plain"], [bob])


def test_certificates_checked_at_load(bob, alice):
    cert = bob.extract_certificate()
    assert openpgp.load_certificate(bytes(cert)).fingerprint == cert.fingerprint
    assert openpgp.load_certificate(str(cert).encode()).fingerprint == cert.fingerprint
    with pytest.raises(UnsupportedKey, match="secret key"):
        openpgp.load_certificate(bytes(bob))
    with pytest.raises(MalformedMessage):
        openpgp.load_certificate(b"-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nAAAA\n-----END PGP PUBLIC KEY BLOCK-----\n")
    expiring = pgp_key_valid_for(3600)
    assert not openpgp.expired(expiring.extract_certificate())
    with pytest.raises(UnsupportedKey, match="expired"):
        openpgp.check_certificate(expiring.extract_certificate(), now=expiring.extract_certificate().expiration.timestamp() + 1)


def pgp_key_valid_for(seconds: int) -> pysequoia.Tsk:
    return pysequoia.Tsk.generate("Dave <dave@b.test>", profile=pysequoia.Profile.RFC4880, validity_seconds=seconds)


def test_signing_only_certificate_is_refused(tmp_path):
    with gnupg_home(tmp_path) as env:
        _run("gpg", "--batch", "--quiet", "--pinentry-mode", "loopback", "--passphrase", "", "--quick-gen-key",
             "Sig <sig@b.test>", "ed25519", "sign", "never", input=b"", env=env)
        exported = _run("gpg", "--batch", "--export", "sig@b.test", input=b"", env=env)
    with pytest.raises(UnsupportedKey, match="encryption-capable"):
        openpgp.load_certificate(exported)


def test_revoked_certificate_is_refused(tmp_path):
    with gnupg_home(tmp_path) as env:
        _run("gpg", "--batch", "--quiet", "--pinentry-mode", "loopback", "--passphrase", "", "--quick-gen-key",
             "Rev <rev@b.test>", "future-default", "default", "never", input=b"", env=env)
        exported = _run("gpg", "--batch", "--export", "rev@b.test", input=b"", env=env)
        # GnuPG writes a revocation certificate beside every key it makes,
        # its armor line neutralised by a leading colon.
        (revocation,) = (tmp_path / "gnupg" / "openpgp-revocs.d").iterdir()
        text = revocation.read_bytes().replace(b":-----BEGIN PGP PUBLIC KEY BLOCK", b"-----BEGIN PGP PUBLIC KEY BLOCK")
        _run("gpg", "--batch", "--quiet", "--import", input=text, env=env)
        revoked = _run("gpg", "--batch", "--export", "rev@b.test", input=b"", env=env)
    assert openpgp.load_certificate(exported).fingerprint
    with pytest.raises(UnsupportedKey, match="revoked"):
        openpgp.load_certificate(revoked)


def test_secret_keys_load_and_public_ones_do_not(bob):
    assert openpgp.load_secret_key(bytes(bob)).extract_certificate().fingerprint == bob.extract_certificate().fingerprint
    assert openpgp.load_secret_key(str(bob).encode()).extract_certificate().fingerprint == \
        bob.extract_certificate().fingerprint
    with pytest.raises(MalformedMessage):
        openpgp.load_secret_key(bytes(bob.extract_certificate()))
    with pytest.raises(MalformedMessage):
        openpgp.load_secret_key(b"junk")
