"""The TOML configuration, validated into frozen dataclasses.

Every mistake is reported as ConfigError with where it is ("[inbound]
replay_window") and what is wrong; relative paths are relative to the
directory of the config file.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from . import headerfilter

DEFAULT_LOCATIONS = (Path("/etc/mailseal/mailseal.toml"), Path("config/mailseal.toml"))
POLICIES = ("require", "opportunistic", "plain")
MAX_CONNECTIONS = 100_000  # [server] max_connections and max_connections_per_client, at most
MAX_NEXT_HOP_CONNECTIONS = 1000


class ConfigError(ValueError):
    """The configuration cannot be used; the message says where and why."""


@dataclass(frozen=True)
class KeystoreConfig:
    path: Path
    master_key_file: Path | None
    passphrase_env: str | None  # derive the master key from this variable (Argon2id)
    parent_domains: bool = False
    # keys list, check-config and the daemon's daily log line warn this long
    # before a key in use expires
    expiry_warning: int = 14 * 86400


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class NextHop:
    endpoint: Endpoint | None = None
    maildir: Path | None = None
    starttls: bool = False  # require STARTTLS, with certificate checking
    ca_file: Path | None = None  # trust these CAs instead of the system's
    connections: int = 10  # at most this many open at once; further copies wait for one


FORMATS = ("age", "openpgp", "smime")


@dataclass(frozen=True)
class OutboundConfig:
    listen: Endpoint
    protocol: str
    next_hop: NextHop
    default_policy: str
    # "shadow": decide and log what would be sealed or refused, change nothing
    mode: str = "enforce"
    # The format a recipient gets: the first of these it has usable keys for
    # (a mailseal bundle, PGP/MIME, S/MIME), per recipient domain if listed.
    formats: tuple[str, ...] = FORMATS
    formats_by_domain: tuple[tuple[str, tuple[str, ...]], ...] = ()
    # A second outbound listener that seals but never signs: for mail that
    # came from outside and is forwarded (its envelope sender is nobody we
    # authenticated), e.g. Postfix's re-injection of opened mail.
    forward_listen: Endpoint | None = None

    def formats_for(self, domain: str) -> tuple[str, ...]:
        for name, order in self.formats_by_domain:
            if name == domain:
                return order
        return self.formats


@dataclass(frozen=True)
class InboundConfig:
    listen: Endpoint
    protocol: str
    next_hop: NextHop
    on_failure: str
    replay_window: int  # seconds
    max_clock_skew: int  # seconds
    # Version 1 bundles carry no recipient binding: opened (for the recipients
    # whose own keys open them) during the transition, refused once off.
    open_version1: bool = True
    # Header fields removed from opened mail (glob, case-insensitive);
    # Mailseal-* always goes, listed or not.
    strip_headers: tuple[str, ...] = headerfilter.DEFAULT_STRIP
    strip_headers_from_clear_mail: bool = False  # the list applies to clear mail too
    # "from-domain=signer-domain": mail From the first may be signed by the second.
    signer_aliases: tuple[tuple[str, str], ...] = ()
    quarantine_max_age: int | None = 30 * 86400  # seconds; None: no limit
    quarantine_max_size: int | None = 10**9  # bytes, all entries together; None: no limit


@dataclass(frozen=True)
class ServerConfig:
    allowed_clients: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    max_message_size: int
    state_dir: Path
    workers: int = 1  # processes sharing the listening ports (SO_REUSEPORT)
    idle_timeout: int = 300  # seconds a client may wait between commands
    data_timeout: int = 300  # seconds a client may go without sending a byte within DATA
    max_connections_per_client: int = 50  # per client address and process
    max_connections: int = 1000  # per process, all listeners together
    log_recipients: str = "full"  # or "domains", "count": what the per-message line says of recipients
    log_format: str = "text"  # or "json": one JSON object a line


@dataclass(frozen=True)
class MetricsConfig:
    listen: Endpoint  # GET /metrics (Prometheus) and /health


@dataclass(frozen=True)
class Config:
    source: Path | None
    keystore: KeystoreConfig
    server: ServerConfig
    outbound: OutboundConfig | None = None
    inbound: InboundConfig | None = None
    metrics: MetricsConfig | None = None  # off unless [metrics] listen is set
    extra: dict = field(default_factory=dict, repr=False)


_DURATION = re.compile(r"(\d+)\s*(s|m|h|d|w)?")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}
_SIZE = re.compile(r"(\d+)\s*(B|KB|MB|GB|KiB|MiB|GiB)?", re.I)
_SIZE_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def parse_duration(value: object, where: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    m = _DURATION.fullmatch(str(value).strip()) if isinstance(value, str) else None
    if not m:
        raise ConfigError(f"{where}: expected a duration such as \"7d\", \"1h\" or \"90s\", got {value!r}")
    return int(m.group(1)) * _UNITS[m.group(2)]


def parse_size(value: object, where: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    m = _SIZE.fullmatch(value.strip()) if isinstance(value, str) else None
    if not m or int(m.group(1)) == 0:
        raise ConfigError(f"{where}: expected a size such as \"50MB\", got {value!r}")
    return int(m.group(1)) * _SIZE_UNITS[(m.group(2) or "b").lower()]


def parse_limit(value: object, where: str, parse) -> int | None:
    """A duration or size limit; "none" (or 0) switches it off."""
    if value in ("none", 0, "0"):
        return None
    return parse(value, where)


def parse_header_patterns(value: list, where: str) -> tuple[str, ...]:
    if len(value) > headerfilter.MAX_PATTERNS:
        raise ConfigError(f"{where}: at most {headerfilter.MAX_PATTERNS} patterns, got {len(value)}")
    for pattern in value:
        problem = headerfilter.pattern_problem(pattern)
        if problem:
            raise ConfigError(f"{where}: {problem}")
    return tuple(value)


def parse_endpoint(value: object, where: str) -> Endpoint:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected \"host:port\", got {value!r}")
    m = re.fullmatch(r"\[([0-9a-fA-F:.]+)\]:(\d+)|([^:\[\]\s]+):(\d+)", value.strip())
    if not m:
        raise ConfigError(f"{where}: expected \"host:port\" (IPv6 as \"[::1]:port\"), got {value!r}")
    host = m.group(1) or m.group(3)
    port = int(m.group(2) or m.group(4))
    if not 0 < port < 65536:
        raise ConfigError(f"{where}: port {port} is out of range")
    return Endpoint(host, port)


class _Section:
    """Reads one TOML table, remembering which keys were used."""

    def __init__(self, data: dict, name: str, base: Path) -> None:
        if not isinstance(data, dict):
            raise ConfigError(f"[{name}] must be a table")
        self.data, self.name, self.base = data, name, base
        self.used: set[str] = set()

    def where(self, key: str) -> str:
        return f"[{self.name}] {key}"

    def get(self, key: str, default=None, kind: type | tuple = str):
        self.used.add(key)
        value = self.data.get(key, default)
        if value is not None and not isinstance(value, kind):
            raise ConfigError(f"{self.where(key)}: expected {getattr(kind, '__name__', kind)}, got {value!r}")
        return value

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.get(key, default)
        if value not in choices:
            raise ConfigError(f"{self.where(key)}: must be one of {', '.join(choices)}; got {value!r}")
        return value

    def path(self, key: str, default: str | None) -> Path | None:
        value = self.get(key, default)
        if value is None:
            return None
        if not value.strip():
            raise ConfigError(f"{self.where(key)}: empty path")
        return (self.base / os.path.expanduser(value)).resolve() if not os.path.isabs(value) else Path(value)

    def next_hop(self, key: str, default: str) -> NextHop:
        value = self.get(key, default)
        if value.startswith("maildir:"):
            path = value[len("maildir:"):]
            if not path:
                raise ConfigError(f"{self.where(key)}: maildir: needs a path")
            if "next_hop_connections" in self.data:
                raise ConfigError(f"{self.where('next_hop_connections')}: only for an SMTP next hop, "
                                  f"not {value!r}")
            return NextHop(maildir=Path(path) if os.path.isabs(path) else (self.base / path).resolve())
        ca_file = self.path("next_hop_ca_file", None)
        if ca_file is not None and not ca_file.is_file():
            raise ConfigError(f"{self.where('next_hop_ca_file')}: {ca_file} does not exist")
        return NextHop(endpoint=parse_endpoint(value, self.where(key)),
                       starttls=bool(self.get("next_hop_starttls", False, bool)), ca_file=ca_file,
                       connections=self.count("next_hop_connections", NextHop.connections,
                                              MAX_NEXT_HOP_CONNECTIONS))

    def count(self, key: str, default: int, maximum: int) -> int:
        self.used.add(key)
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
            raise ConfigError(f"{self.where(key)}: expected a number from 1 to {maximum}, got {value!r}")
        return value

    def check_unknown(self) -> None:
        unknown = set(self.data) - self.used
        if unknown:
            raise ConfigError(f"[{self.name}]: unknown setting(s) {', '.join(sorted(unknown))}")


def _signer_aliases(value: list, where: str) -> tuple[tuple[str, str], ...]:
    out = []
    for item in value:
        sender, sep, signer = str(item).partition("=")
        if not sep or not sender.strip() or not signer.strip() or "@" in sender + signer:
            raise ConfigError(f"{where}: {item!r} is not \"from-domain=signer-domain\"")
        out.append((sender.strip().lower(), signer.strip().lower()))
    return tuple(out)


def _timeout(section: _Section, key: str, default: str) -> int:
    value = parse_duration(section.get(key, default, (str, int)), section.where(key))
    if value < 1:
        raise ConfigError(f"{section.where(key)}: must be at least one second")
    return value


def _formats(value: object, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or any(v not in FORMATS for v in value) or \
            len(set(value)) != len(value):
        raise ConfigError(f"{where}: expected a list of distinct formats from {', '.join(FORMATS)}, got {value!r}")
    return tuple(value)


def _domain(name: str, where: str) -> str:
    from .addresses import AddressError, parse_owner

    try:
        return parse_owner("@" + name.removeprefix("@")).removeprefix("@")
    except AddressError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def find_config(explicit: str | None) -> Path | None:
    """-c, then $MAILSEAL_CONFIG, then the default locations; None if none exists."""
    if explicit:
        return Path(explicit)
    if os.environ.get("MAILSEAL_CONFIG"):
        return Path(os.environ["MAILSEAL_CONFIG"])
    return next((p for p in DEFAULT_LOCATIONS if p.is_file()), None)


def load(path: Path) -> Config:
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return from_dict(data, path.resolve().parent, source=path)


def from_dict(data: dict, base: Path, source: Path | None = None) -> Config:
    unknown = set(data) - {"keystore", "server", "outbound", "inbound", "metrics"}
    if unknown:
        raise ConfigError(f"unknown section(s) {', '.join(sorted('[' + u + ']' for u in unknown))}")

    ks = _Section(data.get("keystore", {}), "keystore", base)
    keystore = KeystoreConfig(
        path=ks.path("path", "/var/lib/mailseal/keystore.sqlite3"),
        master_key_file=ks.path("master_key_file", None),
        passphrase_env=ks.get("passphrase_env"),
        parent_domains=ks.get("parent_domains", False, bool),
        expiry_warning=parse_duration(ks.get("expiry_warning", "14d", (str, int)), ks.where("expiry_warning")),
    )
    if keystore.master_key_file is None and keystore.passphrase_env is None:
        keystore = dataclasses.replace(keystore, master_key_file=keystore.path.parent / "master.key")
    if keystore.master_key_file is not None and keystore.passphrase_env is not None:
        raise ConfigError("[keystore]: set master_key_file or passphrase_env, not both")
    ks.check_unknown()

    sv = _Section(data.get("server", {}), "server", base)
    clients = sv.get("allowed_clients", ["127.0.0.0/8", "::1/128"], list)
    try:
        networks = tuple(ipaddress.ip_network(c, strict=False) for c in clients)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"[server] allowed_clients: {exc}") from None
    server = ServerConfig(
        allowed_clients=networks,
        max_message_size=parse_size(sv.get("max_message_size", "50MB", (str, int)), sv.where("max_message_size")),
        state_dir=sv.path("state_dir", str(keystore.path.parent)),
        workers=sv.get("workers", 1, int),
        idle_timeout=_timeout(sv, "idle_timeout", "5m"),
        data_timeout=_timeout(sv, "data_timeout", "5m"),
        max_connections_per_client=sv.count("max_connections_per_client", 50, MAX_CONNECTIONS),
        max_connections=sv.count("max_connections", 1000, MAX_CONNECTIONS),
        log_recipients=sv.choice("log_recipients", "full", ("full", "domains", "count")),
        log_format=sv.choice("log_format", "text", ("text", "json")),
    )
    if isinstance(server.workers, bool) or not 1 <= server.workers <= 64:
        raise ConfigError(f"[server] workers: expected a number from 1 to 64, got {server.workers!r}")
    sv.check_unknown()

    outbound = inbound = None
    if "outbound" in data:
        ob = _Section(data["outbound"], "outbound", base)
        outbound = OutboundConfig(
            listen=parse_endpoint(ob.get("listen", "127.0.0.1:10025"), ob.where("listen")),
            protocol=ob.choice("protocol", "smtp", ("smtp", "lmtp")),
            next_hop=ob.next_hop("next_hop", "127.0.0.1:10026"),
            default_policy=ob.choice("default_policy", "opportunistic", POLICIES),
            mode=ob.choice("mode", "enforce", ("enforce", "shadow")),
            formats=_formats(ob.get("formats", list(FORMATS), list), ob.where("formats")),
            formats_by_domain=tuple(
                (_domain(name, ob.where("formats_by_domain")), _formats(order, ob.where(f"formats_by_domain.{name}")))
                for name, order in ob.get("formats_by_domain", {}, dict).items()),
            forward_listen=(parse_endpoint(ob.get("forward_listen"), ob.where("forward_listen"))
                            if ob.get("forward_listen") is not None else None),
        )
        if outbound.forward_listen == outbound.listen:
            raise ConfigError(f"{ob.where('forward_listen')}: must differ from [outbound] listen "
                              f"(one listener signs, the other never does)")
        ob.check_unknown()
    if "inbound" in data:
        ib = _Section(data["inbound"], "inbound", base)
        inbound = InboundConfig(
            listen=parse_endpoint(ib.get("listen", "127.0.0.1:10027"), ib.where("listen")),
            protocol=ib.choice("protocol", "smtp", ("smtp", "lmtp")),
            next_hop=ib.next_hop("next_hop", "127.0.0.1:10026"),
            on_failure=ib.choice("on_failure", "reject", ("reject", "quarantine")),
            replay_window=parse_duration(ib.get("replay_window", "7d", (str, int)), ib.where("replay_window")),
            max_clock_skew=parse_duration(ib.get("max_clock_skew", "1h", (str, int)), ib.where("max_clock_skew")),
            open_version1=ib.get("open_version1", True, bool),
            strip_headers=parse_header_patterns(ib.get("strip_headers", list(headerfilter.DEFAULT_STRIP), list),
                                                ib.where("strip_headers")),
            strip_headers_from_clear_mail=ib.get("strip_headers_from_clear_mail", False, bool),
            signer_aliases=_signer_aliases(ib.get("signer_aliases", [], list), ib.where("signer_aliases")),
            quarantine_max_age=parse_limit(ib.get("quarantine_max_age", "30d", (str, int)),
                                           ib.where("quarantine_max_age"), parse_duration),
            quarantine_max_size=parse_limit(ib.get("quarantine_max_size", "1GB", (str, int)),
                                            ib.where("quarantine_max_size"), parse_size),
        )
        ib.check_unknown()
    return Config(source, keystore, server, outbound, inbound, metrics=_metrics(data.get("metrics", {}), base))


def _metrics(data: dict, base: Path) -> MetricsConfig | None:
    mt = _Section(data, "metrics", base)
    listen = mt.get("listen")
    allow = mt.get("allow_non_loopback", False, bool)
    mt.check_unknown()
    if listen is None:
        return None
    endpoint = parse_endpoint(listen, mt.where("listen"))
    try:
        loopback = endpoint.host == "localhost" or ipaddress.ip_address(endpoint.host).is_loopback
    except ValueError:
        loopback = False
    if not loopback and not allow:
        raise ConfigError(f"[metrics] listen: {endpoint.host} is not a loopback address (the endpoint has no "
                          "authentication); set allow_non_loopback = true to serve it there anyway")
    return MetricsConfig(endpoint)
