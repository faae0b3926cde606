"""Private Postfix instances for the tests: `postfix -c DIR`, loopback ports,
chroot off, short retry timers, logs in a file. Run as root (CI is)."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"

MASTER_COMMON = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
# The content filter transport, as config/postfix/master.cf has it.
mailseal  unix  -       -       n       -       10      smtp
  -o smtp_send_xforward_command=yes
  -o disable_mime_output_conversion=yes
  -o smtp_generic_maps=
"""

REINJECT = """\
127.0.0.1:{port} inet n  -       n       -       -       smtpd
  -o content_filter=
  -o receive_override_options=no_unknown_recipient_checks,no_header_body_checks,no_milters
  -o smtpd_helo_restrictions=
  -o smtpd_client_restrictions=
  -o smtpd_sender_restrictions=
  -o smtpd_recipient_restrictions=permit_mynetworks,reject
  -o mynetworks=127.0.0.0/8
  -o smtpd_authorized_xforward_hosts=127.0.0.0/8
"""


def available() -> bool:
    return os.geteuid() == 0 and os.path.exists(POSTFIX)


class Postfix:
    """One private instance. `listen` takes mail (through the content filter
    when `content_filter_port` is set); `reinject` takes it back from mailseal."""

    def __init__(self, name: str, *, hostname: str, listen: int, reinject: int, content_filter_port: int,
                 relay_to: int | None = None, virtual_domain: str | None = None) -> None:
        self.name = name
        self.base = Path(tempfile.mkdtemp(prefix=f"mailseal-postfix-{name}-"))
        os.chmod(self.base, 0o755)  # Postfix's daemons run as the postfix user
        self.etc, self.queue, self.data = self.base / "etc", self.base / "queue", self.base / "data"
        for d in (self.etc, self.queue, self.data):
            d.mkdir()
        postfix_user = pwd.getpwnam("postfix")
        os.chown(self.data, postfix_user.pw_uid, postfix_user.pw_gid)
        self.listen, self.reinject = listen, reinject
        self.maildir = self.base / "mail" / "maildir"
        main = [
            "compatibility_level = 3.6",
            f"queue_directory = {self.queue}",
            f"data_directory = {self.data}",
            "mail_owner = postfix",
            "setgid_group = postdrop",
            f"myhostname = {hostname}",
            "mydestination =",
            "inet_interfaces = 127.0.0.1",
            "inet_protocols = ipv4",
            "mynetworks = 127.0.0.0/8",
            "smtp_dns_support_level = disabled",
            f"maillog_file = {self.base / 'maillog'}",
            f"maillog_file_prefixes = {self.base}",
            "alias_maps =",
            "alias_database =",
            "biff = no",
            "smtputf8_enable = yes",
            "message_size_limit = 100000000",
            "queue_run_delay = 1s",
            "minimal_backoff_time = 1s",
            "maximal_backoff_time = 2s",
            "smtp_connect_timeout = 5s",
            "smtpd_recipient_restrictions = permit_mynetworks, reject",
            f"content_filter = mailseal:[127.0.0.1]:{content_filter_port}",
        ]
        if relay_to is not None:
            main.append(f"relayhost = [127.0.0.1]:{relay_to}")
        if virtual_domain is not None:
            nobody = pwd.getpwnam("nobody")
            (self.base / "mail").mkdir()
            os.chown(self.base / "mail", nobody.pw_uid, nobody.pw_gid)
            main += [f"virtual_mailbox_domains = {virtual_domain}",
                     f"virtual_mailbox_base = {self.base / 'mail'}",
                     "virtual_mailbox_maps = static:maildir/",
                     f"virtual_uid_maps = static:{nobody.pw_uid}",
                     f"virtual_gid_maps = static:{nobody.pw_gid}",
                     "virtual_minimum_uid = 1", "virtual_mailbox_limit = 0"]
        (self.etc / "main.cf").write_text("\n".join(main) + "\n")
        self.write_master(reinject_enabled=True)

    def write_master(self, reinject_enabled: bool) -> None:
        master = f"127.0.0.1:{self.listen} inet n - n - - smtpd\n" + MASTER_COMMON
        if reinject_enabled:
            master += REINJECT.format(port=self.reinject)
        (self.etc / "master.cf").write_text(master)

    def _postfix(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([POSTFIX, "-c", str(self.etc), *args], capture_output=True, timeout=60)

    def start(self) -> Postfix:
        result = self._postfix("start")
        if result.returncode != 0:
            raise RuntimeError(f"postfix {self.name} did not start:\n{self.log()}")
        from .harness import wait_for_port

        wait_for_port(self.listen)
        wait_for_port(self.reinject)
        return self

    def reload(self) -> None:
        self._postfix("reload")

    def flush(self) -> None:
        self._postfix("flush")

    def stop(self) -> None:
        self._postfix("stop")
        # master exits asynchronously; wait for its lock to go
        deadline = time.time() + 15
        while (self.data / "master.lock").exists() and time.time() < deadline:
            try:
                pid = int((self.data / "master.lock").read_text().split()[0])
                os.kill(pid, 0)
            except (OSError, ValueError, IndexError):
                break
            time.sleep(0.1)

    def cleanup(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)

    def log(self) -> str:
        path = self.base / "maillog"
        return path.read_text(errors="replace") if path.exists() else ""

    def queued(self) -> int:
        """Messages still in the queue (incoming, active, deferred, hold)."""
        return sum(1 for sub in ("incoming", "active", "deferred", "hold", "maildrop")
                   for p in (self.queue / sub).rglob("*") if p.is_file())

    def delivered(self) -> list[bytes]:
        new = self.maildir / "new"
        return [p.read_bytes() for p in sorted(new.iterdir())] if new.is_dir() else []

    def wait(self, predicate, timeout: float = 60.0, what: str = "condition") -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if predicate():
                return
            time.sleep(0.2)
        raise TimeoutError(f"{what} not reached; {self.name} log:\n{self.log()[-4000:]}")
