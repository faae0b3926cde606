"""Examples at the end of each subcommand's --help (argparse epilogs).

Kept apart from the parsers so a new subcommand gets its examples in one
place; tests/test_packaging.py checks that every subcommand has some.
"""

from __future__ import annotations

import argparse

EXAMPLES = {
    "": """\
  mailseal keys init                       # the keystore (serve never makes one)
  mailseal keys generate @example.org      # our post-quantum identity
  mailseal check-config                    # every problem, one line each
  mailseal serve                           # run the listeners
  mailseal keys list -c /etc/mailseal/mailseal.toml   # -c before or after the subcommand""",
    "keygen": """\
  mailseal keygen -o me.key                # post-quantum identity, mode 0600
  mailseal keygen --classic -o old.key     # X25519, for partners on older tools
  mailseal keygen --signing hybrid -o sign.key""",
    "seal": """\
  mailseal seal -r age1pq1… < msg.eml > sealed.eml
  mailseal seal -R team.txt --to bob@example.org < msg.eml > sealed.eml
  mailseal seal -r age1pq1… --sign sign.key --signer example.org < msg.eml > sealed.eml""",
    "open": """\
  mailseal open -i me.key < sealed.eml > msg.eml
  mailseal open -i me.key --for bob@example.org < sealed.eml     # exit 1 unless sealed for bob
  mailseal open -i me.key --verify partner.card < sealed.eml""",
    "serve": """\
  mailseal serve -c /etc/mailseal/mailseal.toml
  make run                                 # the same on loopback with config/mailseal.toml""",
    "quarantine": """\
  mailseal quarantine list
  mailseal quarantine show ID              # metadata, then the message as received
  mailseal quarantine release ID           # sealed mail is opened again
  mailseal quarantine release ID --as-is   # deliver as received
  mailseal quarantine delete ID
  mailseal quarantine purge --max-age 30d --max-size 1GB   # oldest first""",
    "explain": """\
  mailseal explain bob@partner.example     # policy, key chosen, inbound policy, and why
  mailseal explain bob@partner.example --json""",
    "check-config": """\
  mailseal check-config
  mailseal check-config --postfix-config /etc/postfix   # compare sizes with that Postfix
  mailseal check-config --startup          # keys about to expire do not fail (systemd)""",
    "keys": """\
  mailseal keys init
  mailseal keys generate @example.org
  mailseal keys list @partner.example""",
    "keys init": """\
  mailseal keys init                       # creates it; on an existing keystore, says what it holds""",
    "keys generate": """\
  mailseal keys generate @example.org                # one identity for the domain
  mailseal keys generate bob@example.org --expires 365d
  mailseal keys generate old@example.org --classic --signing ed25519""",
    "keys import": """\
  mailseal keys import @partner.example partner.card   # checks the card's fingerprint
  mailseal keys import carol@partner.example age1pq1…
  cat keys.txt | mailseal keys import @partner.example -""",
    "keys import-secret": """\
  P12_PASSWORD=… mailseal keys import-secret bob@example.org bob.p12 --password-env P12_PASSWORD
  gpg --export-secret-keys bob@example.org | mailseal keys import-secret bob@example.org -""",
    "keys export": """\
  mailseal keys export @example.org > example.org.card""",
    "keys list": """\
  mailseal keys list
  mailseal keys list bob@partner.example   # the keys that serve this address
  mailseal keys list @partner.example --json""",
    "keys show": """\
  mailseal keys show @partner.example      # read the fingerprint to your partner
  mailseal keys show ABCD-EFGH-IJKL-MNOP""",
    "keys revoke": """\
  mailseal keys revoke ABCD-EFGH-IJKL-MNOP --reason "laptop lost"
  mailseal keys revoke bob@partner.example --all     # every key bob has""",
    "keys rotate": """\
  mailseal keys rotate @example.org        # new key; the old one still opens mail in flight
  mailseal keys export @example.org > example.org.card""",
    "keys delete": """\
  mailseal keys delete ABCD-EFGH-IJKL-MNOP # for good: mail sealed to it no longer opens""",
    "keys backup": """\
  mailseal keys backup /root/keystore-$(date +%F).backup   # sealed under the master key
  mailseal keys backup offsite.backup --passphrase-file /root/backup-passphrase""",
    "keys restore": """\
  mailseal keys restore /root/keystore-2026-11-30.backup   # into a fresh state directory
  mailseal keys restore offsite.backup --passphrase-file /root/backup-passphrase --force""",
    "keys audit": """\
  mailseal keys audit
  mailseal keys audit --verify             # check the hash chain; note the head hash""",
    "policy": """\
  mailseal policy set @partner.example require
  mailseal policy list""",
    "policy set": """\
  mailseal policy set @partner.example require       # never in clear to them
  mailseal policy set intranet@example.org plain
  mailseal policy set --inbound @partner.example signed""",
    "policy unset": """\
  mailseal policy unset @partner.example
  mailseal policy unset --inbound @partner.example""",
    "policy list": """\
  mailseal policy list
  mailseal policy list --inbound --json""",
}


def add_examples(parser: argparse.ArgumentParser, path: str = "") -> None:
    """Give parser and each of its subcommands their examples."""
    if path in EXAMPLES:
        parser.epilog = "examples:\n" + EXAMPLES[path]
        parser.formatter_class = argparse.RawDescriptionHelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                add_examples(sub, f"{path} {name}".strip())
