"""Task types and presets by name, as suite files refer to them. Built on first use (imports are heavy)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from lossforge.tasks.base import Task


@lru_cache(maxsize=1)
def task_types() -> dict[str, type[Task]]:
    """``type`` name in a suite file -> task class."""
    from lossforge.tasks import classification, regression

    return {"regression": regression.RegressionTask, **classification.task_types()}


def presets(kind: str) -> dict[str, dict[str, Any]]:
    """Named settings of a task type."""
    from lossforge.tasks import classification, regression

    if kind == "regression":
        return regression.PRESETS
    return classification.PRESETS_BY_TYPE.get(kind, {})
