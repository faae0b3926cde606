"""`mailseal check-config`: every problem of a configuration, one line each.

Problems make the command exit 2; warnings (keys about to expire) too,
except under `--startup` (the systemd unit's ExecStartPre), where a key that
expires next week must not keep the gateway from starting. Checked:

- each setting (all of them: a broken one is set aside and the rest read on);
- the keystore: there (serve never creates one), private, opens with the
  master key; keys in use that expire within `[keystore] expiry_warning`;
- listeners that overlap, a next hop that is one of mailseal's own listeners;
- a replay window shorter than a mail queue's lifetime (Postfix's
  maximal_queue_lifetime, 5d by default): delayed mail would be refused;
- where postconf runs: Postfix's sizes against mailseal's
  (docs/OPERATIONS.md section 4).
"""

from __future__ import annotations

import ipaddress
import os
import re
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

from . import config as config_mod
from . import postconf

QUEUE_LIFETIME = 5 * 86400  # Postfix's default maximal_queue_lifetime
# main.cf's message_size_limit carries sealed copies of mail up to max_message_size.
SEALED_FACTOR = 1.37


@dataclass(frozen=True)
class Finding:
    text: str
    warning: bool = False  # a key about to expire: does not fail `--startup`


@dataclass
class Report:
    findings: list[Finding]
    notes: list[str]
    config: config_mod.Config | None = None

    def problem(self, text: str) -> None:
        self.findings.append(Finding(text))


# --- the settings, all of them ------------------------------------------------------

_AT_KEY = re.compile(r"\[(\w+)\] (\w+):")
_UNKNOWN_KEYS = re.compile(r"\[(\w+)\]: unknown setting\(s\) (.+)")
_UNKNOWN_SECTIONS = re.compile(r"unknown section\(s\) (.+)")
_NOT_TABLE = re.compile(r"\[(\w+)\] must be a table")


def _set_aside(data: dict, message: str) -> tuple[str, str | None] | None:
    """Remove what the message names from data: (section, key), key None
    for a whole section; None if nothing can be set aside."""
    if message.startswith("[keystore]: set master_key_file or passphrase_env"):
        data["keystore"].pop("passphrase_env", None)
        return "keystore", "passphrase_env"
    m = _AT_KEY.match(message)
    if m and isinstance(data.get(m.group(1)), dict) and m.group(2) in data[m.group(1)]:
        del data[m.group(1)][m.group(2)]
        return m.group(1), m.group(2)
    m = _UNKNOWN_KEYS.match(message)
    if m and isinstance(data.get(m.group(1)), dict):
        for key in m.group(2).split(", "):
            data[m.group(1)].pop(key, None)
        return "", None  # a misspelt name: what it meant was not read at all
    m = _UNKNOWN_SECTIONS.match(message)
    if m:
        for name in re.findall(r"\[([^\]]+)\]", m.group(1)):
            data.pop(name, None)
        return "", None
    m = _NOT_TABLE.match(message)
    if m:
        data.pop(m.group(1), None)
        return m.group(1), None
    return None


def _usable(broken: set, section: str, key: str | None = None) -> bool:
    """Whether a check may rely on the setting (not replaced by its default)."""
    return (section, None) not in broken and (section, key) not in broken


def load_all(path: Path, report: Report) -> tuple[config_mod.Config | None, set]:
    """The configuration with every broken setting reported and set aside
    (its default used), and the sections that had one."""
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        report.problem("no such configuration file")
        return None, set()
    except OSError as exc:
        report.problem(f"cannot read: {exc.strerror}")
        return None, set()
    except tomllib.TOMLDecodeError as exc:
        report.problem(f"not valid TOML: {exc}")
        return None, set()
    broken: set = set()
    for _ in range(200):
        try:
            return config_mod.from_dict(data, path.resolve().parent, source=path), broken
        except config_mod.ConfigError as exc:
            report.problem(str(exc))
            where = _set_aside(data, str(exc))
            if where is None:
                return None, broken
            broken.add(where)
    return None, broken


# --- the keystore -------------------------------------------------------------------

def _private_file(path: Path, what: str, report: Report) -> None:
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        report.problem(f"{what} {path}: cannot stat: {exc.strerror}")
        return
    if mode & 0o077:
        report.problem(f"{what} {path} is readable or writable by others (mode {mode & 0o777:o}); chmod 600 it")


def check_keystore(cfg: config_mod.Config, report: Report, now: float) -> None:
    from .keystore import KeystoreError, open_keystore
    from .keystore.expiry import warnings

    ks = cfg.keystore
    for path, what in ((ks.path, "keystore"), (ks.master_key_file, "master key")):
        if path is not None:
            _private_file(path, what, report)
    if not ks.path.exists():
        report.problem(f"keystore {ks.path} does not exist (check [keystore] path; `mailseal keys init` "
                       "creates it; `serve` never does)")
        return
    try:
        with open_keystore(ks, create=False) as store:
            store.master()
            records = store.list_keys()
    except KeystoreError as exc:
        report.problem(str(exc))
        return
    for line in warnings(records, now, ks.expiry_warning):
        report.findings.append(Finding(line, warning=True))


# --- listeners and next hops --------------------------------------------------------

_WILDCARD = {"0.0.0.0", "::", ""}


def _same_socket(a: config_mod.Endpoint, b: config_mod.Endpoint) -> bool:
    if a.port != b.port:
        return False
    hosts = {"localhost": "127.0.0.1"}
    x, y = hosts.get(a.host, a.host), hosts.get(b.host, b.host)
    if x == y or x in _WILDCARD or y in _WILDCARD:
        return True
    try:
        return ipaddress.ip_address(x) == ipaddress.ip_address(y)
    except ValueError:
        return False


def _listeners(cfg: config_mod.Config, broken: set, key: str = "listen") -> list[tuple[str, object]]:
    return [(name, section) for name, section in (("outbound", cfg.outbound), ("inbound", cfg.inbound))
            if section is not None and _usable(broken, name, key)]


def _listen_settings(cfg: config_mod.Config, broken: set) -> list[tuple[str, str, config_mod.Endpoint]]:
    """(section, setting, endpoint) of every listener: listen, and [outbound] forward_listen."""
    out = [(name, "listen", section.listen) for name, section in _listeners(cfg, broken)]
    if cfg.outbound is not None and cfg.outbound.forward_listen is not None and \
            _usable(broken, "outbound", "forward_listen"):
        out.append(("outbound", "forward_listen", cfg.outbound.forward_listen))
    return out


def check_listeners(cfg: config_mod.Config, broken: set, report: Report) -> None:
    listeners = _listen_settings(cfg, broken)
    for i, (name, key, endpoint) in enumerate(listeners):
        for other, other_key, other_endpoint in listeners[i + 1:]:
            if _same_socket(endpoint, other_endpoint):
                report.problem(f"[{name}] {key} = {endpoint} and [{other}] {other_key} = "
                               f"{other_endpoint} overlap: give each listener its own port")
    for name, section in _listeners(cfg, broken, "next_hop"):
        hop = section.next_hop.endpoint
        for target, target_key, endpoint in listeners:
            if hop is not None and _same_socket(hop, endpoint):
                itself = ("its own listener" if (target, target_key) == (name, "listen") else
                          f"the [{target}] listener" if target_key == "listen" else f"[{target}] {target_key}")
                report.problem(f"[{name}] next_hop = {hop} is {itself}: mail would loop through mailseal "
                               "instead of going back to the MTA")


def check_replay_window(cfg: config_mod.Config, broken: set, queue_lifetime: int, where: str,
                        report: Report) -> None:
    if cfg.inbound is None or not _usable(broken, "inbound", "replay_window"):
        return
    window = cfg.inbound.replay_window
    if window < queue_lifetime:
        report.problem(f"[inbound] replay_window = {_duration(window)} is shorter than a mail queue's lifetime "
                       f"({_duration(queue_lifetime)}, {where}): mail that waited in a queue would be refused "
                       "as too old")


def _duration(seconds: int) -> str:
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


# --- Postfix --------------------------------------------------------------------------

def _filter_port(value: str) -> int | None:
    """The port of a content_filter such as `mailseal-in:[127.0.0.1]:10027`."""
    m = re.fullmatch(r"[^:\s]+:\[?[^\]\s]*\]?:(\d+)", value.strip())
    return int(m.group(1)) if m else None


def _service_port(name: str) -> int | None:
    m = re.fullmatch(r"(?:.*:)?(\d+)", name)
    return int(m.group(1)) if m else None


def _limit(value: str) -> int | None:
    return int(value) if value.strip().isdigit() else None


def check_postfix(cfg: config_mod.Config, broken: set, pf: postconf.Postfix, report: Report) -> None:
    """docs/OPERATIONS.md section 4, for max_message_size = M."""
    from .gateway.inbound import sealed_size_limit

    if not _usable(broken, "server", "max_message_size"):
        return
    m = cfg.server.max_message_size
    inbound_limit = sealed_size_limit(m)
    where = f"Postfix ({pf.config_dir})"
    main_limit = _limit(pf.main.get("message_size_limit", ""))
    if main_limit is not None and main_limit != 0 and main_limit < int(m * SEALED_FACTOR):
        report.problem(f"{where} main.cf message_size_limit = {main_limit} is below {SEALED_FACTOR} x mailseal's "
                       f"max_message_size ({int(m * SEALED_FACTOR)}): sealed copies of large mail would bounce "
                       "at re-injection")
    for name in ("mailbox_size_limit", "virtual_mailbox_limit"):
        value = _limit(pf.main.get(name, ""))
        if value and main_limit and value < main_limit:
            report.problem(f"{where} main.cf {name} = {value} is smaller than message_size_limit = {main_limit}: "
                           "Postfix's delivery agents refuse to start; make it at least as large (or 0)")
    listeners = dict(_listeners(cfg, broken))
    next_hops = {s.next_hop.endpoint.port for s in listeners.values() if s.next_hop.endpoint is not None}
    for service in pf.services:
        if service.type != "inet" or service.command != "smtpd" or _service_port(service.name) in next_hops:
            continue  # mailseal's own next hops re-inject what it already took
        port = _filter_port(service.get(pf.main, "content_filter"))
        limit = _limit(service.get(pf.main, "message_size_limit"))
        if limit is None:
            continue
        shown = "no limit" if limit == 0 else str(limit)
        label = f"{where} service {service.name}/{service.type}: message_size_limit = {shown}"
        if "outbound" in listeners and port == listeners["outbound"].listen.port and (limit == 0 or limit > m):
            report.problem(f"{label} is above mailseal's max_message_size ({m}): mail it takes would be refused "
                           f"by the outbound listener (552) and bounced; set it to at most {m}")
        if "inbound" in listeners and port == listeners["inbound"].listen.port and \
                (limit == 0 or limit > inbound_limit):
            report.problem(f"{label} is above what the inbound listener takes ({inbound_limit}, a sealed copy of "
                           f"max_message_size): set it to at most {inbound_limit}")


def _feeds_mailseal(cfg: config_mod.Config, pf: postconf.Postfix) -> bool:
    ports = {section.listen.port for section in (cfg.outbound, cfg.inbound) if section is not None}
    filters = [pf.main.get("content_filter", "")] + [s.overrides.get("content_filter", "") for s in pf.services]
    return any(_filter_port(f) in ports for f in filters)


def _queue_lifetime(pf: postconf.Postfix | None) -> tuple[int, str]:
    """How long mail may wait in a queue: partners' Postfix default, or
    this host's own maximal_queue_lifetime where it is longer."""
    if pf is not None:
        try:
            value = config_mod.parse_duration(pf.main.get("maximal_queue_lifetime", ""), "maximal_queue_lifetime")
        except config_mod.ConfigError:
            value = 0
        if value > QUEUE_LIFETIME:
            return value, "maximal_queue_lifetime here"
    return QUEUE_LIFETIME, "Postfix's default maximal_queue_lifetime"


# --- all of it --------------------------------------------------------------------------

def check(path: Path, *, postfix_dir: Path | None = None, postfix_asked: bool = False,
          now: float | None = None) -> Report:
    report = Report([], [])
    cfg, broken = load_all(path, report)
    report.config = cfg
    if cfg is None:
        return report
    if cfg.outbound is None and cfg.inbound is None and _usable(broken, ""):
        report.problem("no [outbound] or [inbound] section: `mailseal serve` would have nothing to run")
    if all(_usable(broken, "keystore", key) for key in ("path", "master_key_file", "passphrase_env")):
        check_keystore(cfg, report, time.time() if now is None else now)
    check_listeners(cfg, broken, report)
    pf = None
    try:
        pf = postconf.read(postfix_dir)
    except postconf.PostconfError as exc:
        if postfix_asked:
            report.problem(f"Postfix: {exc}")
        else:
            report.notes.append(f"Postfix sizes not compared: {exc}")
    if pf is not None and not _feeds_mailseal(cfg, pf):
        # A Postfix that hands nothing to mailseal is not the one in front of it.
        text = f"Postfix ({pf.config_dir}) hands no mail to mailseal's listeners (no content_filter names them)"
        if postfix_asked:
            report.problem(text)
        else:
            report.notes.append(f"{text}: sizes not compared")
        pf = None
    if pf is not None:
        check_postfix(cfg, broken, pf, report)
    lifetime, where = _queue_lifetime(pf)
    check_replay_window(cfg, broken, lifetime, where, report)
    return report
