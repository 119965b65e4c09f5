"""lossforge: discover robust loss functions by genetic programming.

    >>> import lossforge
    >>> hof = lossforge.search(population=20, generations=3)      # a real search, saved to runs/
    >>> loss = lossforge.load("runs/NAME.db", rank=1)              # the best loss as an nn.Module
    >>> lossforge.open_run("runs/NAME.db").hall_of_fame()        # results as a DataFrame
    >>> lossforge.SymbolicLoss("(y_pred - y_real)**2")(pred, target)
"""

from lossforge.api import resume, score, search
from lossforge.errors import (
    ConfigError,
    ExportError,
    ExpressionError,
    LossforgeError,
    RunError,
    SpaceError,
)
from lossforge.export import load
from lossforge.expression import LossExpression
from lossforge.loss import SymbolicLoss
from lossforge.results import open_run

__version__ = "0.1.0"

__all__ = [
    "search", "resume", "score", "load", "open_run", "SymbolicLoss", "LossExpression",
    "LossforgeError", "ConfigError", "ExportError", "ExpressionError", "RunError", "SpaceError",
]
