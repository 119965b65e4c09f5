#!/usr/bin/env python3
"""Check lossforge's import layers and report import cycles (static: parsed with ast, nothing is imported).

Usage: python scripts/check_layers.py [--graph]

Every `import lossforge.x`, `from lossforge.x import y`, and relative import inside the package counts,
including imports inside functions (a deferred import still couples the modules; `--graph` marks it
"(deferred)"). Two checks:

* cycles: strongly connected groups of modules in the import graph;
* layers: LAYERS below is the layer diagram of docs/architecture.md, lowest first; a module may import its
  own layer and the layers below it, never one above.

Exit code 0 when module-level imports have no cycle and no upward import, 1 otherwise. Cycles and upward
imports that exist only through deferred (in-function) imports are reported apart and do not fail the check.
"""
from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "lossforge"

#: The import layers, lowest first (docs/architecture.md draws the same). A name covers the module and,
#: for a package, everything in it; the most specific name wins.
LAYERS: list[tuple[str, list[str]]] = [
    ("foundation", ["errors", "progress", "stats", "operators", "atomic", "strict_json", "markdown"]),
    ("symbolic", ["space", "lowering", "backends", "expression", "compile", "loss", "gp"]),
    ("training", ["training", "models", "numpy_mlp", "tasks", "data_sources"]),
    ("scoring", ["scoring", "baselines", "rejection", "executor", "conformance", "data_suite"]),
    ("runs", ["runfile", "ranking"]),
    ("evaluation", ["evaluator", "tuning"]),
    ("search", ["selection", "engine"]),
    ("views", ["results", "export", "report", "diagnostics", "dashboard", "tensorboard"]),
    ("entry", ["api", "cli", ""]),   # "" is the package itself (lossforge/__init__.py) and nothing else
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted((ROOT / PACKAGE).rglob("*.py"))}


def resolve(known: set[str], name: str) -> str | None:
    """The longest known module that `name` is or lies in (lossforge.a.b.func -> lossforge.a.b)."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def imports(mod: str, path: Path, known: set[str]) -> dict[str, bool]:
    """Imported lossforge modules -> True when at least one import of it is at module level."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_pkg = path.name == "__init__.py"
    found: dict[str, bool] = {}

    def add(target: str | None, top: bool) -> None:
        if target and target != mod:
            found[target] = found.get(target, False) or top

    def walk(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            # `if TYPE_CHECKING:` imports never run
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name.split(".")[0] == PACKAGE:
                        add(resolve(known, alias.name), top)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    base = base[: len(base) - (child.level - 1)]
                    prefix = ".".join(base + ([child.module] if child.module else []))
                else:
                    prefix = child.module or ""
                if prefix.split(".")[0] != PACKAGE:
                    continue
                for alias in child.names:
                    # `from lossforge import x` may name a submodule or an attribute of the package
                    add(resolve(known, f"{prefix}.{alias.name}") or resolve(known, prefix), top)
            walk(child, inner)

    walk(tree, True)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def layer_of(mod: str) -> int | None:
    best, where = -1, None
    for i, (_, names) in enumerate(LAYERS):
        for name in names:
            full = f"{PACKAGE}.{name}" if name else PACKAGE
            covers = mod == full or (bool(name) and mod.startswith(full + "."))
            if covers and len(full) > best:
                best, where = len(full), i
    return where


def upward(graph: dict[str, set[str]]) -> list[str]:
    """Imports from a lower layer into a higher one."""
    out = []
    for m in sorted(graph):
        for t in sorted(graph[m]):
            lm, lt = layer_of(m), layer_of(t)
            if lm is not None and lt is not None and lt > lm:
                out.append(f"{m} ({LAYERS[lm][0]}) imports {t} ({LAYERS[lt][0]})")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--graph", action="store_true", help="print every module's lossforge imports")
    args = ap.parse_args()
    mods = modules()
    known = set(mods)
    edges = {m: imports(m, p, known) for m, p in mods.items()}
    top = {m: {t for t, t_top in e.items() if t_top} for m, e in edges.items()}
    every = {m: set(e) for m, e in edges.items()}
    if args.graph:
        for m in sorted(edges):
            deps = [t.removeprefix(PACKAGE + ".") + ("" if edges[m][t] else " (deferred)") for t in sorted(edges[m])]
            print(f"{m}: {', '.join(deps) or '-'}")
        print()
    hard = cycles(top)
    soft = [c for c in cycles(every) if c not in hard]
    print(f"{len(mods)} modules of {PACKAGE}, {sum(len(v) for v in top.values())} module-level imports, "
          f"{sum(len(v) for v in every.values())} in all")
    if hard:
        print(f"{len(hard)} import cycle(s) among module-level imports:")
        for c in hard:
            print("  " + " <-> ".join(c))
    else:
        print("no import cycle among module-level imports")
    if soft:
        print(f"{len(soft)} cycle(s) that close only through deferred (in-function) imports:")
        for c in soft:
            print("  " + " <-> ".join(c))
    else:
        print("no cycle through deferred imports either")
    unplaced = sorted(m for m in mods if layer_of(m) is None)
    if unplaced:
        print("modules in no layer (add them to LAYERS): " + ", ".join(unplaced))
    up_hard = upward(top)
    up_soft = [u for u in upward(every) if u not in up_hard]
    if up_hard:
        print(f"{len(up_hard)} module-level import(s) against the layers:")
        for u in up_hard:
            print("  " + u)
    else:
        print("every module-level import goes to the same layer or one below: " +
              " < ".join(name for name, _ in LAYERS))
    if up_soft:
        print(f"{len(up_soft)} deferred (in-function) import(s) against the layers:")
        for u in up_soft:
            print("  " + u)
    return 1 if hard or up_hard or unplaced else 0


if __name__ == "__main__":
    sys.exit(main())
