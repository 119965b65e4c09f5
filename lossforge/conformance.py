"""A conformance check for task types, in the spirit of scikit-learn's ``check_estimator``.

``check_task(TaskClassOrName, settings)`` builds the task and checks the rules of the task contract
(:mod:`lossforge.tasks.base`) that every search relies on:

* ``settings_round_trip`` - ``settings()`` is plain JSON data and rebuilds an equal task (runs store it);
* ``one_result_per_loss`` - ``evaluate`` returns one result per loss, in order, and none for no loss;
* ``determinism`` - the same losses and seed give the same results twice;
* ``common_random_numbers`` - two copies of one loss in one batch get identical results;
* ``batch_independence`` - a loss's score is the same alone and beside other losses;
* ``nan_isolation`` - a loss giving NaN fails its own model only, with a reason; the others are unaffected;
* ``worst_score_on_failure`` - a failed model scores the task's ``worst_score``, never NaN;
* ``scale_free_claim`` - a task whose ``scale_free`` is true scores ``128 * L`` as ``L`` (to
  :data:`SCALE_TOLERANCE`): the search then scores a rescaled loss once, so the claim must hold.

From pytest: ``assert_task_conforms(cls, settings)``, or one test per rule with
``@pytest.mark.parametrize("rule", RULES)`` and ``check_rule(cls, settings, rule)``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from lossforge.errors import ConfigError
from lossforge.tasks.base import Task, TaskResult

RULES = ("settings_round_trip", "one_result_per_loss", "determinism", "common_random_numbers",
         "batch_independence", "nan_isolation", "worst_score_on_failure", "scale_free_claim")
SEED = 7
#: The factor of ``scale_free_claim``: a power of two, so the gradients scale without rounding and Adam's
#: epsilon is the only difference left.
SCALE = 128.0
#: How far ``128 * L`` may score from ``L`` (relative, plus as much absolute) under a scale-free claim.
SCALE_TOLERANCE = 0.005


@dataclass
class CheckReport:
    """Outcome of each rule: ``(rule, passed, message)``."""

    task: str
    results: list[tuple[str, bool, str]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(ok for _, ok, _ in self.results)

    def lines(self) -> list[str]:
        out = [f"check-task {self.task}:"]
        out += [f"  {'PASS' if ok else 'FAIL'}  {rule}" + ("" if ok else f": {msg}") for rule, ok, msg in self.results]
        n_fail = sum(not ok for _, ok, _ in self.results)
        out.append(f"{len(self.results) - n_fail} of {len(self.results)} rules pass" + ("" if not n_fail else
                   f"; {n_fail} fail"))
        return out


def _build(task: str | type[Task] | Task, settings: Any) -> Task:
    from lossforge.tasks.registry import class_path, make_task, resolve

    if not isinstance(settings, dict):
        raise ConfigError(f"settings must be a JSON object (a dict of the task's fields), got {type(settings).__name__}")
    if isinstance(task, Task):
        if settings:  # else they would be dropped without a word
            raise ConfigError(f"settings {sorted(settings)} given beside a built task; pass the task type with "
                              "its settings, or the task alone")
        return task
    if isinstance(task, str):
        cls, name = resolve(task), task
    elif isinstance(task, type) and issubclass(task, Task):
        cls, name = task, class_path(task)
    else:
        raise ConfigError(f"check a Task subclass, its type name or an instance, not {type(task).__name__} "
                          f"{str(task)[:60]!r}; subclass lossforge.tasks.base.Task")
    try:
        return make_task(name, **settings) if isinstance(task, str) else cls(**settings)
    except TypeError as exc:
        raise ConfigError(f"cannot construct {name} with settings {settings}: {exc}") from None


def _losses(problem: str) -> tuple[Callable, Callable, Callable]:
    """(reference, other, nan) losses of the task's problem type."""
    from lossforge.scoring import make_loss

    reference = make_loss("cross_entropy" if problem == "classification" else "mse", problem)
    other = make_loss("mae", problem)

    def nan_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return reference(pred, target) * float("nan")

    return reference, other, nan_loss


def _scaled(loss: Callable) -> Callable:
    def scaled_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return loss(pred, target) * SCALE

    return scaled_loss


def _same(a: TaskResult, b: TaskResult) -> bool:
    return (a.status == b.status and (a.score == b.score or (math.isnan(a.score) and math.isnan(b.score))))


class _Runs:
    """The evaluations the rules share, each run once on first use."""

    def __init__(self, task: Task) -> None:
        self.task = task
        self.ref, self.other, self.nan = _losses(task.problem)
        self._cache: dict[str, list[TaskResult]] = {}

    def get(self, name: str) -> list[TaskResult]:
        if name not in self._cache:
            losses = {"alone": [self.ref], "again": [self.ref], "batch": [self.other, self.ref, self.ref],
                      "nan": [self.nan, self.ref], "empty": [], "scaled": [_scaled(self.ref)]}[name]
            self._cache[name] = list(self.task.evaluate(losses, SEED))
        return self._cache[name]


def _rule(runs: _Runs, rule: str) -> str | None:
    """None when ``rule`` holds, else a one-line reason."""
    task = runs.task
    if rule == "settings_round_trip":
        settings = task.settings()
        try:
            plain = json.loads(json.dumps(settings))
        except (TypeError, ValueError) as exc:
            return f"settings() is not plain JSON data ({exc})"
        rebuilt = type(task)(**plain)
        if rebuilt != task or rebuilt.settings() != settings:
            return "type(task)(**json(task.settings())) is not equal to the task; keep every setting a dataclass field"
        return None
    if rule == "one_result_per_loss":
        if runs.get("empty") != []:
            return "evaluate([]) must return []"
        sizes = {name: len(runs.get(name)) for name in ("alone", "batch", "nan")}
        if sizes != {"alone": 1, "batch": 3, "nan": 2}:
            return f"evaluate returned {sizes} results for 1, 3 and 2 losses; return one per loss"
        return None
    alone = runs.get("alone")[0]
    if rule == "determinism":
        again = runs.get("again")[0]
        return None if _same(alone, again) else (
            f"the same loss and seed scored {alone.score!r} then {again.score!r}; derive every random draw from seed")
    if rule == "common_random_numbers":
        batch = runs.get("batch")
        return None if _same(batch[1], batch[2]) else (
            f"two copies of one loss in a batch scored {batch[1].score!r} and {batch[2].score!r}; share every "
            "random draw (init, order, noise) across the K models")
    if rule == "batch_independence":
        batch = runs.get("batch")
        return None if _same(alone, batch[1]) else (
            f"a loss scored {alone.score!r} alone but {batch[1].score!r} beside another loss; model k must not "
            "depend on K or on the other losses")
    nan = runs.get("nan")
    if rule == "nan_isolation":
        if nan[0].status != "failed" or not nan[0].reason:
            return f"a NaN loss gave status {nan[0].status!r} (reason {nan[0].reason!r}); fail its model with a reason"
        if not _same(nan[1], alone):
            return (f"a loss beside a NaN loss scored {nan[1].score!r}, alone {alone.score!r}; freeze the failed "
                    "model and keep the others training")
        return None
    if rule == "worst_score_on_failure":
        worst = type(task).worst_score
        if nan[0].status == "failed" and not (nan[0].score == worst and not math.isnan(nan[0].score)):
            return f"a failed model scored {nan[0].score!r}; give it the task's worst_score {worst!r}"
        if nan[0].status != "failed":
            return "no model failed on a NaN loss, so the worst score on failure cannot hold"
        return None
    if rule == "scale_free_claim":
        if not task.scale_free:
            return None  # nothing claimed: rescaled losses are trained as other losses
        scaled = runs.get("scaled")[0]
        if scaled.status != alone.status or not abs(scaled.score - alone.score) <= SCALE_TOLERANCE * (
                1 + abs(alone.score)):
            return (f"scale_free is true, but {SCALE:g} x the reference loss scored {scaled.score!r} "
                    f"({scaled.status}) against {alone.score!r}; return False where the optimiser or an added "
                    "term depends on the loss's scale (SGD, weight decay, a penalty)")
        return None
    raise ConfigError(f"unknown rule {rule!r}; rules are {', '.join(RULES)}")


def check_task(task: str | type[Task] | Task, settings: dict[str, Any] | None = None) -> CheckReport:
    """Check every rule of :data:`RULES` on ``task`` (a type name, ``"module:Class"``, a class or an instance)
    built with ``settings``; an exception in a rule fails that rule with its message."""
    built = _build(task, {} if settings is None else settings)
    runs = _Runs(built)
    from lossforge.tasks.registry import type_name

    report = CheckReport(type_name(type(built)))
    for rule in RULES:
        try:
            reason = _rule(runs, rule)
        except ConfigError:
            raise
        except Exception as exc:  # a user task may raise anything; the rule fails with it
            reason = f"raised {type(exc).__name__}: {exc}"
        report.results.append((rule, reason is None, reason or ""))
    return report


def check_rule(task: str | type[Task] | Task, settings: dict[str, Any] | None, rule: str) -> None:
    """Raise AssertionError naming the broken rule (one pytest test per rule)."""
    reason = _rule(_Runs(_build(task, {} if settings is None else settings)), rule)
    assert reason is None, f"{rule}: {reason}"


def assert_task_conforms(task: str | type[Task] | Task, settings: dict[str, Any] | None = None) -> None:
    """Raise AssertionError listing every broken rule (a pytest helper)."""
    report = check_task(task, settings)
    assert report.passed, "\n".join(report.lines())
