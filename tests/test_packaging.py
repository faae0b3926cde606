"""What ships besides the code: example configs, the systemd unit, the
Postfix snippets, and the README's two commands."""

from __future__ import annotations

import configparser
import contextlib
import io
import os
import re
import shutil
import signal
import smtplib
import subprocess
import sys
import time
import zipfile

import pytest

from mailseal import config as config_mod

from .conftest import ROOT, run_cli
from .harness import free_port, wait_for_port


@pytest.mark.parametrize("name", ["mailseal.toml", "mailseal.production.toml"])
def test_example_configs_are_valid(name):
    cfg = config_mod.load(ROOT / "config" / name)
    assert cfg.outbound is not None and cfg.inbound is not None
    assert all(str(n) in ("127.0.0.0/8", "::1/128") for n in cfg.server.allowed_clients)


def test_systemd_unit_has_the_hardening_the_design_asks_for():
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    text = (ROOT / "systemd" / "mailseal.service").read_text()
    unit.read_string(text)
    service = unit["Service"]
    assert service["Type"] == "notify" and service["User"] == "mailseal"
    for key in ("StateDirectory", "ConfigurationDirectory", "LoadCredential", "ProtectSystem",
                "NoNewPrivileges", "SystemCallFilter", "RestrictAddressFamilies", "ExecReload"):
        assert key in service, key
    assert service["ProtectSystem"] == "strict" and service["NoNewPrivileges"] == "yes"
    assert service["LoadCredential"].startswith("mailseal-master-key:")
    assert set(service["RestrictAddressFamilies"].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    from mailseal.keystore.masterkey import CREDENTIAL_NAME

    assert CREDENTIAL_NAME == "mailseal-master-key"


def test_postfix_snippets_match_the_production_ports():
    cfg = config_mod.load(ROOT / "config" / "mailseal.production.toml")
    master = (ROOT / "config" / "postfix" / "master.cf").read_text()
    main = (ROOT / "config" / "postfix" / "main.cf").read_text()
    assert f"content_filter = mailseal-out:[127.0.0.1]:{cfg.outbound.listen.port}" in main
    assert f"127.0.0.1:{cfg.outbound.next_hop.endpoint.port} inet" in master
    assert f"content_filter=mailseal-in:[127.0.0.1]:{cfg.inbound.listen.port}" in master
    assert f"127.0.0.1:{cfg.inbound.next_hop.endpoint.port} inet" in master
    assert "smtp_send_xforward_command=yes" in master
    # Sizes agree (docs/OPERATIONS.md): users' side at most mailseal's limit,
    # port 25 at most what the inbound listener takes, the rest at least that.
    from mailseal.gateway.inbound import sealed_size_limit

    limits = dict(re.findall(r"^(\w+_limit) = (\d+)$", main, re.M))
    submission = re.search(r"^submission inet.*?(?=^\S)", master, re.M | re.S).group(0)
    smtp = re.search(r"^smtp +inet.*?(?=^\S)", master, re.M | re.S).group(0)
    m = cfg.server.max_message_size
    assert int(re.search(r"message_size_limit=(\d+)", submission).group(1)) <= m
    assert m < int(re.search(r"message_size_limit=(\d+)", smtp).group(1)) <= sealed_size_limit(m)
    assert int(limits["message_size_limit"]) >= m * 137 // 100
    for name in ("mailbox_size_limit", "virtual_mailbox_limit"):
        assert int(limits[name]) >= int(limits["message_size_limit"]), name


def test_readme_starts_with_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    first_block = readme.split("```")[1]
    assert "make run" in first_block and "make test" in first_block


def test_readme_commands_are_commands_one_can_type():
    """Each line of the README's command block runs as written (no `a | b` shorthand)."""
    from mailseal.cli import build_parser

    block = (ROOT / "README.md").read_text().split("## The gateway")[1].split("```sh")[1].split("```")[0]
    parser = build_parser()
    for line in filter(None, (ln.split("#")[0].strip() for ln in block.splitlines())):
        words = line.split()[1:]
        if "|" in line:  # a choice between subcommands, as in `quarantine list|show`
            assert words[0] == "quarantine", line
            continue
        if words[:2] == ["keys", "export"]:
            words = words[:3]  # the redirection is the shell's
        parser.parse_args(words)  # exits 2 on a line that is not a command


def test_make_run_starts_the_gateway_and_seals_into_the_maildir(tmp_path):
    """`make run` with a copy of config/mailseal.toml on free ports."""
    text = (ROOT / "config" / "mailseal.toml").read_text()
    out_port, in_port = free_port(), free_port()
    text = text.replace("127.0.0.1:10025", f"127.0.0.1:{out_port}").replace("127.0.0.1:10027", f"127.0.0.1:{in_port}")
    text = text.replace("../run/", f"{tmp_path}/run/").replace('"../run"', f'"{tmp_path}/run"')
    cfg = tmp_path / "mailseal.toml"
    cfg.write_text(text)
    assert run_cli("-c", str(cfg), "keys", "generate", "bob@demo.test").returncode == 0
    card = run_cli("-c", str(cfg), "keys", "export", "bob@demo.test").stdout
    assert run_cli("-c", str(cfg), "keys", "import", "bob@demo.test", "-", input=card).returncode == 0
    proc = subprocess.Popen(["make", "-s", "-C", str(ROOT), "run", f"CONFIG={cfg}"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_port(out_port, timeout=120, proc=proc)
        said = ""
        for _ in range(500):  # what make run says before serve starts (pip's lines first if it installs)
            said += proc.stdout.readline().decode()
            if "Ctrl-C" in said:
                break
        assert f"127.0.0.1:{out_port} (outbound) is sealed and goes to the Maildir {tmp_path}/run/outbox" in said
        assert f"127.0.0.1:{in_port} (inbound) is opened and goes to the Maildir {tmp_path}/run/inbox" in said
        assert "Ctrl-C stops the gateway" in said and "make demo" in said
        message = b"From: alice@demo.test\r\nTo: bob@demo.test\r\nSubject: hello\r\n\r\nsecret\r\n"
        with smtplib.SMTP("127.0.0.1", out_port) as smtp:
            smtp.sendmail("alice@demo.test", ["bob@demo.test"], message)
        outbox = tmp_path / "run" / "outbox" / "new"
        deadline = time.time() + 10
        while not (outbox.is_dir() and any(outbox.iterdir())) and time.time() < deadline:
            time.sleep(0.05)
        [stored] = list(outbox.iterdir())
        sealed = stored.read_bytes()
        assert b"multipart/encrypted" in sealed and b"secret" not in sealed
        assert re.search(rb"Mailseal-Serial: [0-9a-f]{32}", sealed)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


def test_make_demo_shows_sealed_and_opened_forms(tmp_path):
    text = (ROOT / "config" / "mailseal.toml").read_text()
    text = text.replace("127.0.0.1:10025", f"127.0.0.1:{free_port()}").replace("127.0.0.1:10027", f"127.0.0.1:{free_port()}")
    text = text.replace("../run/", f"{tmp_path}/run/").replace('"../run"', f'"{tmp_path}/run"')
    cfg = tmp_path / "mailseal.toml"
    cfg.write_text(text)
    result = subprocess.run(["make", "-s", "-C", str(ROOT), "demo", f"CONFIG={cfg}"], capture_output=True,
                            timeout=300)
    out = result.stdout.decode()
    assert result.returncode == 0, out + result.stderr.decode()
    sealed_part = out.split("== 2.")[1].split("== 3.")[0]
    assert "multipart/encrypted" in sealed_part and "Subject: [...]" in sealed_part
    assert "revenue is up" not in sealed_part
    opened_part = out.split("== 4.")[1]
    assert "Mailseal-Status: opened" in opened_part and "revenue is up 12%" in opened_part
    assert "byte for byte (apart from the trace header): True" in out


def _built_wheel(tmp_path):
    """The wheel `pip wheel` makes of this checkout, offline (a copy, so no build/ is left here)."""
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".venv", ".git", "run", "build", "*.egg-info", "__pycache__", ".pytest_cache", ".hypothesis", "bench",
        "tests"))
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                             "--quiet", "-w", str(tmp_path / "dist"), str(src)], capture_output=True, timeout=300)
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    [wheel] = (tmp_path / "dist").glob("mailseal-*.whl")
    return zipfile.ZipFile(wheel)


def test_the_wheel_carries_configs_unit_sysusers_and_docs(tmp_path):
    from mailseal import __version__

    wheel = _built_wheel(tmp_path)
    data = f"mailseal-{__version__}.data/data/"
    shipped = {
        "share/mailseal/config/mailseal.toml": "config/mailseal.toml",
        "share/mailseal/config/mailseal.production.toml": "config/mailseal.production.toml",
        "share/mailseal/postfix/main.cf": "config/postfix/main.cf",
        "share/mailseal/postfix/master.cf": "config/postfix/master.cf",
        "share/mailseal/systemd/mailseal.service": "systemd/mailseal.service",
        "share/mailseal/systemd/mailseal.sysusers.conf": "systemd/mailseal.sysusers.conf",
        "share/doc/mailseal/OPERATIONS.md": "docs/OPERATIONS.md",
        "share/doc/mailseal/FORMAT.md": "docs/FORMAT.md",
        "share/doc/mailseal/README.md": "README.md",
    }
    for installed, source in shipped.items():
        assert wheel.read(data + installed) == (ROOT / source).read_bytes(), installed
    # The unit's Documentation= names files the wheel installs under the
    # prefix its ExecStart= runs mailseal from (/opt/mailseal: a venv).
    unit = (ROOT / "systemd" / "mailseal.service").read_text()
    prefix = re.search(r"^ExecStart=(\S+)/bin/mailseal serve$", unit, re.M).group(1)
    documents = re.findall(r"^Documentation=(.+)$", unit, re.M)
    urls = [u for line in documents for u in line.split()]
    assert urls and all(u.startswith(f"file://{prefix}/") for u in urls), urls
    for url in urls:
        assert data + url.removeprefix(f"file://{prefix}/") in wheel.namelist(), url
    ops = (ROOT / "docs" / "OPERATIONS.md").read_text()
    assert "systemd-sysusers" in ops and "mailseal.sysusers.conf" in ops


def _subcommands(parser, path=()):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name)
                yield from _subcommands(sub, (*path, name))


def test_every_subcommand_has_help_with_examples():
    from mailseal.cli import build_parser

    commands = list(_subcommands(build_parser()))
    assert ("keys", "init") in commands and ("check-config",) in commands
    for command in [()] + commands:
        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exited:
            build_parser().parse_args([*command, "--help"])
        text = out.getvalue()
        assert exited.value.code == 0, command
        examples = text.split("\nexamples:\n", 1)[1].splitlines() if "\nexamples:\n" in text else []
        assert examples and all(e.startswith("  ") for e in examples), (command, text)
        # each example uses the command it documents
        assert any(" ".join(("mailseal", *command)) in e for e in examples), (command, examples)
