"""The layer rules of docs/architecture.md, read from the source with `ast` (nothing is imported).

`python -m tests.architecture.layering [PREFIX]` prints every violation (optionally only for
modules whose path starts with PREFIX, e.g. `domain/jobs`); the test asserts there are none.
"""

from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "server" / "coordd"
MAX_LINES = 600

# Which top-level coordd packages a layer may import (besides itself); GROUND is the ground floor.
GROUND = {"core", "config", "__version__", "logging", "metrics"}
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "config": {"core"},
    "crypto": GROUND,
    "blobs": GROUND,
    "store": GROUND,
    "events": GROUND | {"store"},
    "notify": GROUND | {"store", "crypto", "events"},
    "runtime": GROUND | {"crypto", "events", "store", "blobs"},
    "domain": GROUND | {"store", "events", "crypto", "blobs", "notify", "runtime"},
    "adapters": GROUND | {"store", "events", "crypto", "notify", "runtime", "domain"},
    "scheduler": GROUND | {"store", "events", "runtime", "domain", "adapters", "notify"},
    "api": GROUND | {"domain", "runtime", "events", "crypto", "adapters"},
    "web": GROUND | {"domain", "runtime", "events", "adapters"},
}
# Query-builder and raw-SQL calls: the domain decides, the store queries.
QUERY_CALLS = {
    "select",
    "where",
    "insert",
    "insert_many",
    "insert_from",
    "execute_sql",
    "get_or_none",
    "get_by_id",
    "get_or_create",
    "bulk_create",
    "bulk_update",
    "delete_instance",
    "on_conflict",
    "on_conflict_ignore",
    "for_update",
    "order_by",
    "raw",
}
SQL_TEXT = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE)\b[\s\S]*\b(FROM|INTO|SET|WHERE)\b")


@dataclass(frozen=True)
class Violation:
    path: str
    line: int
    rule: str
    detail: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.rule}: {self.detail}"


def _layer(rel: Path) -> str:
    first = rel.parts[0]
    return first[:-3] if first.endswith(".py") else first


def _imports(tree: ast.AST) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
            out.extend((node.lineno, f"{node.module}.{alias.name}") for alias in node.names)
    return out


def _module_name(rel: Path) -> str:
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(["coordd", *parts])


def violations(prefix: str = "") -> list[Violation]:
    found: list[Violation] = []
    graph: dict[str, set[str]] = {}
    modules = {}
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        modules[_module_name(rel)] = (rel, path)
    for name, (rel, path) in modules.items():
        text = path.read_text()
        tree = ast.parse(text)
        shown = str(rel)
        layer = _layer(rel)
        lines = text.count("\n")
        if lines > MAX_LINES:
            found.append(Violation(shown, 1, "too long", f"{lines} lines (at most {MAX_LINES})"))
        graph[name] = set()
        for lineno, target in _imports(tree):
            if target.startswith("coordd."):
                other = target.split(".")[1]
                if target in modules:
                    graph[name].add(target)
                allowed = ALLOWED.get(layer)
                if allowed is not None and other != layer and other not in allowed:
                    found.append(Violation(shown, lineno, "imports upwards", f"{layer} imports {target}"))
            if layer == "domain" and target.split(".")[0] in (
                "grpc",
                "peewee",
                "playhouse",
                "redis",
                "psycopg2",
            ):
                found.append(Violation(shown, lineno, "domain imports an adapter", target))
        if layer == "domain":
            docstrings = {
                id(node.body[0].value)
                for node in ast.walk(tree)
                if isinstance(node, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
                and node.body
                and isinstance(node.body[0], ast.Expr)
                and isinstance(node.body[0].value, ast.Constant)
            }
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr in QUERY_CALLS
                    # `", ".join(...)` on a string literal is not a query.
                    and not isinstance(node.func.value, ast.Constant)
                ):
                    found.append(Violation(shown, node.lineno, "query in the domain", f".{node.func.attr}()"))
                if (
                    isinstance(node, ast.Constant)
                    and isinstance(node.value, str)
                    and id(node) not in docstrings
                    and SQL_TEXT.search(node.value)
                ):
                    found.append(Violation(shown, node.lineno, "SQL text in the domain", node.value[:60]))
    found.extend(_cycles(graph, modules))
    return [v for v in found if v.path.startswith(prefix)]


def _cycles(graph: dict[str, set[str]], modules: dict[str, tuple[Path, Path]]) -> list[Violation]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[Violation] = []
    counter = [0]
    sys.setrecursionlimit(10000)

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            # A package importing its own submodules (re-exports) is not a cycle worth reporting.
            real = [m for m in component if not any(o.startswith(m + ".") for o in component)]
            if len(real) > 1:
                first = sorted(component)[0]
                out.append(
                    Violation(str(modules[first][0]), 1, "import cycle", " <-> ".join(sorted(component)))
                )

    for v in list(graph):
        if v not in index:
            visit(v)
    return out


if __name__ == "__main__":
    problems = violations(sys.argv[1] if len(sys.argv) > 1 else "")
    for problem in problems:
        print(problem)
    print(f"{len(problems)} violations")
    sys.exit(1 if problems else 0)
