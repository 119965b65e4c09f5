"""The Python API: thin entry points over the engine, the scorer and the exporters."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from lossforge.engine import DISPLAY_BASELINES, Search, SearchConfig
from lossforge.errors import ConfigError
from lossforge.executor import make_executor
from lossforge.expression import LossExpression
from lossforge.rejection import rejection_reason
from lossforge.scoring import ChunkResult, Suite, load_suite, score_chunk_safe
from lossforge.runfile import CandidateRecord, resolve_run_path


def search(run: str | Path | None = None, quiet: bool = False, cache_from: Sequence[str | Path] = (),
           **settings: Any) -> list[CandidateRecord]:
    """Run a new search and return its hall of fame (best distinct losses first).

    ``settings`` are :class:`~lossforge.engine.SearchConfig` fields (``population``, ``generations``,
    ``seed``, ``space``, ``suite``, ``jobs``, ...). ``run`` is a run name (stored as ``runs/NAME.db``) or a
    path; by default a fresh name from the time. An existing run is never overwritten. Progress goes to
    stdout unless ``quiet``. ``cache_from``: earlier run files on the same suite and seeds whose
    evaluations are reused instead of training again.
    """
    config = SearchConfig(**settings)
    path = resolve_run_path(run or default_run_name())
    engine = Search.create(path, config, quiet=quiet)
    engine.import_cache([resolve_run_path(p) for p in cache_from])
    try:
        return engine.run()
    finally:
        engine.close()


def resume(run: str | Path, quiet: bool = False, scheduler: str | None = None,
           dask_workers: int | None = None) -> list[CandidateRecord]:
    """Continue a stopped run from its last recorded generation; returns the hall of fame. A run that used
    a dask scheduler needs its address again (``scheduler``): endpoints are never taken from the file."""
    engine = Search.resume(resolve_run_path(run), quiet=quiet, scheduler=scheduler, dask_workers=dask_workers)
    try:
        return engine.run()
    finally:
        engine.close()


def default_run_name() -> str:
    """A run name from the current local time (``search-YYYYmmdd-HHMMSS``)."""
    import time

    return time.strftime("search-%Y%m%d-%H%M%S")


@dataclass
class ScoreRow:
    """One loss's scores on a suite."""

    name: str
    formula: str
    fitness: float
    tasks: dict[str, Any]
    status: str
    reason: str | None = None
    per_seed: list[float] = field(default_factory=list)


def score_seeds_parallel(specs: list[Any], suite: Suite, jobs: int = -1, device: str = "cpu") -> list[ChunkResult]:
    """Score losses on every seed of ``suite``, one worker per seed (all losses batched in each)."""
    executor = make_executor("joblib", jobs)
    seeds = list(suite.seeds)
    per_seed: list[list[ChunkResult]] = [[] for _ in seeds]
    items = [(specs, suite.spec(), [seed], device) for seed in seeds]
    for i, results in executor.map_unordered(score_chunk_safe, items):
        per_seed[i] = results
    merged = []
    for k in range(len(specs)):
        raw: dict[str, dict[str, list]] = {}
        for results in per_seed:  # seeds in order: concatenate each task's per-seed lists
            for task, r in results[k].raw.items():
                entry = raw.setdefault(task, {key: [] for key in r})
                for key, values in r.items():
                    entry[key].extend(values)
        merged.append(ChunkResult(raw, sum(results[k].duration_s for results in per_seed)))
    return merged


def score(expressions: Sequence[str | LossExpression], suite: str | Path | Suite = "regression",
          seeds: Sequence[int] | None = None, baselines: Sequence[str] | None = None,
          device: str = "cpu", jobs: int = -1) -> list[ScoreRow]:
    """Score losses (expression text or LossExpression) and baselines on a suite, the same way a search does.

    Returns one row per loss, then one per baseline; fitness is relative to each task's reference loss.
    """
    suite = suite if isinstance(suite, Suite) else load_suite(suite)
    if seeds is not None:
        if not seeds:
            raise ConfigError("seeds must not be empty")
        suite = suite.with_seeds(seeds)
    exprs = [LossExpression.coerce(e) for e in expressions]
    names = list(baselines) if baselines is not None else []
    if baselines is None:
        for problem in sorted(suite.problems):
            names += [n for n in DISPLAY_BASELINES[problem] if n not in names]
    references = {t.task.reference for t in suite.tasks}
    all_names = names + [r for r in sorted(references) if r not in names]
    specs: list[Any] = [list(e.tokens) for e in exprs] + all_names
    results = score_seeds_parallel(specs, suite, jobs, device)
    raw_by_name = dict(zip(all_names, results[len(exprs):]))
    reference = {t.name: raw_by_name[t.task.reference].raw[t.name] for t in suite.tasks}
    rows = []
    for label, formula, res, rejected in (
        [(f"loss {i + 1}", e.formula(), r, rejection_reason(e, suite.problems)) for i, (e, r) in
         enumerate(zip(exprs, results))]
        + [(n, n, raw_by_name[n], None) for n in names]
    ):
        fitness, summary = suite.fitness(res.raw, reference)
        status = "failed" if res.failed else "complete"
        rows.append(ScoreRow(label, formula, fitness, summary, status, res.first_reason or rejected,
                             suite.fitness_per_seed(res.raw, reference)))
    return rows
