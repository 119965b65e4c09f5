"""A run's results as data: :func:`open_run` reads a run file into plain records, tables and loss objects.

    >>> run = lossforge.open_run("runs/NAME.db")
    >>> run.hall_of_fame()            # pandas DataFrame (records when pandas is not installed)
    >>> best = run.loss(1)            # rank 1 of the final ranking (as ``lossforge show`` ranks)
    >>> best.torch()(logits, target)  # an nn.Module; best.sympy(), best.latex(), best.formula
    >>> run.to_dict()                 # what ``lossforge show --json`` prints

The run file is read once, read-only, when the run is opened (a snapshot: open it again to see a search that
is still running). Counts in :meth:`Run.to_dict`:

* ``proposed``: distinct losses the search recorded (complete, rejected or failed; clones of a loss already
  scored in the run are not recorded again, so they are not counted);
* ``screened``: distinct losses that got any training: those screened at a lower fidelity (racing's first
  rung) and those scored in full (complete or failed, not taken from another run's cache);
* ``trained``: distinct losses scored at full fidelity (the candidates table holds full scores only).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lossforge.baselines import known_loss_text, stored_same_as_known
from lossforge.errors import ConfigError, LossforgeError, RunError
from lossforge.expression import LossExpression
from lossforge.ranking import Ranked, Versus, against_best_baseline, baseline_rows, pareto_front, ranking, suite_of
from lossforge.runfile import CandidateRecord, CandidateState, RunStore
from lossforge.strict_json import finite

__all__ = ["Loss", "Run", "open_run"]


def _num(value: float | None) -> float | None:
    """JSON-safe number: NaN and infinities become None."""
    return None if value is None or not math.isfinite(float(value)) else float(value)


@dataclass(frozen=True)
class Loss:
    """One loss of a run's final ranking."""

    rank: int
    formula: str
    tokens: tuple[Any, ...]
    fitness: float | None
    validation_fitness: float | None
    complexity: int | None
    tasks: dict[str, float | None]
    key: str | None
    candidate_id: int
    generation: int
    #: fitness over the search and the suite's confirm seeds, when the run confirmed this loss
    confirmed_fitness: float | None = None
    #: the run's problem type (None for a suite of several) and class count, for :meth:`same_as`
    problem: str | None = None
    n_classes: int = 10

    def same_as(self) -> dict[str, Any] | None:
        """``{"name", "scale"}`` when this loss trains as a known loss up to a positive factor and a constant
        (:func:`lossforge.baselines.same_as_known`): then the search returned that loss, not a new one."""
        known = stored_same_as_known(self.tokens, self.problem, self.n_classes)
        return None if known is None else {"name": known[0], "scale": known[1]}

    def expression(self) -> LossExpression:
        """The loss as a :class:`~lossforge.expression.LossExpression` (tokens validated)."""
        return LossExpression(self.tokens, where=f"rank {self.rank}")

    def sympy(self) -> Any:
        """The loss as plain sympy (``sign``/``Max``/``Min`` with the protected operators' values, the
        ``sympy`` export's form): ``sympy.lambdify`` and any sympy code evaluate it. lossforge's own form,
        with its protected functions, is ``expression().sympy``."""
        from lossforge.backends.sympy_plain import plain_sympy

        return plain_sympy(self.expression().sympy)

    def latex(self) -> str:
        """The formula as LaTeX."""
        return self.expression().latex()

    def torch(self, reduction: str = "mean", problem: str = "auto", **options: Any) -> Any:
        """The loss as a torch ``nn.Module`` (:class:`~lossforge.loss.SymbolicLoss`); ``options``:
        SymbolicLoss's ``weight``, ``ignore_index``, ``label_smoothing``, ``trainable_constants`` (as
        :func:`lossforge.load`)."""
        from lossforge.loss import SymbolicLoss

        return SymbolicLoss(self.expression(), reduction=reduction, problem=problem,  # type: ignore[arg-type]
                            **options)

    def record(self) -> dict[str, Any]:
        """Plain data, ``tasks`` nested (the JSON form of ``lossforge show --json``)."""
        return {"rank": self.rank, "formula": self.formula, "tokens": list(self.tokens),
                "fitness": _num(self.fitness), "validation_fitness": _num(self.validation_fitness),
                "confirmed_fitness": _num(self.confirmed_fitness), "complexity": self.complexity,
                "same_as": self.same_as(), "tasks": {t: _num(v) for t, v in self.tasks.items()}}


def _known_text(same: dict[str, Any] | None) -> str | None:
    return None if same is None else known_loss_text(same["name"], same["scale"])


def _frame(records: list[dict[str, Any]], as_frame: bool | None, columns: list[str] | None = None) -> Any:
    """A pandas DataFrame of ``records`` when pandas is installed (or ``as_frame``), else the records.
    ``columns``: the table's columns, so that a table without rows still has them (``df["fitness"]``)."""
    if as_frame is False:
        return records
    try:
        import pandas as pd
    except ImportError:
        if as_frame:
            raise LossforgeError("as_frame=True needs pandas; pip install pandas") from None
        return records
    return pd.DataFrame.from_records(records, columns=None if columns is None else list(dict.fromkeys(columns)))


_HALL_OF_FAME_COLUMNS = ["rank", "formula", "fitness", "validation_fitness", "confirmed_fitness", "complexity",
                         "generation", "key", "same_as"]
_CANDIDATE_COLUMNS = ["id", "generation", "status", "reason", "fitness", "complexity", "formula", "key", "duration_s",
                      "worker"]


def _task_scores(rec: CandidateRecord) -> dict[str, float | None]:
    return {t: _num(s.get("normalized")) if isinstance(s, dict) else None for t, s in rec.task_scores.items()}


@dataclass
class Run:
    """A snapshot of a run file (see module docstring). Build with :func:`open_run`."""

    path: Path
    status: str
    elapsed_s: float
    suite: str
    tasks: list[str]
    #: the stored search settings (population, generations, seed, space, suite, ...)
    config: dict[str, Any]
    _ranked: list[Ranked] = field(repr=False)
    _candidates: list[CandidateRecord] = field(repr=False)
    _generations: list[dict[str, Any]] = field(repr=False)
    _baselines: list[dict[str, Any]] = field(repr=False)
    #: keys of the losses screened at a lower fidelity than full (racing's first rung)
    _screened: frozenset[str] = field(default=frozenset(), repr=False)
    #: the suite's problem type (None when it has several) and first class count
    problem: str | None = None
    n_classes: int = 10
    #: rank 1 against the best baseline on the validation seeds (None: not validated)
    versus: Versus | None = None
    #: the status says running but no live process holds the run (its writer was killed: resume it)
    writer_gone: bool = False

    # ------------------------------------------------------------------------------------------ losses
    def losses(self, n: int | None = None) -> list[Loss]:
        """The final ranking (validated losses first, by validation fitness; see :mod:`lossforge.ranking`)."""
        _check_count(n)
        out = []
        for rank, item in enumerate(self._ranked[:n] if n is not None else self._ranked, 1):
            rec = item.record
            out.append(Loss(rank, rec.formula or _formula(rec.tree), tuple(rec.tree),
                            rec.fitness, item.validation_fitness, rec.complexity, _task_scores(rec), rec.key,
                            rec.id, rec.generation, item.confirmed_fitness, self.problem, self.n_classes))
        return out

    def loss(self, rank: int = 1) -> Loss:
        """The loss at ``rank`` (1 = best) of the final ranking."""
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise LossforgeError(f"rank must be a positive integer, got {rank!r}")
        if rank > len(self._ranked):
            raise RunError(f"{self.path}: rank {rank} requested but the run has {len(self._ranked)} scored loss(es)")
        return self.losses(rank)[rank - 1]

    # ------------------------------------------------------------------------------------------ tables
    def hall_of_fame(self, n: int | None = 10, as_frame: bool | None = None) -> Any:
        """The ``n`` best losses (all with ``n=None``): rank, formula, fitness, validation_fitness,
        complexity, generation, key, same_as (``"0.52 x gce"`` when the loss trains as a known loss up to a
        positive factor, see :meth:`Loss.same_as`) and one column per task (normalised score, 1 = reference
        loss)."""
        rows = []
        for loss in self.losses(n):
            row = {"rank": loss.rank, "formula": loss.formula, "fitness": _num(loss.fitness),
                   "validation_fitness": _num(loss.validation_fitness),
                   "confirmed_fitness": _num(loss.confirmed_fitness), "complexity": loss.complexity,
                   "generation": loss.generation, "key": loss.key, "same_as": _known_text(loss.same_as())}
            row.update({t: loss.tasks.get(t) for t in self.tasks})
            rows.append(row)
        return _frame(rows, as_frame, [*_HALL_OF_FAME_COLUMNS, *self.tasks])

    def candidates(self, as_frame: bool | None = None) -> Any:
        """Every recorded candidate: id, generation, status, reason, fitness, complexity, formula, key,
        duration_s, worker."""
        rows = [{"id": c.id, "generation": c.generation, "status": c.status.value, "reason": c.reason,
                 "fitness": _num(c.fitness), "complexity": c.complexity, "formula": c.formula, "key": c.key,
                 "duration_s": c.duration_s, "worker": c.worker} for c in self._candidates]
        return _frame(rows, as_frame, _CANDIDATE_COLUMNS)

    def generations(self, as_frame: bool | None = None) -> Any:
        """One row per finished generation: the engine's statistics (gen, best, median, evaluated, cache_hits,
        rejected, failed, best_formula, seconds, ...)."""
        return _frame([dict(g) for g in self._generations], as_frame)

    def baselines(self, as_frame: bool | None = None) -> Any:
        """The stored baselines: name, fitness, validation_fitness and one column per task."""
        rows = [{"name": b["name"], "fitness": _num(b["fitness"]),
                 "validation_fitness": _num(b["validation_fitness"]),
                 **{t: _num(b["tasks"].get(t)) for t in self.tasks}} for b in self._baselines]
        return _frame(rows, as_frame, ["name", "fitness", "validation_fitness", *self.tasks])

    # ---------------------------------------------------------------------------------------- summaries
    def counts(self) -> dict[str, int]:
        """``proposed``, ``screened``, ``trained`` (see module docstring) and the count of each state."""
        by_state = {s.value: sum(c.status is s for c in self._candidates) for s in CandidateState}
        trained_keys = {c.key or f"id:{c.id}" for c in self._candidates
                        if c.status in (CandidateState.COMPLETE, CandidateState.FAILED)
                        and not (c.worker or "").startswith("cache:")}
        proposed = {c.key or f"id:{c.id}" for c in self._candidates}
        return {"proposed": len(proposed | self._screened), "screened": len(trained_keys | self._screened),
                "trained": len(trained_keys), **by_state}

    def rejection_reasons(self, n: int = 10) -> list[dict[str, Any]]:
        """The ``n`` most frequent reasons for rejected or failed candidates, with their counts."""
        _check_count(n)
        tally: dict[tuple[str, str], int] = {}
        for c in self._candidates:
            if c.status in (CandidateState.REJECTED, CandidateState.FAILED):
                k = (c.status.value, c.reason or "no reason recorded")
                tally[k] = tally.get(k, 0) + 1
        top = sorted(tally.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
        return [{"status": s, "reason": r, "count": k} for (s, r), k in top]

    def pareto(self) -> list[dict[str, Any]]:
        """The Pareto front of complexity vs search fitness over the complete candidates, simplest first."""
        done = [c for c in self._candidates if c.status is CandidateState.COMPLETE and c.complexity is not None]
        front = pareto_front([(float(c.complexity), float(c.fitness)) for c in done])  # type: ignore[arg-type]
        return [{"complexity": done[i].complexity, "fitness": _num(done[i].fitness), "formula": done[i].formula}
                for i in front]

    def to_dict(self, top: int = 10) -> dict[str, Any]:
        """The document of ``lossforge show --json``: run, status, writer_gone, elapsed_s, suite, tasks (the
        suite's task names, the keys of every ``tasks`` below), generations, proposed, screened, trained,
        hall_of_fame (rank, formula, tokens, fitness, validation_fitness, confirmed_fitness, complexity, same_as,
        tasks), rank1_vs_best_baseline (baseline, mean_diff, ci, p, seeds: rank 1's validation fitness paired
        with the best baseline's; null when not validated) and baselines (name, fitness, validation_fitness,
        tasks). Every NaN or infinity in it is None."""
        counts = self.counts()
        return finite({
            "run": str(self.path), "status": self.status, "writer_gone": self.writer_gone,
            "elapsed_s": round(self.elapsed_s, 3),
            "suite": self.suite, "tasks": list(self.tasks), "generations": len(self._generations),
            "proposed": counts["proposed"], "screened": counts["screened"], "trained": counts["trained"],
            "hall_of_fame": [loss.record() for loss in self.losses(top)],
            "rank1_vs_best_baseline": None if self.versus is None else _versus_record(self.versus),
            "baselines": [{"name": b["name"], "fitness": _num(b["fitness"]),
                           "validation_fitness": _num(b["validation_fitness"]),
                           "tasks": {t: _num(v) for t, v in b["tasks"].items()}} for b in self._baselines],
        })


def _formula(tree: tuple[Any, ...]) -> str:
    """The formula of a stored tree, or its prefix tokens where they are invalid (a hand-edited row is listed
    beside the others; building it names the problem)."""
    try:
        return LossExpression(tree).formula()
    except LossforgeError:
        return " ".join(map(str, tree))


def _check_count(n: Any) -> None:
    """``n`` rows is None (all) or a count >= 0: a negative one sliced rows off the end (hall_of_fame(-1) gave all
    but the last), a string was a TypeError."""
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
        raise ConfigError(f"the number of rows must be a non-negative integer or None (all), got {n!r}")


def _versus_record(versus: Versus) -> dict[str, Any]:
    return {"baseline": versus.baseline, **versus.comparison.record()}


def open_run(path: str | os.PathLike[str], pick: str = "best") -> Run:
    """Read the run file at ``path`` (read-only) into a :class:`Run`. ``pick`` decides rank 1 as in
    ``lossforge show --pick`` (best, knee or ratio)."""
    if not isinstance(path, (str, os.PathLike)):
        raise RunError(f"a run is a path or file name, got {path!r}")
    path = Path(path)
    if not path.exists():
        raise RunError(f"no run at {path}; list runs with `lossforge runs`")
    with RunStore.open(path, readonly=True) as store:
        summary = store.summary()
        try:
            suite = suite_of(store)
            ranked = ranking(store, None, pick)
            baselines = baseline_rows(store)
        except (KeyError, TypeError) as exc:
            raise RunError(f"{path}: cannot read the run's suite or scores ({exc})") from None
        candidates = store.candidates()
        generations = [g.stats for g in store.generations()]
        config = dict(store.config().get("search", {}))
        screened = frozenset(s["key"] for s in store.screenings())
        versus = against_best_baseline(store, ranked[0].record.key) if ranked else None
        writer_gone = store.writer_gone(summary.status)
    return Run(path, summary.status.value, float(summary.elapsed_s), suite.name, [t.name for t in suite.tasks],
               config, ranked, candidates, generations, baselines, screened, suite.problem, suite.probe_classes[0],
               versus, writer_gone)
