"""Mutation testing of mailseal's security-critical modules (`make mutate`).

Each mutant (tools/mutants.py: one small change at a time) is written into a
scratch copy of the repository and the module's own tests (tools/mutate.toml)
run against it: a failing run kills the mutant, a passing one lets it
survive. The score of a module is killed / (mutants - equivalent), where the
equivalent mutants (tools/mutate-equivalent.toml) are listed by hand, each
with a one-line reason, and not run.

Why not mutmut: it copies the tree into mutants/, where `../shared/vectors`
no longer resolves and the tests that start `mailseal serve` from the
repository root would start the unmutated code. Here the scratch copy lives
in a temporary directory, MAILSEAL_VECTORS points the vector tests at the
real `../shared/vectors`, and PYTHONPATH (which the test harness passes on
to every daemon and CLI child) points at the copy, so child processes run
the mutant too.

Usage:
  tools/mutate.py                              every module in tools/mutate.toml
  tools/mutate.py --module replay --module age/stream
  tools/mutate.py --sample 40 --seed 1         a random sample of the mutants
  tools/mutate.py --list --module policy       the mutants, without running
  tools/mutate.py --module bundle --grep :120:  only the mutants of line 120
Exit status 1 when a score is below the threshold (the overall score for a
sampled run), 2 for a usage or set-up error.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mutants import Mutant, find_mutants  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "tools" / "mutate.toml"
PYTEST = ("-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-p", "no:randomly")


class SetupError(Exception):
    pass


@dataclass
class Module:
    name: str  # e.g. "age/stream"
    tests: list[str]
    mutants: list[Mutant] = field(default_factory=list)
    equivalent: dict[str, str] = field(default_factory=dict)  # key -> reason
    results: dict[str, str] = field(default_factory=dict)  # key -> killed|survived|timeout

    @property
    def path(self) -> str:
        return f"mailseal/{self.name}.py"


def load_config(path: Path) -> tuple[dict, dict[str, Module]]:
    config = tomllib.loads(path.read_text())
    modules = {name: Module(name, list(tests)) for name, tests in config["modules"].items()}
    equivalents = tomllib.loads((REPO / config["equivalents"]).read_text()).get("equivalent", [])
    for entry in equivalents:
        if entry["module"] not in modules:
            raise SetupError(f"{config['equivalents']}: unknown module {entry['module']!r}")
        if not entry.get("reason", "").strip():
            raise SetupError(f"{config['equivalents']}: {entry['mutant']!r} has no reason")
        modules[entry["module"]].equivalent[entry["mutant"]] = entry["reason"]
    return config, modules


class Scratch:
    """A throw-away copy of the repository (what git tracks, and new files)."""

    def __init__(self, env: dict[str, str], pytest_args: list[str]) -> None:
        self.pytest_args = pytest_args
        self.root = Path(tempfile.mkdtemp(prefix="mailseal-mutate-"))
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                                cwd=REPO, capture_output=True, check=True).stdout
        for name in filter(None, listed.decode().split("\0")):
            source = REPO / name
            if source.is_file():
                target = self.root / name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target)
        self.env = {**env, "PYTHONPATH": str(self.root), "PYTHONDONTWRITEBYTECODE": "1"}
        where = subprocess.run([sys.executable, "-c", "import mailseal; print(mailseal.__file__)"],
                               cwd=self.root, env=self.env, capture_output=True, text=True).stdout.strip()
        if not where.startswith(str(self.root)):
            raise SetupError(f"the tests would import mailseal from {where!r}, not from the scratch copy")

    def write(self, module: str, source: bytes) -> None:
        (self.root / module).write_bytes(source)

    def run(self, tests: list[str], timeout: float) -> tuple[str, float, str]:
        """(killed|survived|timeout, seconds, output tail) of one test run."""
        shutil.rmtree(self.root / ".hypothesis", ignore_errors=True)  # no examples carried over
        log = self.root / ".mutate-run.log"
        started = time.monotonic()
        with open(log, "wb") as out:
            proc = subprocess.Popen([sys.executable, *PYTEST, *self.pytest_args, *tests], cwd=self.root, env=self.env,
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                code = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                code = None
            finally:
                _kill_group(proc)
        seconds = time.monotonic() - started
        tail = log.read_text(errors="replace")[-3000:]
        if code is None:
            return "timeout", seconds, tail
        if code == 0:
            return "survived", seconds, tail
        if code in (4, 5):  # usage error, no tests collected: the configuration is wrong
            raise SetupError(f"pytest exited with {code} for {tests}:\n{tail}")
        return "killed", seconds, tail

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _kill_group(proc: subprocess.Popen) -> None:
    """Whatever the run left behind (daemons of a test that hung) goes with it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def tests_environment() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("MAILSEAL_VECTORS", str(REPO.parent / "shared" / "vectors"))
    typage = REPO / ".venv" / "node" / "node_modules" / "age-encryption" / "dist" / "index.js"
    if typage.is_file():
        env.setdefault("MAILSEAL_TYPAGE", str(typage))  # what `make test` installed in the repository
    if not Path(env["MAILSEAL_VECTORS"]).is_dir():
        print(f"warning: no age test vectors at {env['MAILSEAL_VECTORS']} (set MAILSEAL_VECTORS): "
              "the vector tests will not run", file=sys.stderr)
    return env


def select(modules: dict[str, Module], names: list[str]) -> list[Module]:
    if not names:
        return list(modules.values())
    unknown = [n for n in names if n not in modules]
    if unknown:
        raise SetupError(f"unknown module(s) {', '.join(unknown)}; tools/mutate.toml knows {', '.join(modules)}")
    return [modules[n] for n in names]


def run(selected: list[Module], chosen: set[tuple[str, str]], config: dict, seed: int, verbose: bool) -> None:
    # One Hypothesis seed for every run: a mutant is killed or not, not sometimes.
    scratch = Scratch(tests_environment(), [f"--hypothesis-seed={seed}"])
    try:
        for module in selected:
            todo = [m for m in module.mutants if (module.name, m.key) in chosen]
            if not todo:
                continue
            source = (REPO / module.path).read_bytes()
            status, baseline, tail = scratch.run(module.tests, timeout=3600)
            if status != "survived":
                raise SetupError(f"the tests of {module.name} fail without any mutant:\n{tail}")
            timeout = baseline * config["timeout_factor"] + config["timeout_grace"]
            print(f"{module.name}: {len(todo)} mutants, clean run {baseline:.1f} s, timeout {timeout:.0f} s",
                  file=sys.stderr, flush=True)
            for index, mutant in enumerate(todo, 1):
                scratch.write(module.path, mutant.apply(source))
                try:
                    status, seconds, tail = scratch.run(module.tests, timeout)
                finally:
                    scratch.write(module.path, source)
                module.results[mutant.key] = status
                print(f"  [{index}/{len(todo)}] {status:8} {seconds:5.1f} s  {mutant.describe()}",
                      file=sys.stderr, flush=True)
                if verbose and status == "survived":
                    print(tail, file=sys.stderr)
    finally:
        scratch.remove()


def score(module: Module) -> tuple[int, int, int, float | None]:
    killed = sum(1 for s in module.results.values() if s == "killed")
    timeout = sum(1 for s in module.results.values() if s == "timeout")
    survived = sum(1 for s in module.results.values() if s == "survived")
    ran = killed + timeout + survived
    return killed, timeout, survived, (100.0 * (killed + timeout) / ran if ran else None)


def report(selected: list[Module], sampled: str | None) -> list[dict]:
    rows = []
    print(f"\nmutation score{' (' + sampled + ')' if sampled else ''}")
    print(f"{'module':22} {'mutants':>7} {'killed':>6} {'timeout':>7} {'survived':>8} {'equivalent':>10} {'score':>7}")
    for module in selected:
        killed, timeout, survived, pct = score(module)
        equivalent = sum(1 for m in module.mutants if m.key in module.equivalent)
        shown = f"{pct:6.1f}%" if pct is not None else "      -"
        print(f"{module.name:22} {len(module.mutants):7} {killed:6} {timeout:7} {survived:8} {equivalent:10} {shown}")
        rows.append({"module": module.name, "mutants": len(module.mutants), "killed": killed, "timeout": timeout,
                     "survived": survived, "equivalent": equivalent, "score": pct, "results": module.results,
                     "survivors": [m.describe() for m in module.mutants if module.results.get(m.key) == "survived"]})
    survivors = [line for row in rows for line in row["survivors"]]
    if survivors:
        print(f"\nsurviving mutants ({len(survivors)}):")
        for line in survivors:
            print("  " + line)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--module", action="append", default=[], help="a module of tools/mutate.toml (repeatable)")
    parser.add_argument("--sample", type=int, help="run only this many mutants, chosen at random")
    parser.add_argument("--seed", type=int, default=0, help="the random seed of --sample")
    parser.add_argument("--threshold", type=float, help="minimum score in per cent (default: the config's)")
    parser.add_argument("--grep", help="only the mutants whose `file:line: key` matches this regular expression")
    parser.add_argument("--list", action="store_true", help="list the mutants and stop")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--hypothesis-seed", type=int, help="seed of the property tests (default: the config's)")
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("-v", "--verbose", action="store_true", help="show the test output of survivors")
    args = parser.parse_args(argv)
    # A SIGTERM unwinds like ^C: the scratch copy and the test run in progress go too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        config, modules = load_config(args.config)
        selected = select(modules, args.module)
        for module in selected:
            module.mutants = find_mutants(module.path, (REPO / module.path).read_bytes(), config["skip_calls"])
            stale = set(module.equivalent) - {m.key for m in module.mutants}
            if args.grep:
                module.mutants = [m for m in module.mutants if re.search(args.grep, f"{m.module}:{m.line}: {m.key}")]
            for key in sorted(stale):
                print(f"warning: {config['equivalents']} lists {module.name}: {key!r}, which is no mutant "
                      "(the code changed: update or remove the entry)", file=sys.stderr)
        if args.list:
            for module in selected:
                for m in module.mutants:
                    mark = "equivalent" if m.key in module.equivalent else m.operator
                    print(f"{m.module}:{m.line}: [{mark}] {m.key}")
            return 0
        runnable = [(mod.name, m.key) for mod in selected for m in mod.mutants if m.key not in mod.equivalent]
        sampled = None
        if args.sample is not None and args.sample < len(runnable):
            runnable = random.Random(args.seed).sample(runnable, args.sample)
            sampled = f"sample of {args.sample} mutants, seed {args.seed}"
        started = time.monotonic()
        seed = args.hypothesis_seed if args.hypothesis_seed is not None else config["hypothesis_seed"]
        run(selected, set(runnable), config, seed, args.verbose)
    except SetupError as exc:
        print(f"mutate: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    rows = report(selected, sampled)
    minutes = (time.monotonic() - started) / 60
    threshold = args.threshold if args.threshold is not None else config["threshold"]
    if sampled:
        killed = sum(r["killed"] + r["timeout"] for r in rows)
        ran = sum(r["killed"] + r["timeout"] + r["survived"] for r in rows)
        low = ran and 100.0 * killed / ran < threshold
        print(f"\noverall {100.0 * killed / max(ran, 1):.1f}% of {ran} sampled mutants "
              f"(threshold {threshold:g}%), {minutes:.1f} min")
    else:
        low = any(r["score"] is not None and r["score"] < threshold for r in rows)
        print(f"\nthreshold {threshold:g}% per module, {minutes:.1f} min")
    if args.json:
        args.json.write_text(json.dumps({"sampled": sampled, "threshold": threshold, "modules": rows}, indent=1))
    return 1 if low else 0


if __name__ == "__main__":
    sys.exit(main())
