"""Is a message already encrypted? Decided by its structure, never by a label.

A sender's Content-Type proves nothing: a clear message can be labelled
multipart/encrypted or application/pkcs7-mime. `verify` answers which format
a message really has, or None:

* `mailseal`: a bundle that bundle.split accepts;
* `pgp-mime`: RFC 3156 multipart/encrypted with protocol
  application/pgp-encrypted, exactly two parts, the first an
  application/pgp-encrypted part saying `Version: 1`, the second an
  application/octet-stream part holding one ASCII-armored
  `-----BEGIN PGP MESSAGE-----` whose packets are one or more encrypted
  session keys (public-key or symmetric) followed by an encrypted data packet
  (so an armored literal, signed or compressed message does not count);
* `smime`: application/pkcs7-mime whose body decodes to a CMS ContentInfo of
  type EnvelopedData or AuthEnvelopedData (the DER OID is read; the
  `smime-type` parameter is not trusted).

A header block with more than one Content-Type (or Content-Transfer-Encoding)
field is never verified: readers disagree on which one counts. Bytes in, a
word out: no SMTP, no policy (the caller decides what verified mail may do).
"""

from __future__ import annotations

from . import bundle, mime

MAILSEAL, PGP_MIME, SMIME = "mailseal", "pgp-mime", "smime"

SMIME_TYPES = ("application/pkcs7-mime", "application/x-pkcs7-mime")
# DER contents of the OIDs: id-envelopedData 1.2.840.113549.1.7.3 and
# id-ct-authEnvelopedData 1.2.840.113549.1.9.16.1.23 (RFC 5652, RFC 5083).
_CMS_ENVELOPED = (bytes.fromhex("2a864886f70d010703"), bytes.fromhex("2a864886f70d0109100117"))
# OpenPGP packet tags (RFC 9580): encrypted session keys, then encrypted data.
_SESSION_KEY_TAGS = (1, 3)  # PKESK, SKESK
_ENCRYPTED_DATA_TAGS = (9, 18, 20)  # SED, SEIPD, OCB encrypted data (LibrePGP)
_ARMOR_BEGIN, _ARMOR_END = b"-----BEGIN PGP MESSAGE-----", b"-----END PGP MESSAGE-----"


def verify(message: bytes) -> str | None:
    """The encryption format the message verifiably has, or None."""
    head, body_at = mime.split_head(message)
    lowered = head.lower()
    if b"encrypted" not in lowered and b"pkcs7-mime" not in lowered:
        return None  # most mail, decided without parsing a header
    try:
        names = [f.name.lower() for f in mime.fields(head)]
    except mime.MimeError:
        return None
    if names.count("content-type") != 1 or names.count("content-transfer-encoding") > 1:
        return None
    headers = mime.Headers(head)
    ctype = headers.content_type()
    if ctype == "multipart/encrypted":
        return _mailseal(message) or _pgp_mime(message, headers, body_at)
    if ctype in SMIME_TYPES:
        der = _decoded_start(memoryview(message)[body_at:], headers)
        return SMIME if der is not None and _cms_enveloped(*der) else None
    return None


def _mailseal(message: bytes) -> str | None:
    try:
        bundle.split(message)
    except bundle.BundleError:
        return None
    return MAILSEAL


def _pgp_mime(message: bytes, headers: mime.Headers, body_at: int) -> str | None:
    boundary = headers.boundary()
    if headers.param("protocol").lower() != "application/pgp-encrypted" or not boundary:
        return None
    try:
        spans = mime.find_parts(message, boundary.encode("ascii", "replace"), body_at)
    except mime.MimeError:
        return None
    if len(spans) != 2:
        return None
    (control_head, control), (data_head, data) = (_part(message, span) for span in spans)
    if control_head is None or data_head is None:
        return None
    if control_head.content_type() != "application/pgp-encrypted":
        return None
    if not any(line.strip() == b"Version: 1" for line in bytes(control[:4096]).splitlines()):
        return None
    if data_head.content_type() != "application/octet-stream":
        return None
    return PGP_MIME if _armored_encrypted(data) else None


def _part(message: bytes, span: tuple[int, int]) -> tuple[mime.Headers | None, memoryview]:
    start, end = span
    raw = memoryview(message)[start:end]
    head, body_at = mime.split_head(bytes(raw[:65536]))
    try:
        names = [f.name.lower() for f in mime.fields(head)]
    except mime.MimeError:
        return None, raw
    if names.count("content-type") != 1:
        return None, raw
    return mime.Headers(head), raw[body_at:]


def _armored_encrypted(body: memoryview) -> bool:
    lines = [line.rstrip(b"\r") for line in bytes(body).split(b"\n")]
    while lines and not lines[-1].strip():
        lines.pop()
    try:
        begin = next(i for i, line in enumerate(lines) if line.strip())
    except StopIteration:
        return False
    if lines[begin] != _ARMOR_BEGIN or lines[-1] != _ARMOR_END:
        return False
    inner = lines[begin + 1 : -1]
    try:
        blank = inner.index(b"")  # armor headers ("Version: ...") end at an empty line
    except ValueError:
        return False
    if any(b": " not in line for line in inner[:blank]):
        return False
    data = inner[blank + 1 :]
    if data and data[-1].startswith(b"=") and len(data[-1]) == 5:
        data = data[:-1]  # the CRC-24 checksum line
    try:
        first = next(mime.decode_base64(b"\n".join(data)), b"")
    except mime.MimeError:
        return False
    return _openpgp_encrypted(first)


def _openpgp_encrypted(data: bytes) -> bool:
    """Session key packets, then an encrypted data packet (RFC 9580 section 4.2)."""
    pos, session_keys = 0, 0
    while pos < len(data):
        parsed = _packet_header(data, pos)
        if parsed is None:
            return False
        tag, body_start, length = parsed
        if tag in _ENCRYPTED_DATA_TAGS:
            return session_keys > 0
        if tag not in _SESSION_KEY_TAGS or length is None:
            return False
        session_keys += 1
        pos = body_start + length
    return False


def _packet_header(data: bytes, pos: int) -> tuple[int, int, int | None] | None:
    """(tag, body offset, body length or None when partial/indeterminate)."""
    first = data[pos]
    if not first & 0x80:
        return None
    if first & 0x40:  # new format
        tag, at = first & 0x3F, pos + 1
        if at >= len(data):
            return None
        octet = data[at]
        if octet < 192:
            return tag, at + 1, octet
        if octet < 224:
            return (tag, at + 2, ((octet - 192) << 8) + data[at + 1] + 192) if at + 1 < len(data) else None
        if octet == 255:
            return (tag, at + 5, int.from_bytes(data[at + 1 : at + 5], "big")) if at + 4 < len(data) else None
        return tag, at + 1, None  # partial body length
    tag, kind = (first >> 2) & 0x0F, first & 0x03  # old format
    if kind == 3:
        return tag, pos + 1, None
    size = 1 << kind
    if pos + size >= len(data):
        return None
    return tag, pos + 1 + size, int.from_bytes(data[pos + 1 : pos + 1 + size], "big")


def _decoded_start(body: memoryview, headers: mime.Headers) -> tuple[bytes, int] | None:
    """(the first decoded bytes, the decoded length) of a part body, or None if it does not decode."""
    encoding = (headers.get("Content-Transfer-Encoding") or "7bit").strip().lower()
    if encoding in ("7bit", "8bit", "binary"):
        return bytes(body[:65536]), len(body)
    if encoding != "base64":
        return None
    first, total = b"", 0
    try:
        for piece in mime.decode_base64(body):
            first = first or piece
            total += len(piece)
    except mime.MimeError:
        return None
    return first, total


def _cms_enveloped(der: bytes, total: int) -> bool:
    """ContentInfo ::= SEQUENCE { contentType OID, content [0] EXPLICIT SEQUENCE } (RFC 5652)."""
    outer = _der_header(der, 0, 0x30)
    if outer is None:
        return False
    at, length = outer
    if length is not None and at + length != total:
        return False  # trailing or missing bytes: not one ContentInfo
    oid = _der_header(der, at, 0x06)
    if oid is None or oid[1] is None or der[oid[0] : oid[0] + oid[1]] not in _CMS_ENVELOPED:
        return False
    content = _der_header(der, oid[0] + oid[1], 0xA0)
    return content is not None and _der_header(der, content[0], 0x30) is not None


def _der_header(data: bytes, pos: int, tag: int) -> tuple[int, int | None] | None:
    """(content offset, length; None for BER's indefinite length) of a value with this tag at pos."""
    if pos + 2 > len(data) or data[pos] != tag:
        return None
    octet = data[pos + 1]
    if octet < 0x80:
        return pos + 2, octet
    if octet == 0x80:
        return pos + 2, None
    size = octet & 0x7F
    if size > 4 or pos + 2 + size > len(data):
        return None
    return pos + 2 + size, int.from_bytes(data[pos + 2 : pos + 2 + size], "big")
