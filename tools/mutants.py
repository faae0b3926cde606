"""The mutants of one Python module: one small change at a time, found on the AST.

Operators (the ones issue 14 names):
  cmp     a comparison flipped at its boundary or negated: < <=, > >=, == !=,
          in / not in, is / is not
  boolop  `and` <-> `or`
  not     `not x` -> `x`
  const   an integer constant n -> n+1 and n-1
  bool    True <-> False
  raise   a `raise` statement deleted
  return  a guard `return` (one inside an if or except block) deleted
  call    a call used as a statement deleted

A mutant is applied as a text edit on the source (the node's span replaced),
so line numbers and comments stay as they were. Its key names the enclosing
function, the source line and the change, not the line number, so the list
of equivalent mutants survives edits elsewhere in the file.
"""

from __future__ import annotations

import ast
import fnmatch
from dataclasses import dataclass

CMP_FLIPS = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
             ast.NotEq: ast.Eq, ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is}
CMP_TEXT = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!=",
            ast.In: "in", ast.NotIn: "not in", ast.Is: "is", ast.IsNot: "is not"}


@dataclass(frozen=True)
class Mutant:
    module: str  # path relative to the repository, e.g. mailseal/replay.py
    line: int
    operator: str
    change: str  # e.g. "`<` -> `<=`"
    key: str  # stable name: "Qual.name: source line :: change"
    start: int  # byte span in the source that the edit replaces
    end: int
    text: bytes  # what replaces it

    def apply(self, source: bytes) -> bytes:
        return source[: self.start] + self.text + source[self.end :]

    def describe(self) -> str:
        where, _, change = self.key.rpartition(" :: ")
        return f"{self.module}:{self.line}: {change}  [{where}]"  # change keeps its #n


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ast.unparse(node)


class _Finder:
    def __init__(self, module: str, source: bytes, skip_calls: list[str]) -> None:
        self.module = module
        self.source = source
        self.lines = source.splitlines(keepends=True)
        self.offsets = [0]
        for line in self.lines:
            self.offsets.append(self.offsets[-1] + len(line))
        self.skip_calls = skip_calls
        self.found: list[tuple[ast.AST, str, str, str, bytes]] = []  # node, qualname, op, change, text
        self.qualname: list[str] = []

    # --- positions -----------------------------------------------------------------

    def span(self, node: ast.AST) -> tuple[int, int]:
        return (self.offsets[node.lineno - 1] + node.col_offset,
                self.offsets[node.end_lineno - 1] + node.end_col_offset)

    def segment(self, node: ast.AST) -> bytes:
        start, end = self.span(node)
        return self.source[start:end]

    def add(self, node: ast.AST, operator: str, change: str, text: bytes) -> None:
        self.found.append((node, ".".join(self.qualname) or "<module>", operator, change, text))

    # --- the walk ------------------------------------------------------------------

    def visit(self, node: ast.AST, parent: ast.AST | None = None) -> None:
        if isinstance(node, (ast.JoinedStr, ast.Assert)):
            return  # f-string internals; assertions are not behaviour (gone under -O)
        if isinstance(node, ast.If) and _dotted(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            return
        scoped = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
        if scoped:
            self.qualname.append(node.name)
        self.mutate(node, parent)
        for name, value in ast.iter_fields(node):
            if name in ("annotation", "returns", "type_comment"):
                continue
            children = value if isinstance(value, list) else [value]
            for index, child in enumerate(children):
                if not isinstance(child, ast.AST):
                    continue
                if index == 0 and name == "body" and _is_docstring(child):
                    continue
                self.visit(child, node)
        if scoped:
            self.qualname.pop()

    def mutate(self, node: ast.AST, parent: ast.AST | None) -> None:
        if isinstance(node, ast.Compare):
            for i, op in enumerate(node.ops):
                flipped = CMP_FLIPS[type(op)]()
                copy = ast.Compare(node.left, [*node.ops[:i], flipped, *node.ops[i + 1 :]], node.comparators)
                self.add(node, "cmp", f"`{CMP_TEXT[type(op)]}` -> `{CMP_TEXT[type(flipped)]}`",
                         b"(" + ast.unparse(copy).encode() + b")")
        elif isinstance(node, ast.BoolOp):
            other, before, after = (ast.Or(), "and", "or") if isinstance(node.op, ast.And) else (ast.And(), "or", "and")
            copy = ast.BoolOp(other, node.values)
            self.add(node, "boolop", f"`{before}` -> `{after}`", b"(" + ast.unparse(copy).encode() + b")")
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            self.add(node, "not", "drop `not`", b"(" + self.segment(node.operand) + b")")
        elif isinstance(node, ast.Constant) and isinstance(node.value, bool):
            self.add(node, "bool", f"`{node.value}` -> `{not node.value}`", str(not node.value).encode())
        elif isinstance(node, ast.Constant) and isinstance(node.value, int):
            written = self.segment(node).decode()
            for delta in (1, -1):
                self.add(node, "const", f"`{written}` -> `{node.value + delta}`",
                         b"(" + str(node.value + delta).encode() + b")")
        elif isinstance(node, ast.Raise):
            self.add(node, "raise", "delete `raise`", b"pass")
        elif isinstance(node, ast.Return) and isinstance(parent, (ast.If, ast.ExceptHandler)):
            self.add(node, "return", "delete guard `return`", b"pass")
        elif isinstance(node, ast.Expr) and isinstance(node.value, (ast.Call, ast.Await)):
            call = node.value.value if isinstance(node.value, ast.Await) else node.value
            if isinstance(call, ast.Call):
                name = _dotted(call.func)
                if not any(fnmatch.fnmatchcase(name, pattern) for pattern in self.skip_calls):
                    self.add(node, "call", f"delete call `{name}(…)`", b"pass")

    def mutants(self) -> list[Mutant]:
        out: list[Mutant] = []
        seen: dict[str, int] = {}
        for node, qualname, operator, change, text in sorted(self.found, key=lambda f: self.span(f[0])):
            start, end = self.span(node)
            line_text = self.lines[node.lineno - 1].decode("utf-8", "replace").strip()
            key = f"{qualname}: {line_text} :: {change}"
            seen[key] = seen.get(key, 0) + 1
            if seen[key] > 1:
                key += f" #{seen[key]}"
            out.append(Mutant(self.module, node.lineno, operator, change, key, start, end, text))
        return out


def _is_docstring(node: ast.AST) -> bool:
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)


def find_mutants(module: str, source: bytes, skip_calls: list[str] = ()) -> list[Mutant]:
    """Every mutant of the module, in source order; each one compiles."""
    finder = _Finder(module, source, list(skip_calls))
    finder.visit(ast.parse(source))
    found = []
    for mutant in finder.mutants():
        compile(mutant.apply(source), module, "exec")  # a mutant that does not compile is a bug here
        found.append(mutant)
    return found
