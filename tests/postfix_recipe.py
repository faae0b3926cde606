"""A mail host built from the shipped recipe: a private Postfix instance whose
main.cf and master.cf are the site basics a test needs (paths, loopback, a
mailbox domain, where the "internet" is) followed by config/postfix/main.cf
and master.cf exactly as shipped, with only ports substituted; and a mailseal
daemon whose configuration is config/mailseal.production.toml with only
paths and ports substituted."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import threading
from pathlib import Path

from .conftest import ROOT
from .harness import Daemon, free_port, wait_for_port
from .postfix import MASTER_COMMON, Postfix

SHIPPED = ROOT / "config" / "postfix"
STOCK_SERVICES = MASTER_COMMON.split("# The content filter transport")[0]
SENDMAIL = shutil.which("sendmail") or "/usr/sbin/sendmail"
# The loopback ports of the shipped files, and what a test host calls them.
SHIPPED_PORTS = (("10025", "out"), ("10026", "out_reinject"), ("10027", "in"), ("10028", "in_reinject"),
                 ("10029", "forward"))


class RecipeHost(Postfix):
    """Postfix + mailseal for one domain, as an administrator following
    docs/OPERATIONS.md section 4 sets them up."""

    def __init__(self, domain: str, *, internet: int, aliases: dict[str, str] | None = None) -> None:
        self.name = domain
        self.domain = domain
        self.base = Path(tempfile.mkdtemp(prefix=f"mailseal-recipe-{domain}-"))
        os.chmod(self.base, 0o755)  # Postfix's daemons run as the postfix user
        self.etc, self.queue, self.data = self.base / "etc", self.base / "queue", self.base / "data"
        for d in (self.etc, self.queue, self.data, self.base / "mail"):
            d.mkdir()
        postfix_user, nobody = pwd.getpwnam("postfix"), pwd.getpwnam("nobody")
        os.chown(self.data, postfix_user.pw_uid, postfix_user.pw_gid)
        os.chown(self.base / "mail", nobody.pw_uid, nobody.pw_gid)
        self.maildir = self.base / "mail" / "maildir"
        self.ports = {name: free_port() for name in ("smtp", "submission", "out", "out_reinject", "in",
                                                     "in_reinject", "forward")}
        self.listen, self.reinject = self.ports["smtp"], self.ports["out_reinject"]
        site = [
            "compatibility_level = 3.6",
            f"queue_directory = {self.queue}",
            f"data_directory = {self.data}",
            "mail_owner = postfix",
            "setgid_group = postdrop",
            f"myhostname = mx.{domain}",
            "mydestination =",
            "inet_interfaces = 127.0.0.1",
            "inet_protocols = ipv4",
            "mynetworks = 127.0.0.0/8",
            "smtp_dns_support_level = disabled",
            f"relayhost = [127.0.0.1]:{internet}",
            f"maillog_file = {self.base / 'maillog'}",
            f"maillog_file_prefixes = {self.base}",
            "alias_maps =",
            "alias_database =",
            "biff = no",
            "queue_run_delay = 1s",
            "minimal_backoff_time = 1s",
            "maximal_backoff_time = 2s",
            "smtp_connect_timeout = 5s",
            f"virtual_mailbox_domains = {domain}",
            f"virtual_mailbox_base = {self.base / 'mail'}",
            "virtual_mailbox_maps = static:maildir/",
            f"virtual_uid_maps = static:{nobody.pw_uid}",
            f"virtual_gid_maps = static:{nobody.pw_gid}",
            "virtual_minimum_uid = 1",
        ]
        if aliases:
            site.append("virtual_alias_maps = inline:{" + ", ".join(f"{k}={v}" for k, v in aliases.items()) + "}")
        (self.etc / "main.cf").write_text("\n".join(site) + "\n\n" + self._ported((SHIPPED / "main.cf").read_text()))
        (self.etc / "master.cf").write_text(STOCK_SERVICES + "\n" + self._ported((SHIPPED / "master.cf").read_text()))
        self.mailseal = self._mailseal()

    def _ported(self, text: str) -> str:
        """A shipped file with only its ports moved to free ones."""
        text = re.sub(r"^smtp( +)inet", f"127.0.0.1:{self.ports['smtp']} inet", text, flags=re.M)
        text = re.sub(r"^submission inet", f"127.0.0.1:{self.ports['submission']} inet", text, flags=re.M)
        for shipped, ours in SHIPPED_PORTS:
            text = text.replace(f"127.0.0.1]:{shipped}", f"127.0.0.1]:{self.ports[ours]}")
            text = text.replace(f"127.0.0.1:{shipped} ", f"127.0.0.1:{self.ports[ours]} ")
        return text

    def _mailseal(self) -> Daemon:
        text = (ROOT / "config" / "mailseal.production.toml").read_text()
        state = self.base / "mailseal"
        text = text.replace("/var/lib/mailseal", str(state)).replace("/etc/mailseal", str(state))
        for shipped, ours in SHIPPED_PORTS:
            text = text.replace(f"127.0.0.1:{shipped}", f"127.0.0.1:{self.ports[ours]}")
        daemon = Daemon(state, outbound={}, inbound={})
        daemon.config.write_text(text)
        daemon.outbound_port, daemon.inbound_port = self.ports["out"], self.ports["in"]
        return daemon

    def start(self) -> RecipeHost:
        self.mailseal.start()
        result = self._postfix("start")
        if result.returncode != 0:
            raise RuntimeError(f"postfix {self.name} did not start:\n{result.stderr.decode()}\n{self.log()}")
        for port in (self.ports["smtp"], self.ports["submission"], self.ports["out_reinject"],
                     self.ports["in_reinject"]):
            wait_for_port(port)
        return self

    def stop(self) -> None:
        super().stop()
        self.mailseal.stop()

    def sendmail(self, sender: str, rcpt: str, data: bytes) -> subprocess.CompletedProcess:
        """The local `sendmail` a user or a cron job runs."""
        return subprocess.run([SENDMAIL, "-C", str(self.etc), "-f", sender, "-i", rcpt], input=data,
                              capture_output=True, timeout=60)


class Wire:
    """A TCP relay on loopback that records every byte one host sends
    another: what an observer on the internet between them sees."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.captured = bytearray()
        self.connections = 0
        self._lock = threading.Lock()
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=30)
            except OSError:
                client.close()
                continue
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, record: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if record:
                    with self._lock:
                        self.captured += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._stop = True
        self.sock.close()
