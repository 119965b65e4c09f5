"""Protected sympy -> plain sympy: the sympy export, readable by any sympy user.

lossforge's protected operators are sympy functions of their own (so that algebra never changes their
values); outside lossforge they are undefined functions. :func:`plain_sympy` writes each as plain sympy with
the same values everywhere, guards included:

* ``divide(a, b)`` -> ``a / (sign(sign(b) + 1/2) * Max(|b|, DIV_EPS))``: ``b`` with its magnitude raised to
  ``DIV_EPS`` and the sign of ``b`` (+1 for 0). Each guard names its argument at most twice and uses no
  ``Piecewise``: a ``Piecewise`` whose condition holds another one is folded by sympy (and by ``lambdify``'s
  printer) into nested conditions that grow about 18-fold per nested division (six nested: 6 minutes and
  51 MB of ``srepr``) and that ``lambdify`` then prints as ``numpy.select`` calls numpy refuses.
* ``sqrt(a)`` -> ``sqrt(Max(|a|, SQRT_EPS))``, ``log(a)`` -> ``log(Max(|a|, LOG_EPS))``
* ``exp(a)`` -> ``exp(Min(a, EXP_MAX))``
"""

from __future__ import annotations

import sympy

from lossforge.operators import (
    DIV_EPS, EXP_MAX, LOG_EPS, SQRT_EPS, ProtectedDiv, ProtectedExp, ProtectedLog, ProtectedSqrt,
)


def _div(a: sympy.Expr, b: sympy.Expr) -> sympy.Expr:
    # sign(sign(b) + 1/2) is the sign with +1 at 0, as protected_div's guard
    sign_plus = sympy.sign(sympy.sign(b) + sympy.Rational(1, 2))
    return a / (sign_plus * sympy.Max(sympy.Abs(b), sympy.Float(DIV_EPS)))


#: protected sympy function -> its plain sympy form
PLAIN_FORMS = {
    ProtectedDiv: _div,
    ProtectedSqrt: lambda a: sympy.sqrt(sympy.Max(sympy.Abs(a), sympy.Float(SQRT_EPS))),
    ProtectedLog: lambda a: sympy.log(sympy.Max(sympy.Abs(a), sympy.Float(LOG_EPS))),
    ProtectedExp: lambda a: sympy.exp(sympy.Min(a, sympy.Float(EXP_MAX))),
}


def plain_sympy(expr: sympy.Expr) -> sympy.Expr:
    """``expr`` with every protected operator written in plain sympy (same values, see module docstring)."""
    if not expr.args:
        return expr
    args = [plain_sympy(a) for a in expr.args]
    form = PLAIN_FORMS.get(type(expr))
    return form(*args) if form is not None else expr.func(*args)
