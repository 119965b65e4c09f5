"""Generated ``.py`` exports carry data only as string literals: no suite name, run path, class name or
metadata can become code. Checked by importing hostile exports and by parsing every generated module
with ``ast`` against an allow-list of node types and names (hypothesis-generated inputs)."""

from __future__ import annotations

import ast
import builtins
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lossforge
from lossforge.errors import ExportError
from lossforge.export import render, to_python
from lossforge.expression import LossExpression

#: Examples per hypothesis test (raise it by hand for a longer campaign: LOSSFORGE_FUZZ_EXAMPLES=2000).
EXAMPLES = int(os.environ.get("LOSSFORGE_FUZZ_EXAMPLES", "150"))

EXPRESSIONS = [LossExpression.parse(text) for text in (
    "(y_pred - y_real)**2", "-y_real*log(y_pred)", "sqrt(y_pred*y_real) + exp(0.5*y_pred)",
    "div(y_pred, y_real) - sin(y_real) + cos(1.5*y_pred)", "y_real")]

EVIL = [
    'tiny"""\nimport os; os.system("touch PWNED")\nr"""',
    "x'''+__import__('os').system('touch PWNED2')+r'''",
    "\\", "\\'", '\\"""', "\x00\r\n\u2028\u2029", "{}{{}}", "\ud7ff\U0010ffff",
]

# What a generated module may contain: definitions, control flow and arithmetic over tensors.
ALLOWED_NODES = {
    ast.Module, ast.Expr, ast.Constant, ast.ImportFrom, ast.Import, ast.alias, ast.Assign, ast.AnnAssign,
    ast.FunctionDef, ast.ClassDef, ast.arguments, ast.arg, ast.Return, ast.If, ast.Raise, ast.Call,
    ast.keyword, ast.Attribute, ast.Name, ast.Load, ast.Store, ast.BinOp, ast.UnaryOp, ast.BoolOp,
    ast.Compare, ast.Subscript, ast.Tuple, ast.List, ast.IfExp, ast.Add, ast.Sub, ast.Mult, ast.Div,
    ast.Pow, ast.USub, ast.UAdd, ast.Not, ast.And, ast.Or, ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt,
    ast.GtE, ast.In, ast.NotIn, ast.Is, ast.IsNot,
}
ALLOWED_IMPORTS = {("torch", None), ("numbers", None), ("typing", "List"), ("typing", "Optional"), ("torch", "nn")}
SAFE_BUILTINS = {"super", "ValueError", "repr", "int", "float", "staticmethod", "bool", "str", "len", "list",
                 "isinstance", "None", "True", "False"}


def check_generated_module(source: str) -> ast.Module:
    """Parse ``source`` and fail unless it is made only of the expected constructs."""
    tree = ast.parse(source)
    defined = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    defined |= {t.id for n in ast.walk(tree) if isinstance(n, (ast.Assign, ast.AnnAssign))
                for t in (n.targets if isinstance(n, ast.Assign) else [n.target]) if isinstance(t, ast.Name)}
    defined |= {a.arg for n in ast.walk(tree) if isinstance(n, ast.arguments)
                for a in n.args + n.kwonlyargs}
    for node in ast.walk(tree):
        assert type(node) in ALLOWED_NODES, f"unexpected {type(node).__name__} at line {getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            assert all((a.name, None) in ALLOWED_IMPORTS for a in node.names), ast.dump(node)
        if isinstance(node, ast.ImportFrom):
            assert all((node.module, a.name) in ALLOWED_IMPORTS for a in node.names), ast.dump(node)
        if isinstance(node, ast.Name):
            assert node.id in defined | SAFE_BUILTINS | {"torch", "nn", "numbers", "List", "Optional"}, node.id
            assert node.id in defined or node.id not in {"eval", "exec", "open", "__import__", "compile"}
        if isinstance(node, ast.Attribute):
            assert not node.attr.startswith("__") or node.attr == "__init__", node.attr
    # module statements: docstring, imports, constants, functions, the class; nothing runs at import
    for stmt in tree.body:
        assert isinstance(stmt, (ast.Expr, ast.Import, ast.ImportFrom, ast.Assign, ast.FunctionDef, ast.ClassDef))
        if isinstance(stmt, ast.Expr):
            assert stmt is tree.body[0] and isinstance(stmt.value, ast.Constant)
        if isinstance(stmt, ast.Assign):
            assert isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, float)
    classes = [s for s in tree.body if isinstance(s, ast.ClassDef)]
    assert len(classes) == 1
    return tree


def _touch_files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if p.name.startswith("PWNED")}


def test_hostile_suite_name_and_run_path_cannot_run_code_on_import(tmp_path: Path) -> None:
    """The reproduction: a suite named with a docstring breakout, and a run path doing the same."""
    suite = tmp_path / "evil.toml"
    suite.write_text(
        'name = "tiny\\"\\"\\"\\nimport os; os.system(\\"touch PWNED\\")\\nr\\"\\"\\""\n'
        "seeds = [0]\n[[tasks]]\nname = \"outliers\"\ntype = \"regression\"\npreset = \"outliers\"\n"
        "settings = { steps = 20, n_train = 32, n_test = 32, hidden = 4 }\n")
    run = tmp_path / 'x"""+__import__("os").system("touch PWNED2")+r""".db'
    lossforge.search(run=run, suite=str(suite), population=4, generations=1, jobs=1, executor="serial",
                     quiet=True, validate_top=0)
    out = tmp_path / "exported_loss.py"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-m", "lossforge.cli", "export", str(run), "--format", "py",
                           "-o", str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    text = out.read_text()
    assert "PWNED" in text  # the hostile text is there, as data
    check_generated_module(text)
    proc = subprocess.run([sys.executable, "-c", "import exported_loss"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert _touch_files(tmp_path) == set()
    doc = ast.get_docstring(ast.parse(text), clean=False)
    assert 'os.system("touch PWNED")' in doc and str(run) in doc  # the provenance survives, verbatim


@pytest.mark.parametrize("evil", EVIL)
def test_hostile_texts_stay_data(evil: str, tmp_path: Path) -> None:
    for expression in EXPRESSIONS[:2]:
        with pytest.raises(ExportError, match="not a Python identifier"):  # refused, never rewritten into code
            to_python(expression, name=evil)
        source = to_python(expression, {"run": evil, evil: evil, "suite": evil})
        tree = check_generated_module(source)
        assert f"    run: {evil}" in ast.get_docstring(tree, clean=False)
        namespace: dict = {"__builtins__": builtins}
        exec(compile(tree, "generated", "exec"), namespace)  # noqa: S102 - our own checked module
        assert not _touch_files(Path.cwd())


names = st.one_of(st.none(), st.text(max_size=40), st.sampled_from(EVIL + ["None", "True", "class", "torch",
                                                                          "nn", "protected_div", "_x", "9lives"]))
values = st.one_of(st.text(max_size=60), st.integers(), st.floats(allow_nan=True), st.none(),
                   st.sampled_from(EVIL), st.lists(st.text(max_size=8), max_size=3))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(expression=st.sampled_from(EXPRESSIONS), name=names,
       metadata=st.dictionaries(st.one_of(st.text(max_size=30), st.sampled_from(EVIL)), values, max_size=6))
def test_every_generated_module_is_only_the_expected_code(expression: LossExpression, name: str | None,
                                                          metadata: dict) -> None:
    try:
        source = render(expression, "py", metadata, name)
    except ExportError as exc:  # a name that is no usable class name is refused, never rewritten
        assert name is not None and "class name" in str(exc) and "use" in str(exc)
        assert not (name.isascii() and name.isidentifier()) or name in {"None", "True", "class", "torch", "nn",
                                                                       "protected_div"} or hasattr(builtins, name)
        return
    tree = check_generated_module(source)
    doc = ast.get_docstring(tree, clean=False)
    for key, value in metadata.items():
        assert f"    {key}: {value}" in doc
    cls = next(s for s in tree.body if isinstance(s, ast.ClassDef))
    assert cls.name.isidentifier() and cls.name.isascii() and (name is None or cls.name == name)
    compile(tree, "generated", "exec")
