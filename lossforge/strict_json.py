"""Strict JSON for what lossforge prints or serves: every NaN or infinity becomes ``null``.

Python's ``json`` writes ``NaN`` and ``Infinity``, which are not JSON (``jq`` and browsers refuse them); a run
file's elapsed time, a stored tree's constant or a failed loss's fitness may be one. ``show --json``,
``score --json``, ``baselines --json``, the ``.json`` export and the dashboard's documents all pass here.
"""

from __future__ import annotations

import json
import math
from typing import Any


def finite(value: Any) -> Any:
    """``value`` with every float that is NaN or infinite, however deep in dicts, lists and tuples, as None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def dumps(doc: Any, **kwargs: Any) -> str:
    """``json.dumps`` of :func:`finite` of ``doc``; ``allow_nan=False`` guards what ``finite`` cannot see
    (a numpy float subclass is a float, so it is caught too)."""
    return json.dumps(finite(doc), allow_nan=False, **kwargs)
