"""The test files themselves: a test defined twice in one module runs once, the later definition silently
replacing the earlier (two such pairs were found, one of them hiding a test whose assertions had changed)."""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def test_no_test_module_defines_a_test_twice() -> None:
    twice = {}
    for path in sorted(TESTS.glob("test_*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        scopes = [tree.body] + [node.body for node in tree.body if isinstance(node, ast.ClassDef)]
        for body in scopes:
            names = Counter(n.name for n in body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
                            and n.name.startswith("test"))
            twice.update({f"{path.name}::{name}": k for name, k in names.items() if k > 1})
    assert not twice, twice
