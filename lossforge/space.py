"""Search spaces as data: which variables, constants and operators trees are built from, and size limits.

A space is a TOML file (see ``search_spaces/survey.toml``). Loading validates every field and raises one
:class:`SpaceError` naming the file, the field and the fix.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from lossforge.atomic import FileTooLarge, NotRegularFile, read_bounded
from lossforge.errors import LossforgeError, SpaceError
from lossforge.expression import MAX_NODES
from lossforge.operators import OPERATORS, VARIABLES

#: Directory of the bundled spaces (``--space NAME`` looks here).
SPACES_DIR = Path(__file__).resolve().parent / "search_spaces"  # package data (top-level search_spaces/ links here)


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space."""

    name: str
    description: str
    operators: tuple[str, ...]
    variables: tuple[str, ...]
    const_low: float
    const_high: float
    const_digits: int
    init_min_depth: int
    init_max_depth: int
    max_depth: int
    max_nodes: int
    #: Constraints on the form (``[constraints]`` in the file): variables every loss must use, pairs
    #: (outer, inner) where ``inner`` may not appear anywhere below ``outer``, and the most times an
    #: operator may occur on one root-to-leaf path.
    require_variables: tuple[str, ...] = ()
    forbid_nesting: tuple[tuple[str, str], ...] = ()
    max_nesting: tuple[tuple[str, int], ...] = ()
    #: whether trees hold ephemeral constants (``constants = false`` in the file: none; the const_* fields
    #: then keep placeholder values and are not used)
    constants: bool = True

    @property
    def constant_bounds(self) -> tuple[float, float]:
        """The smallest and largest values with ``const_digits`` decimals in [const_low, const_high]: the
        range drawn constants are kept in (rounding alone would step outside, e.g. 0.12 .. 0.9 at 1 decimal
        gave 0.1). Empty (low > high) when no such value exists, which :meth:`validate` refuses."""
        return constant_bounds(self.const_low, self.const_high, self.const_digits)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for run files."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SearchSpace":
        """Rebuild from :meth:`to_dict` output (validated again)."""
        space = cls(**{
            **data,
            "operators": tuple(data["operators"]),
            "variables": tuple(data["variables"]),
            "require_variables": tuple(data.get("require_variables", ())),
            "forbid_nesting": tuple(tuple(p) for p in data.get("forbid_nesting", ())),
            "max_nesting": tuple(tuple(p) for p in data.get("max_nesting", ())),
        })
        space.validate("stored space")
        return space

    def validate(self, where: str) -> None:
        """Raise SpaceError if any field is of the wrong type or out of range (a file's fields are typed by
        :func:`load_space` first; a stored space's only here)."""
        for field, kind, label in _FIELD_TYPES:
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, kind):
                raise SpaceError(f"{where}: {label}, got {value!r}")
        for name in (*self.operators, *self.variables, *self.require_variables):
            if not isinstance(name, str):  # a nested list was an unhashable-type traceback
                raise SpaceError(f"{where}: operators and variables are names (strings), got {name!r}")
        for field, names in (("operators", self.operators), ("terminals.variables", self.variables)):
            if len(set(names)) != len(names):  # a repeated name doubles its chance of being drawn
                raise SpaceError(f"{where}: {field} lists a name twice ({list(names)}); list each once")
        for name in self.operators:
            if name not in OPERATORS:
                raise SpaceError(
                    f"{where}: operators: unknown operator {name!r}; choose from {', '.join(OPERATORS)}"
                )
        if not self.operators:
            raise SpaceError(f"{where}: operators: list at least one operator")
        if all(OPERATORS[name].arity < 2 for name in self.operators):  # one leaf: never y_pred and y_real
            binary = ", ".join(n for n, op in OPERATORS.items() if op.arity >= 2)
            raise SpaceError(f"{where}: operators: list at least one operator of two arguments ({binary}); a tree "
                             "of unary operators has one leaf, so it never uses both y_pred and y_real")
        for name in self.variables:
            if name not in VARIABLES:
                raise SpaceError(f"{where}: terminals.variables: unknown variable {name!r}; use y_pred, y_real")
        if not self.variables:
            raise SpaceError(f"{where}: terminals.variables: list at least one of y_pred, y_real")
        missing = [v for v in VARIABLES if v not in self.variables]
        if missing:  # early rejection refuses every such loss: the search would find nothing
            raise SpaceError(f"{where}: terminals.variables: list both y_pred and y_real (missing "
                             f"{', '.join(missing)}); a loss that does not use both is always rejected")
        if not isinstance(self.constants, bool):
            raise SpaceError(f"{where}: terminals.constants must be a table or false, got {self.constants!r}")
        if not self.const_low < self.const_high:
            raise SpaceError(f"{where}: terminals.constants: low ({self.const_low}) must be below high ({self.const_high})")
        if max(abs(self.const_low), abs(self.const_high)) > 1e6:
            raise SpaceError(f"{where}: terminals.constants: keep low/high within ±1e6")
        if not 0 <= self.const_digits <= 8:
            raise SpaceError(f"{where}: terminals.constants.digits must be between 0 and 8")
        low, high = self.constant_bounds
        if self.constants and low > high:  # every constant would be the same value, outside the range
            raise SpaceError(f"{where}: terminals.constants: no constant with {self.const_digits} decimal(s) lies in "
                             f"[{self.const_low:g}, {self.const_high:g}]; widen the range or raise digits")
        if not 0 <= self.init_min_depth <= self.init_max_depth:
            raise SpaceError(f"{where}: limits: need 0 <= init_min_depth <= init_max_depth")
        if not self.init_max_depth <= self.max_depth <= 17:
            raise SpaceError(f"{where}: limits: need init_max_depth <= max_depth <= 17")
        if self.max_depth < 1:  # a tree of height 0 is one leaf: never both y_pred and y_real
            raise SpaceError(f"{where}: limits.max_depth must be at least 1; a tree of height 0 is a single leaf")
        if not 3 <= self.max_nodes <= MAX_NODES:
            raise SpaceError(f"{where}: limits.max_nodes must be between 3 and {MAX_NODES}")
        arity = max(OPERATORS[name].arity for name in self.operators)
        largest = sum(arity**i for i in range(self.init_max_depth + 1))  # a full tree of that height
        if largest > MAX_NODES:  # grown trees are not cut to max_nodes; the expression limit would refuse one
            raise SpaceError(f"{where}: limits.init_max_depth {self.init_max_depth} grows first trees of up to "
                             f"{largest} nodes, over the limit of {MAX_NODES}; lower it")
        for name in self.require_variables:
            if name not in self.variables:
                raise SpaceError(f"{where}: constraints.require_variables: {name!r} is not one of the space's "
                                 f"variables {list(self.variables)}")
        for pair in self.forbid_nesting:
            if len(pair) != 2 or any(op not in self.operators for op in pair):
                raise SpaceError(f"{where}: constraints.forbid_nesting: {list(pair)!r} must be [outer, inner] "
                                 f"with operators of this space ({', '.join(self.operators)})")
        for op, limit in self.max_nesting:
            if op not in self.operators:
                raise SpaceError(f"{where}: constraints.max_nesting: unknown operator {op!r}; "
                                 f"use operators of this space ({', '.join(self.operators)})")
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
                raise SpaceError(f"{where}: constraints.max_nesting.{op} must be an integer >= 1, got {limit!r}")

    def violation(self, tokens: Sequence[Any]) -> str | None:
        """Why a prefix token list breaks this space's constraints or operator set, or None."""
        missing = [v for v in self.require_variables if v not in tokens]
        if missing:
            return f"constraint: must use {', '.join(missing)}"
        if not self.constants and any(isinstance(tok, float) for tok in tokens):
            return f"search space {self.name!r} has no constants"
        forbidden = dict.fromkeys(self.forbid_nesting)
        limits = dict(self.max_nesting)
        # Walk the prefix list keeping the chain of ancestors of each node.
        ancestors: list[tuple[str, int]] = []  # (operator, children still to visit)
        for tok in tokens:
            if isinstance(tok, str) and tok in OPERATORS:
                if tok not in self.operators:
                    return f"operator {tok!r} is not in search space {self.name!r}"
                chain = [a for a, _ in ancestors]
                for outer in chain:
                    if (outer, tok) in forbidden:
                        return f"constraint: {tok} nested inside {outer}"
                if tok in limits and chain.count(tok) + 1 > limits[tok]:
                    return f"constraint: {tok} nested more than {limits[tok]} time(s)"
                ancestors.append((tok, OPERATORS[tok].arity))
                continue
            while ancestors:  # a leaf completes one child of each finished ancestor
                op, left = ancestors.pop()
                if left > 1:
                    ancestors.append((op, left - 1))
                    break
        return None


#: (field, type, what the field must be) of a space, as a file names the field.
_FIELD_TYPES = (
    ("name", str, "name must be text"), ("description", str, "description must be text"),
    ("const_low", (int, float), "terminals.constants.low must be a number"),
    ("const_high", (int, float), "terminals.constants.high must be a number"),
    ("const_digits", int, "terminals.constants.digits must be an integer"),
    ("init_min_depth", int, "limits.init_min_depth must be an integer"),
    ("init_max_depth", int, "limits.init_max_depth must be an integer"),
    ("max_depth", int, "limits.max_depth must be an integer"),
    ("max_nodes", int, "limits.max_nodes must be an integer"),
)


def constant_bounds(low: float, high: float, digits: int) -> tuple[float, float]:
    """The smallest and largest values with ``digits`` decimals in [low, high] (low > high: none)."""
    scale = 10**digits
    # round first: 0.3 * 10 is 3.0000000000000004, whose ceiling would skip 0.3 itself
    first, last = math.ceil(round(low * scale, 6)), math.floor(round(high * scale, 6))
    return round(first / scale, digits), round(last / scale, digits)


def _get(table: dict, key: str, kind: type | tuple[type, ...], where: str, field: str) -> Any:
    if key not in table:
        raise SpaceError(f"{where}: missing field {field!r}; see search_spaces/survey.toml for an example")
    value = table[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise SpaceError(f"{where}: field {field!r} must be {names}, got {value!r}")
    return value


#: Largest space or suite file read (either is a few lines; a huge file was read into memory whole).
MAX_SPACE_BYTES = 2**20

#: The fields of a space file, table by table (anything else is refused).
FILE_KEYS = frozenset({"name", "description", "operators", "terminals", "limits", "constraints"})
TERMINAL_KEYS = frozenset({"variables", "constants"})
CONSTANT_KEYS = frozenset({"low", "high", "digits"})
LIMIT_KEYS = frozenset({"init_min_depth", "init_max_depth", "max_depth", "max_nodes"})


def read_toml_file(path: Path, where: str, error: type[LossforgeError], kind: str, fix: str) -> dict[str, Any]:
    """The parsed TOML of a small configuration file (a space, a suite; UTF-8, with or without a byte-order
    mark), or one ``error`` line naming ``where``:
    a path that is no regular file (a device or FIFO was read forever) or one over :data:`MAX_SPACE_BYTES`
    (read into memory whole) is refused; ``fix`` says what to give instead."""
    try:
        raw = read_bounded(path, MAX_SPACE_BYTES)
    except NotRegularFile:
        raise error(f"{where}: not a regular file; {fix}") from None
    except FileTooLarge:
        raise error(f"{where}: larger than {MAX_SPACE_BYTES // 2**20} MiB; a {kind} file is a few lines") from None
    except FileNotFoundError:
        raise error(f"{where}: no such {kind} file; {fix}") from None
    except OSError as exc:
        raise error(f"{where}: cannot read {kind}: {exc}") from None
    try:
        # utf-8-sig: a leading byte-order mark (as Windows editors save UTF-8) was "Invalid statement"
        return tomllib.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise error(f"{where}: cannot read {kind}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} is no UTF-8); "
                    "save it as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{where}: cannot read {kind}: not valid TOML: {exc}") from None


def load_space(spec: str | Path = "survey") -> SearchSpace:
    """Load a space by bundled name (``survey``) or TOML path, validating every field."""
    if not str(spec).strip():  # Path("") is the current directory: "cannot read: Is a directory: '.'"
        raise SpaceError("no search space given (an empty name); give a bundled space name such as survey or a "
                         ".toml path")
    path = Path(spec)
    if not path.suffix and not path.exists():
        path = SPACES_DIR / f"{spec}.toml"
        if not path.exists():
            known = ", ".join(sorted(p.stem for p in SPACES_DIR.glob("*.toml")))
            raise SpaceError(f"unknown search space {str(spec)!r}; bundled spaces: {known}, or give a .toml path")
    where = str(path)
    data = read_toml_file(path, where, SpaceError, "space", "give a .toml path or a bundled space name")
    terminals = _get(data, "terminals", dict, where, "terminals")
    if terminals.get("constants") is False:  # a space without constants: placeholders, never drawn
        consts, has_constants = {"low": -1.0, "high": 1.0, "digits": 0}, False
    else:
        consts, has_constants = _get(terminals, "constants", dict, where, "terminals.constants (a table, or false "
                                     "for a space without constants)"), True
    limits = _get(data, "limits", dict, where, "limits")
    for table, prefix, keys in ((data, "", FILE_KEYS), (terminals, "terminals.", TERMINAL_KEYS),
                                (consts, "terminals.constants.", CONSTANT_KEYS), (limits, "limits.", LIMIT_KEYS)):
        unknown = sorted(set(table) - keys)
        if unknown:  # a typo such as max_node = 20 was ignored, as suites refuse theirs
            raise SpaceError(f"{where}: unknown field(s) {', '.join(prefix + k for k in unknown)}; valid here: "
                             f"{', '.join(sorted(keys))}")
    for field, names in (("operators", data.get("operators")), ("terminals.variables", terminals.get("variables"))):
        if isinstance(names, list) and all(isinstance(n, str) for n in names) and len(set(names)) != len(names):
            # a repeated name doubled its chance of being drawn, silently
            raise SpaceError(f"{where}: {field} lists a name twice ({names}); list each once")
    number = (int, float)
    space = SearchSpace(
        name=_get(data, "name", str, where, "name") if "name" in data else path.stem,
        description=_get(data, "description", str, where, "description") if "description" in data else "",
        operators=tuple(_get(data, "operators", list, where, "operators")),
        variables=tuple(_get(terminals, "variables", list, where, "terminals.variables")),
        const_low=float(_get(consts, "low", number, where, "terminals.constants.low")),
        const_high=float(_get(consts, "high", number, where, "terminals.constants.high")),
        const_digits=_get(consts, "digits", int, where, "terminals.constants.digits"),
        init_min_depth=_get(limits, "init_min_depth", int, where, "limits.init_min_depth"),
        init_max_depth=_get(limits, "init_max_depth", int, where, "limits.init_max_depth"),
        max_depth=_get(limits, "max_depth", int, where, "limits.max_depth"),
        max_nodes=_get(limits, "max_nodes", int, where, "limits.max_nodes"),
        **_constraints(data, where),
        constants=has_constants,
    )
    space.validate(where)
    return space


def _constraints(data: dict, where: str) -> dict[str, Any]:
    table = data.get("constraints", {})
    if not isinstance(table, dict):
        raise SpaceError(f"{where}: [constraints] must be a table")
    unknown = set(table) - {"require_variables", "forbid_nesting", "max_nesting"}
    if unknown:
        raise SpaceError(f"{where}: constraints: unknown field(s) {sorted(unknown)}; use require_variables, "
                         "forbid_nesting, max_nesting")
    require = table.get("require_variables", [])
    nesting = table.get("forbid_nesting", [])
    max_nesting = table.get("max_nesting", {})
    if not isinstance(require, list):
        raise SpaceError(f"{where}: constraints.require_variables must be a list of variable names")
    if not isinstance(nesting, list) or not all(isinstance(p, list) for p in nesting):
        raise SpaceError(f"{where}: constraints.forbid_nesting must be a list of [outer, inner] pairs")
    if not isinstance(max_nesting, dict):
        raise SpaceError(f"{where}: constraints.max_nesting must be a table like {{ exp = 1 }}")
    return {
        "require_variables": tuple(require),
        "forbid_nesting": tuple(tuple(p) for p in nesting),
        "max_nesting": tuple(max_nesting.items()),
    }
