"""Loss expressions: prefix trees over the operator table, a safe parser, and their sympy forms.

A loss is stored and exchanged as a *prefix token list* over the operator table (the GP genotype and the
JSON export format): operator names, the variables ``y_pred``/``y_real``, and float constants, e.g.
``["multiply", "minus", "y_pred", "y_real", "minus", "y_pred", "y_real"]``.

From the tree, sympy gives a cheap canonical form (sympy's automatic evaluation orders sums and products
and folds ``x - x``, ``x * x``, ``-(a - b)``), a stable hash, a structure key (constants abstracted), a
complexity and LaTeX. ``sympy.simplify`` is deliberately *not* on this path: it costs tens of milliseconds
per candidate; :meth:`LossExpression.simplified` offers it for final reports only.

Text is parsed with Python's ``ast`` module (parsing only, nothing is executed) and a whitelist walk:
infix ``+ - * / **`` (integer powers only) and calls of the table's operators; nothing else is accepted.
"""

from __future__ import annotations

import ast
import hashlib
import math
import numbers
import warnings
from functools import cached_property
from typing import Iterable, Sequence, Union

import sympy

from lossforge.errors import ExpressionError
from lossforge.lowering import Program, check_constants, lower
from lossforge.operators import FUNCTION_ALIASES, MAX_CONSTANT, OPERATORS, VARIABLES

Token = Union[str, float]

#: Limits that keep hostile or runaway input from costing memory or time.
MAX_NODES = 512
MAX_TEXT_LENGTH = 10_000
#: Nesting depth (a search's trees are at most 17 deep): printing a formula recurses per level in sympy.
MAX_DEPTH = 100
MAX_POWER = 8  # MAX_CONSTANT (1e6) lives with the operator table: the lowering enforces it on folded constants

SYMBOLS: dict[str, sympy.Symbol] = {name: sympy.Symbol(name, real=True) for name in VARIABLES}
_INFIX_OPS = {ast.Add: "plus", ast.Sub: "minus", ast.Mult: "multiply", ast.Div: "divide"}
_KEY_DIGITS = 6


def _check_constant(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ExpressionError(f"{where}: constant {value!r} is not a number")
    if isinstance(value, int) and abs(value) > MAX_CONSTANT:  # float(10**400) is an OverflowError
        raise ExpressionError(f"{where}: constant of about {int(value.bit_length() * 0.30103) + 1} digits is "
                              f"outside [-{MAX_CONSTANT:g}, {MAX_CONSTANT:g}]")  # str() of it may raise too
    v = float(value)
    if not math.isfinite(v) or abs(v) > MAX_CONSTANT:
        raise ExpressionError(f"{where}: constant {value!r} is outside [-{MAX_CONSTANT:g}, {MAX_CONSTANT:g}]")
    return v


def _as_float(value: object) -> float:
    """A new constant's value (numpy numbers too); never a token: "y_pred" in its place would change the tree."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ExpressionError(f"constant {value!r} is not a number")
    return float(value)


def validate_tokens(tokens: Sequence[object], where: str = "expression") -> tuple[Token, ...]:
    """Check a prefix token list (operators, variables, numbers; arities consistent; size bounded)."""
    if not isinstance(tokens, (list, tuple)) or not tokens:
        raise ExpressionError(f"{where}: expected a non-empty list of prefix tokens")
    if len(tokens) > MAX_NODES:
        raise ExpressionError(f"{where}: {len(tokens)} nodes exceed the limit of {MAX_NODES}")
    out: list[Token] = []
    need = 1
    open_slots: list[int] = []  # per ancestor of the next token: operands it still has to read
    for i, tok in enumerate(tokens):
        if need == 0:
            raise ExpressionError(f"{where}: extra tokens after a complete expression at position {i}")
        while open_slots and open_slots[-1] == 0:
            open_slots.pop()
        if open_slots:
            open_slots[-1] -= 1
        if len(open_slots) >= MAX_DEPTH:
            raise ExpressionError(f"{where}: nested more than {MAX_DEPTH} levels deep at position {i}")
        if isinstance(tok, str):
            name = FUNCTION_ALIASES.get(tok, tok)
            if name in OPERATORS:
                need += OPERATORS[name].arity - 1
                open_slots.append(OPERATORS[name].arity)
                out.append(name)
            elif tok in VARIABLES:
                need -= 1
                out.append(tok)
            else:
                known = ", ".join(list(OPERATORS) + list(VARIABLES))
                raise ExpressionError(f"{where}: unknown token {tok!r} at position {i}; known: {known}")
        else:
            out.append(_check_constant(tok, f"{where}, position {i}"))
            need -= 1
    if need != 0:
        raise ExpressionError(f"{where}: incomplete expression ({need} operand(s) missing)")
    return tuple(out)


def parse(text: str) -> tuple[Token, ...]:
    """Parse infix or function-call text (``(y_pred - y_real)**2``, ``log(y_pred)``) into prefix tokens.

    Only whitelisted syntax is accepted; nothing is evaluated. Raises :class:`ExpressionError` naming
    the offending part.
    """
    if not isinstance(text, str) or not text.strip():
        raise ExpressionError("empty expression; write e.g. \"(y_pred - y_real)**2\"")
    if len(text) > MAX_TEXT_LENGTH:
        raise ExpressionError(f"expression of {len(text)} characters exceeds the limit of {MAX_TEXT_LENGTH}")
    try:
        with warnings.catch_warnings():  # "1if ..." or "y_pred is 1": Python's SyntaxWarning was a second line
            warnings.simplefilter("ignore", SyntaxWarning)
            node = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as exc:
        raise ExpressionError(f"cannot parse expression: {exc.msg} at column {exc.offset}") from None
    except (RecursionError, MemoryError, ValueError):
        raise ExpressionError("expression is nested too deeply") from None
    tokens: list[Token] = []
    try:
        _emit(node, tokens)
    except RecursionError:
        raise ExpressionError("expression is nested too deeply") from None
    return validate_tokens(tokens)


def _emit(node: ast.AST, out: list[Token]) -> None:
    if len(out) > MAX_NODES:
        raise ExpressionError(f"expression exceeds the limit of {MAX_NODES} nodes")
    col = getattr(node, "col_offset", 0) + 1
    if isinstance(node, ast.BinOp) and type(node.op) in _INFIX_OPS:
        out.append(_INFIX_OPS[type(node.op)])
        _emit(node.left, out)
        _emit(node.right, out)
    elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
        exp = node.right
        n = exp.value if isinstance(exp, ast.Constant) else None
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_POWER:
            raise ExpressionError(
                f"only integer powers 1..{MAX_POWER} are supported (column {col}); use sqrt() for roots"
            )
        for _ in range(n - 1):  # x**n == x * x * ... * x, over the table's multiply
            out.append("multiply")
        for _ in range(n):
            _emit(node.left, out)
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        if isinstance(node.operand, ast.Constant):
            out.append(-_check_constant(node.operand.value, f"column {col}"))
        else:
            out.extend(["minus", 0.0])
            _emit(node.operand, out)
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.UAdd):
        _emit(node.operand, out)
    elif isinstance(node, ast.Call):
        name = node.func.id if isinstance(node.func, ast.Name) else None
        name = FUNCTION_ALIASES.get(name, name) if name else None
        if name not in OPERATORS:
            raise ExpressionError(
                f"unknown function at column {col}; allowed: {', '.join(OPERATORS)}"
            )
        if node.keywords or len(node.args) != OPERATORS[name].arity:
            raise ExpressionError(f"{name}() takes {OPERATORS[name].arity} positional argument(s) (column {col})")
        out.append(name)
        for arg in node.args:
            _emit(arg, out)
    elif isinstance(node, ast.Name):
        if node.id not in VARIABLES:
            raise ExpressionError(f"unknown name {node.id!r} at column {col}; variables are y_pred and y_real")
        out.append(node.id)
    elif isinstance(node, ast.Constant):
        out.append(_check_constant(node.value, f"column {col}"))
    else:
        raise ExpressionError(
            f"unsupported syntax ({type(node).__name__}) at column {col}; "
            "use + - * / **n, numbers, y_pred, y_real and the operators " + ", ".join(OPERATORS)
        )


def tokens_to_sympy(tokens: Sequence[Token]) -> sympy.Expr:
    """Build the sympy expression of a validated prefix token list (automatic canonicalisation only)."""
    stack: list[sympy.Expr] = []
    for tok in reversed(tokens):
        if isinstance(tok, float):
            stack.append(sympy.Float(tok))
        elif tok in SYMBOLS:
            stack.append(SYMBOLS[tok])
        else:
            op = OPERATORS[tok]
            args = [stack.pop() for _ in range(op.arity)]
            stack.append(op.sympy_form(*args))
    return stack[0]


def _round_float(f: sympy.Float) -> sympy.Expr:
    # Round first, then test for an integer: 0.1*3*10 folds to 3.0000000000000004, which must get the key
    # of the 3.0 its printed formula says (an integer, exact).
    v = float(f"{float(f):.{_KEY_DIGITS}g}")
    if math.isfinite(v) and v == int(v) and abs(v) < 1e6:
        return sympy.Integer(int(v))
    return sympy.Float(v)


def _even_power_of_negated(e: sympy.Expr) -> bool:
    return bool(e.is_Pow and e.exp.is_Integer and e.exp.is_even and e.base.could_extract_minus_sign())


def canonical(expr: sympy.Expr) -> sympy.Expr:
    """Canonical form used for keys: constants rounded to 6 significant digits (integral ones exact), and
    even powers of a negated base written with the base's sign flipped ((b - a)**2 -> (a - b)**2)."""
    floats = {f: _round_float(f) for f in expr.atoms(sympy.Float)}
    expr = expr.xreplace(floats) if floats else expr
    return expr.replace(_even_power_of_negated, lambda e: (-e.base) ** e.exp)


def _digest(expr: sympy.Expr) -> str:
    return hashlib.sha256(sympy.srepr(expr).encode()).hexdigest()[:16]


class LossExpression:
    """A symbolic loss ``L(y_pred, y_real)``: prefix tokens plus derived sympy forms, keys and printing."""

    def __init__(self, tokens: Iterable[object], where: str = "expression") -> None:
        if isinstance(tokens, Iterable) and not isinstance(tokens, (list, tuple, str, bytes, dict)):
            tokens = list(tokens)  # e.g. a generator; a string is refused by validation, not split into chars
        self.tokens: tuple[Token, ...] = validate_tokens(tokens, where)  # type: ignore[arg-type]

    @classmethod
    def parse(cls, text: str) -> "LossExpression":
        """Parse user text safely (see :func:`parse`); ExpressionError also when its constants fold to a
        number beyond ±MAX_CONSTANT or a non-finite one (``(1000000.0**8)**4``)."""
        expression = cls(parse(text))
        expression.check_constants()
        return expression

    def check_constants(self) -> None:
        """ExpressionError if a constant of the canonical form (as written or folded) is beyond
        ±MAX_CONSTANT or non-finite."""
        check_constants(self.sympy)
        check_constants(self.canonical)

    @cached_property
    def constant_problem(self) -> str | None:
        """Why the folded constants are refused (see :meth:`check_constants`), or None."""
        try:
            self.check_constants()
        except ExpressionError as exc:
            return str(exc)
        return None

    @cached_property
    def program(self) -> Program:
        """The lowered loss (:func:`lossforge.lowering.lower`) every backend runs."""
        return lower(self.sympy)

    @cached_property
    def classification_program(self) -> Program:
        """The classification variant: ``log(y_pred)`` read from the log-probabilities (exact cross-entropy)."""
        return lower(self.sympy, log_probabilities=True)

    @classmethod
    def coerce(cls, value: "LossExpression | str | Sequence[Token]") -> "LossExpression":
        """Accept a LossExpression, expression text, or a prefix token list."""
        if isinstance(value, LossExpression):
            return value
        if isinstance(value, str):
            return cls.parse(value)
        return cls(value)

    @cached_property
    def sympy(self) -> sympy.Expr:
        """The sympy expression, exact constants, automatically canonicalised."""
        return tokens_to_sympy(self.tokens)

    @cached_property
    def canonical(self) -> sympy.Expr:
        """Canonical sympy form (rounded constants): equal for equivalent trees."""
        return canonical(self.sympy)

    @cached_property
    def key(self) -> str:
        """Stable 16-hex-digit hash of the canonical form: the cache and de-duplication key."""
        return _digest(self.canonical)

    @cached_property
    def structure_key(self) -> str:
        """Hash of the canonical form with every non-integral constant replaced by one placeholder."""
        c = sympy.Symbol("c")
        floats = {f: c for f in self.canonical.atoms(sympy.Float)}
        return _digest(self.canonical.xreplace(floats) if floats else self.canonical)

    @cached_property
    def complexity(self) -> int:
        """Number of nodes of the canonical sympy tree (a size measure that ignores equivalent rewrites)."""
        return sum(1 for _ in sympy.preorder_traversal(self.canonical))

    @property
    def constants(self) -> list[float]:
        """The float constants of the tree, in prefix order."""
        return [t for t in self.tokens if isinstance(t, float)]

    @cached_property
    def variables(self) -> frozenset[str]:
        """Which of ``y_pred``/``y_real`` the canonical form depends on."""
        return frozenset(s.name for s in self.sympy.free_symbols)

    def formula(self, digits: int = 4) -> str:
        """Readable formula, constants shown to ``digits`` significant digits; re-parses to the same loss
        (up to that rounding)."""
        floats = {f: sympy.Float(float(f"{float(f):.{digits}g}")) for f in self.sympy.atoms(sympy.Float)}
        return sympy.sstr(self.sympy.xreplace(floats) if floats else self.sympy, full_prec=False)

    def latex(self, digits: int = 4) -> str:
        """LaTeX of the formula."""
        floats = {f: sympy.Float(float(f"{float(f):.{digits}g}")) for f in self.sympy.atoms(sympy.Float)}
        return sympy.latex(self.sympy.xreplace(floats) if floats else self.sympy)

    def prefix(self) -> str:
        """DEAP-style function-call text (``minus(y_pred, y_real)``), which :func:`parse` accepts."""
        pos = 0

        def walk() -> str:
            nonlocal pos
            tok = self.tokens[pos]
            pos += 1
            if isinstance(tok, float):
                return repr(tok)
            if tok in VARIABLES:
                return tok
            args = [walk() for _ in range(OPERATORS[tok].arity)]
            return f"{tok}({', '.join(args)})"

        return walk()

    def with_constants(self, values: Sequence[float]) -> "LossExpression":
        """The same tree with its float constants replaced, in prefix order (e.g. after tuning)."""
        values = list(values)
        if len(values) != len(self.constants):  # too few was a StopIteration, too many silently dropped
            raise ExpressionError(f"{len(self.constants)} constant(s) needed in prefix order, got {len(values)}")
        it = iter(values)
        # numpy numbers become floats; anything else is refused by name (was float()'s ValueError)
        tokens = [_as_float(next(it)) if isinstance(t, float) else t for t in self.tokens]
        return LossExpression(tokens)

    def simplified(self) -> sympy.Expr:
        """``sympy.simplify`` of the canonical form: slow (tens of ms); for final reports only.

        Protected operators are opaque functions to sympy, so simplification cannot change values.
        """
        return sympy.simplify(self.sympy)

    def to_json(self) -> list[Token]:
        """The prefix token list as JSON-ready data."""
        return list(self.tokens)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LossExpression) and self.tokens == other.tokens

    def __hash__(self) -> int:
        return hash(self.tokens)

    def __repr__(self) -> str:
        return f"LossExpression({self.formula()!r})"

    def __str__(self) -> str:
        return self.formula()
