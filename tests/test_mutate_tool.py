"""tools/mutants.py, the mutant generator behind `make mutate`, and its configuration."""

from __future__ import annotations

import importlib.util
import sys
import tomllib

from .conftest import ROOT


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"tools_{name}", ROOT / "tools" / f"{name}.py")
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


mutants = _load("mutants")

SOURCE = '''"""A docstring is never mutated."""
import logging

log = logging.getLogger(__name__)


def check(date: int, now: int, names: list[str]) -> bool:
    """Nor is this one."""
    if date < now - 7 and not names:
        raise ValueError("too old")
    if "x" in names or date == 0:
        return True
    log.info("checked %s", date)
    names.append("été" if date > 1 else "")  # non-ASCII before a mutated node: byte offsets
    return False
'''.encode()


def _changes(source: bytes) -> dict[str, bytes]:
    return {m.key: m.apply(source) for m in mutants.find_mutants("m.py", source, ["log.*"])}


def test_every_operator_once_per_site():
    found = mutants.find_mutants("m.py", SOURCE, ["log.*"])
    assert sorted({m.operator for m in found}) == ["bool", "boolop", "call", "cmp", "const", "not", "raise", "return"]
    changes = [m.change for m in found]
    for expected in ("`<` -> `<=`", "`and` -> `or`", "drop `not`", "`7` -> `8`", "`7` -> `6`", "delete `raise`",
                     "`in` -> `not in`", "`==` -> `!=`", "`or` -> `and`", "delete guard `return`",
                     "`True` -> `False`", "delete call `names.append(…)`"):
        assert expected in changes, expected
    assert not any("log.info" in c for c in changes)  # skipped calls stay
    assert all(m.line > 8 for m in found)  # nothing in the docstrings, imports or annotations


def test_a_mutant_is_one_edit_that_compiles():
    for key, mutated in _changes(SOURCE).items():
        assert mutated != SOURCE, key
        compile(mutated, "m.py", "exec")
    flipped = _changes(SOURCE)["check: if date < now - 7 and not names: :: `<` -> `<=`"]
    assert b"if (date <= now - 7) and not names:" in flipped
    line = 'names.append("été" if date > 1 else "")  # non-ASCII before a mutated node: byte offsets'
    assert '    pass  # non-ASCII' in _changes(SOURCE)[f"check: {line} :: delete call `names.append(…)`"].decode()
    assert 'names.append("été" if (date >= 1) else "")' in _changes(SOURCE)[f"check: {line} :: `>` -> `>=`"].decode()


def test_keys_do_not_depend_on_line_numbers():
    shifted = b"\n\n# a comment\n" + SOURCE
    assert set(_changes(SOURCE)) == set(_changes(shifted))


def test_the_configuration_names_real_modules_and_tests():
    config = tomllib.loads((ROOT / "tools" / "mutate.toml").read_text())
    for module, tests in config["modules"].items():
        assert (ROOT / "mailseal" / f"{module}.py").is_file(), module
        for test in tests:
            assert (ROOT / test.split("::")[0]).is_file(), test
    equivalents = tomllib.loads((ROOT / config["equivalents"]).read_text()).get("equivalent", [])
    for entry in equivalents:
        assert entry["module"] in config["modules"] and entry["reason"].strip(), entry
