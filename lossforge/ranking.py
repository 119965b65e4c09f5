"""The final ranking of a run's losses, and how to pick one from the complexity/fitness trade-off.

Search fitness is measured on the suite's *search* seeds, which selection has seen. When the search ends,
the best losses (one per structure) are re-scored on the suite's *confirm* seeds, if it names any: their
*confirmed* fitness is over the search and the confirm seeds together, a less noisy figure to choose by.
The best by confirmed fitness are then re-scored on separate *validation* seeds. The final ranking puts
validated losses first, ordered by validation fitness, then the confirmed ones by confirmed fitness, then
the rest by search fitness. ``pick`` chooses the loss a user takes away:

* ``best``: the highest (validation) fitness.
* ``knee``: the knee of the Pareto front of complexity vs fitness: the front point farthest above the
  straight line joining the front's simplest and fittest points (both axes scaled to [0, 1]).
* ``ratio``: the front point with the largest gain in log-fitness per unit of complexity over the next
  simpler front point (PySR's "best" rule), among points within 50 % of the top fitness.
"""

from __future__ import annotations

import json
import math
import weakref
from dataclasses import dataclass
from typing import Any, Sequence

from lossforge.errors import ConfigError, LossforgeError, RunError
from lossforge.scoring import Suite, join_seeds, suite_from_spec
from lossforge.stats import PairedComparison, paired_comparison
from lossforge.runfile import CandidateRecord, RunStore

PICKS = ("best", "knee", "ratio")


@dataclass(frozen=True)
class Ranked:
    """A loss of a run with its search fitness and, when measured, its confirmed and validation fitness."""

    record: CandidateRecord
    validation_fitness: float | None
    confirmed_fitness: float | None = None

    @property
    def selection_fitness(self) -> float:
        """The fitness the search chooses by: confirmed when measured, else search (validation never)."""
        return self.confirmed_fitness if self.confirmed_fitness is not None else float(self.record.fitness)

    @property
    def fitness(self) -> float:
        """The fitness that ranks it: validation when measured, else confirmed, else search."""
        return self.validation_fitness if self.validation_fitness is not None else self.selection_fitness


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated points of ``(complexity, fitness)`` pairs (lower complexity and higher
    fitness are better), ordered by complexity."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def _knee(points: list[tuple[float, float]]) -> int:
    if len(points) <= 2:
        return len(points) - 1
    (c0, f0), (c1, f1) = points[0], points[-1]
    cs, fs = (c1 - c0) or 1.0, (f1 - f0) or 1.0
    # signed: points above the chord (more fitness than the complexity would buy linearly) are knees
    dist = [(f - f0) / fs - (c - c0) / cs for c, f in points]
    return max(range(len(points)), key=lambda i: (dist[i], points[i][1]))


def _ratio(points: list[tuple[float, float]]) -> int:
    top = max(f for _, f in points)
    best_i, best_gain = len(points) - 1, -math.inf
    for i in range(len(points)):
        c, f = points[i]
        if f <= 0 or f < 0.5 * top:
            continue
        if i == 0:
            gain = math.log(f) / max(c, 1.0)
        else:
            pc, pf = points[i - 1]
            gain = (math.log(f) - math.log(pf)) / (c - pc) if pf > 0 and c > pc else -math.inf
        if gain > best_gain:
            best_i, best_gain = i, gain
    return best_i


# Stored scores are data from a file: a wrongly shaped one surfaces as one of these inside Suite.fitness.
_SHAPE_ERRORS = (KeyError, TypeError, ValueError, AttributeError, IndexError, ZeroDivisionError, OverflowError)


def _fitness(suite: Suite, raw: Any, reference: Any, store: RunStore, what: str) -> tuple[float, dict[str, Any]]:
    try:
        fit, summary = suite.fitness(raw, reference)
        return float(fit), summary
    except _SHAPE_ERRORS as exc:
        raise RunError(f"run file {store.path}: the stored scores of {what} are malformed "
                       f"({type(exc).__name__}: {str(exc)[:80]})") from None


def _validations(store: RunStore) -> tuple[Suite, dict[str, Any], dict[str, Any] | None]:
    """The run's suite, its validation results and the reference loss's among them (None: not validated)."""
    done = store.validations()
    suite = suite_of(store)
    try:
        reference = {t.name: done[f"baseline:{t.task.reference}"][t.name] for t in suite.tasks}
    except KeyError:
        return suite, done, None
    except TypeError:
        raise RunError(f"run file {store.path}: the stored validation of the reference loss is malformed") from None
    return suite, done, reference


def validation_fitness(store: RunStore) -> dict[str, float]:
    """Validation fitness of every validated loss key (empty when the run was not validated)."""
    suite, done, reference = _validations(store)
    if reference is None:
        return {}
    return {name: _fitness(suite, raw, reference, store, f"validation {name[:40]}")[0] for name, raw in done.items()}


@dataclass(frozen=True)
class Versus:
    """A validated loss against the baseline with the best validation fitness, paired over the validation seeds."""

    baseline: str
    comparison: PairedComparison


def against_best_baseline(store: RunStore, key: str) -> Versus | None:
    """Loss ``key`` against the best baseline on the validation seeds (each seed's fitness paired with the
    baseline's on that seed); None when the loss or no baseline was validated."""
    suite, done, reference = _validations(store)
    baselines = [name for name in done if name.startswith("baseline:")]
    if reference is None or key not in done or not baselines:
        return None
    # the best by validation fitness, as the baseline table shows it
    best = max(baselines, key=lambda name: (_fitness(suite, done[name], reference, store, name[:40])[0], name))
    try:
        a, b = (suite.fitness_per_seed(done[name], reference) for name in (key, best))
        comparison = paired_comparison(a, b)  # ValueError when a tampered file gives them different seed counts
    except _SHAPE_ERRORS as exc:
        raise RunError(f"run file {store.path}: the stored validation scores are malformed "
                       f"({type(exc).__name__})") from None
    return Versus(best.removeprefix("baseline:"), comparison)


def confirmed_fitness(store: RunStore, records: Sequence[CandidateRecord] | None = None) -> dict[str, float]:
    """Fitness over the search and the confirm seeds together of every confirmed loss key (empty when the
    run confirmed none): each loss paired by seed with the reference loss on the same seeds. ``records``:
    the run's ``store.best`` rows, when the caller has read them already."""
    done = store.confirmations()
    if not done:
        return {}
    suite = suite_of(store)
    baselines = store.baselines()
    try:
        reference = {t.name: join_seeds({t.name: baselines[t.task.reference][t.name]},
                                        {t.name: done[f"baseline:{t.task.reference}"][t.name]})[t.name]
                     for t in suite.tasks}
    except KeyError:
        return {}
    except (TypeError, AttributeError):
        raise RunError(f"run file {store.path}: the stored confirmation of the reference loss is malformed") from None
    by_key = {r.key: r for r in (store.best(10**9) if records is None else records)}
    out = {}
    for name, raw in done.items():
        if name in by_key:
            try:
                joined = join_seeds(by_key[name].task_scores, raw)
            except (TypeError, AttributeError):
                raise RunError(f"run file {store.path}: the stored confirmation of {name[:40]} is malformed") from None
            out[name] = _fitness(suite, joined, reference, store, f"confirmation {name[:40]}")[0]
    return out


def ranking(store: RunStore, n: int | None = None, pick: str = "best", validation: bool = True) -> list[Ranked]:
    """The run's distinct complete losses, best first (see module docstring); ``pick`` decides rank 1.
    ``validation=False``: ordered as the search chooses, by confirmed (else search) fitness alone, so that
    the validation fitness of rank 1 is a held-out figure."""
    if pick not in PICKS:
        raise ConfigError(f"unknown pick {pick!r}; choose one of {', '.join(PICKS)}")
    val = validation_fitness(store)
    records = store.best(10**9)
    conf = confirmed_fitness(store, records)
    items = (Ranked(r, val.get(r.key), conf.get(r.key)) for r in records)
    if validation:
        ranked = sorted(items, key=lambda x: (x.validation_fitness is None, x.confirmed_fitness is None,
                                              -x.fitness, x.record.complexity or 0, x.record.id))
    else:
        ranked = sorted(items, key=lambda x: (x.confirmed_fitness is None, -x.selection_fitness,
                                              x.record.complexity or 0, x.record.id))
    if pick != "best" and ranked:
        pts = [(float(x.record.complexity or 0), x.fitness) for x in ranked]
        front = pareto_front(pts)
        chosen = front[(_knee if pick == "knee" else _ratio)([pts[i] for i in front])]
        ranked.insert(0, ranked.pop(chosen))
    return ranked if n is None else ranked[:n]


# One parse per open store and stored suite: `show` asks for it once per figure, and each parse of an
# own-data suite re-hashes its data file. Keyed by the store object, so a fresh open parses afresh.
_SUITES: "weakref.WeakKeyDictionary[RunStore, tuple[str, Suite]]" = weakref.WeakKeyDictionary()


def suite_of(store: RunStore) -> Suite:
    """The suite stored in a run file (RunError when it is missing or malformed)."""
    spec = store.config().get("suite")
    if not isinstance(spec, dict):
        raise RunError(f"run file {store.path}: the stored suite is not a table")
    text = json.dumps(spec, sort_keys=True)
    cached = _SUITES.get(store)
    if cached is not None and cached[0] == text:
        return cached[1]
    from lossforge.tasks.user import stored_settings_only

    try:
        with stored_settings_only():  # the views read stored scores: a moved data file must not hide them
            suite = suite_from_spec(spec, f"{store.path} (stored suite)")
        _SUITES[store] = (text, suite)
        return suite
    except LossforgeError as exc:
        raise RunError(f"run file {store.path}: the stored suite is invalid: {exc}") from None
    except _SHAPE_ERRORS as exc:
        raise RunError(f"run file {store.path}: the stored suite is malformed ({type(exc).__name__})") from None


def baseline_rows(store: RunStore) -> list[dict[str, Any]]:
    """Each stored baseline's search fitness, per-task normalised scores and validation fitness."""
    suite = suite_of(store)
    baselines = store.baselines()
    if not all(t.task.reference in baselines for t in suite.tasks):
        return []
    try:
        reference = {t.name: baselines[t.task.reference][t.name] for t in suite.tasks}
    except (KeyError, TypeError):
        raise RunError(f"run file {store.path}: the stored scores of the reference loss are malformed") from None
    val = validation_fitness(store)
    rows = []
    for name, raw in baselines.items():
        fit, summary = _fitness(suite, raw, reference, store, f"baseline {name[:40]}")
        try:
            tasks = {t.name: float(summary[t.name]["normalized"]) for t in suite.tasks}
        except _SHAPE_ERRORS:
            raise RunError(f"run file {store.path}: the stored scores of baseline {name[:40]} are malformed") from None
        rows.append({"name": name, "fitness": fit, "validation_fitness": val.get(f"baseline:{name}"),
                     "tasks": tasks})
    return rows


#: The statistics of a generation that the report and progress views read.
STAT_FIELDS = ("gen", "best", "median")


def generation_stats(store: RunStore) -> list[dict[str, Any]]:
    """Each recorded generation's statistics, in order (RunError when one lacks a number it must have)."""
    out = []
    for g in store.generations():
        for name in STAT_FIELDS:
            value = g.stats.get(name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise RunError(f"run file {store.path}: generation {g.gen} statistics have no number {name!r}")
        out.append(g.stats)
    return out
