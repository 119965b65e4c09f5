"""The Python API: thin entry points over the engine, the scorer and the exporters."""

from __future__ import annotations

import functools
import inspect
import numbers
import os
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, TextIO

from lossforge.baselines import DISPLAY_BASELINES, baselines_for, get_baseline
from lossforge.engine import Callback, Search, SearchConfig
from lossforge.errors import ConfigError, ExpressionError, did_you_mean
from lossforge.evaluator import FULL, Evaluator, rejected_result
from lossforge.executor import make_executor
from lossforge.expression import LossExpression
from lossforge.scoring import ChunkResult, Suite, load_suite
from lossforge.runfile import CandidateRecord, resolve_run_path
from lossforge.training import check_device

_D = SearchConfig  # the defaults below are SearchConfig's own (its fields are the one place they are written)


def _check_keywords(name: str, given: Iterable[str], valid: Sequence[str]) -> None:
    """A TypeError that names the valid keywords (and the closest one) for a misspelt keyword argument."""
    unknown = [k for k in given if k not in valid]
    if unknown:
        raise TypeError(f"{name}() got an unexpected keyword argument {unknown[0]!r}"
                        f"{did_you_mean(unknown[0], valid)} (valid: {', '.join(valid)})")


def _named_keywords(func: Callable) -> Callable:
    """:func:`_check_keywords` on every call of ``func``."""
    valid = [name for name in inspect.signature(func).parameters]

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _check_keywords(func.__name__, kwargs, valid)
        return func(*args, **kwargs)

    return wrapper


@_named_keywords
def search(run: str | Path | None = None, *,
           population: int | None = _D.population, generations: int | None = _D.generations,
           budget: float | None = _D.budget, time_s: float | None = _D.time_s, screening: float = _D.screening,
           promote: float = _D.promote, niche: int = _D.niche, seed: int = _D.seed,
           space: str = _D.space, suite: str | Path | Suite = _D.suite, jobs: int = _D.jobs, executor: str = _D.executor,
           scheduler: str | None = _D.scheduler, dask_workers: int | None = _D.dask_workers,
           chunk_timeout_s: float | None = _D.chunk_timeout_s, chunk_size: int = _D.chunk_size,
           tournament_size: int = _D.tournament_size, crossover_prob: float = _D.crossover_prob,
           mutation_prob: float = _D.mutation_prob, elite: int = _D.elite, hall_of_fame: int = _D.hall_of_fame,
           device: str = _D.device, selection: str = _D.selection, variation: str = _D.variation,
           seed_baselines: bool = _D.seed_baselines, scale_twins: bool = _D.scale_twins,
           confirm_top: int = _D.confirm_top,
           validate_top: int = _D.validate_top,
           tune_top: int = _D.tune_top, tune_iterations: int = _D.tune_iterations,
           quiet: bool = False, cache_from: Sequence[str | Path] = (), callbacks: Sequence[Callback] = (),
           stream: TextIO | None = None, data: Any = None, target: str | None = None,
           problem: str | None = None, noise: Any = None, trusted: Any = None, test_data: Any = None,
           features: Sequence[str] | None = None, image_shape: str | Sequence[int] | None = None,
           model: Any = None, procedures: Any = None, epochs: int | None = None,
           runs_dir: str | Path = "runs") -> list[CandidateRecord]:
    """Run a new search and return its hall of fame (best distinct losses first).

    The settings are :class:`~lossforge.engine.SearchConfig`'s fields, with its defaults and meanings
    (``lossforge search --help`` lists them). ``run`` is a run name (stored as ``RUNS_DIR/NAME.db``, ``runs_dir``
    default ``runs``) or a path; by default a fresh name from the time. An existing run is never overwritten. Progress goes to
    ``stream`` (stdout) unless ``quiet``. ``cache_from``: earlier run files on the same suite and seeds
    whose evaluations are reused instead of training again. ``callbacks``: each called after every
    generation as ``callback(stats, hall_of_fame)``; one returning True stops the search (status
    ``stopped``; ``lossforge resume`` continues it). ``data`` (with ``target``, ``noise``, ``trusted``, ...):
    your own data instead of ``suite`` (see :func:`_data_suite`); a :class:`~lossforge.scoring.Suite` object
    works as ``suite`` too.
    """
    from lossforge.data_suite import DATA_OPTIONS

    values = locals()
    settings = {f.name: values[f.name] for f in fields(SearchConfig)}
    settings.update({k: values[k] for k in DATA_OPTIONS if values[k] is not None})
    settings["runs_dir"] = runs_dir
    config = SearchConfig(**_data_suite(data, settings))
    # a run name lives in runs_dir, as with the CLI's --runs-dir (it went to runs/ whatever runs_dir said)
    path = resolve_run_path(default_run_name() if run is None else run, runs_dir)  # run='' is refused
    if isinstance(cache_from, (str, os.PathLike)):  # one run, not its name's characters (runs/n.db for "nosuch")
        cache_from = [cache_from]
    cache_paths = [resolve_run_path(p, runs_dir) for p in cache_from]
    engine = Search.create(path, config, quiet=quiet, stream=stream, callbacks=callbacks)
    for other, count in engine.import_cache(cache_paths).items():
        if not count:  # as the CLI's note: a cache that gave nothing must not look like one that worked
            warnings.warn(f"{other} has no evaluations on this suite (its tasks, settings or seeds differ): "
                          "nothing reused from it", stacklevel=2)
    try:
        return engine.run()
    finally:
        engine.close()


def _data_suite(data: Any, settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` with its own-data options replaced by ``suite`` = a suite file for ``data``.

    ``data``: a file path (.csv, .parquet, .npz, .npy), ``(x, y)`` or ``(x, y, trusted)`` arrays, a DataFrame
    (with ``target=``) or a torch Dataset; options (:data:`lossforge.data_suite.DATA_OPTIONS`): ``target``,
    ``problem``, ``noise`` ("symmetric:0.4" or settings), ``trusted``, ``test_data``, ``features``,
    ``image_shape`` ([H, W], [C, H, W] or "3x32x32"), ``model``, ``procedures``, ``epochs``. In-memory data and
    the suite file are written under ``runs_dir`` (default ``runs``), so workers and later processes read the
    same rows."""
    from lossforge.data_suite import split_data_options, suite_for_data

    settings = dict(settings)
    options = split_data_options(settings)
    directory = settings.pop("runs_dir", "runs")
    if isinstance(settings.get("suite"), Suite):  # a Suite object: written out as a suite file, like own data
        from lossforge.data_suite import suite_file_for

        settings["suite"] = str(suite_file_for(settings["suite"].spec(), Path(directory) / "suites"))
    if data is None:
        if options:
            raise ConfigError(f"{sorted(options)} describe own data; pass data=... too")
        return settings
    if settings.get("suite", SearchConfig.suite) != SearchConfig.suite:  # it was silently replaced by the data's
        raise ConfigError(f"data=... and suite={settings['suite']!r} exclude each other: data builds its own suite")
    settings["suite"] = str(suite_for_data(data, directory, **options))
    return settings


@_named_keywords
def resume(run: str | Path, quiet: bool = False, scheduler: str | None = None,
           dask_workers: int | None = None, callbacks: Sequence[Callback] = (),
           stream: TextIO | None = None) -> list[CandidateRecord]:
    """Continue a stopped run from its last recorded generation; returns the hall of fame. A run that used
    a dask scheduler needs its address again (``scheduler``): endpoints are never taken from the file."""
    engine = Search.resume(resolve_run_path(run), quiet=quiet, stream=stream, scheduler=scheduler,
                           dask_workers=dask_workers, callbacks=callbacks)
    try:
        return engine.run()
    finally:
        engine.close()


def default_run_name() -> str:
    """A run name from the current local time (``search-YYYYmmdd-HHMMSS``)."""
    import time

    return time.strftime("search-%Y%m%d-%H%M%S")


def check_baselines(names: Sequence[str], suite: Suite) -> None:
    """ConfigError before any training for an unknown baseline (it was a row of fitness 0.0) or a torch-only
    baseline of a problem the suite has no task of (it cannot compute there: every seed failed)."""
    for name in names:
        baseline = get_baseline(name)
        if baseline.factory is not None and baseline.problem != "any" and baseline.problem not in suite.problems:
            known = sorted({b.name for p in suite.problems for b in baselines_for(p)})
            raise ConfigError(f"baseline {name!r} is a {baseline.problem} loss and suite {suite.name!r} has "
                              f"{' and '.join(sorted(suite.problems))} tasks only; choose from {', '.join(known)}")


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


def score(expressions: Sequence[str | LossExpression], suite: str | Path | Suite = "regression",
          seeds: Sequence[int] | None = None, baselines: Sequence[str] | None = None,
          device: str = "cpu", jobs: int = -1, data: Any = None, **data_options: Any) -> list[ScoreRow]:
    """Score losses (expression text or LossExpression) and baselines on a suite, the same way a search does.

    Returns one row per loss, then one per baseline; fitness is relative to each task's reference loss.
    ``data`` and ``data_options``: your own data instead of ``suite`` (see :func:`_data_suite`).
    """
    from lossforge.data_suite import DATA_OPTIONS

    # **data_options took any name: score(data=..., epoch=50) trained with the default epochs without a word
    named = [n for n, p in inspect.signature(score).parameters.items() if p.kind is not p.VAR_KEYWORD]
    _check_keywords("score", data_options, named + [*DATA_OPTIONS, "runs_dir"])
    check_device(device)
    if isinstance(jobs, bool) or not isinstance(jobs, numbers.Integral) or not (jobs == -1 or jobs >= 1):
        raise ConfigError(f"jobs must be -1 (all cores) or a positive number of workers, got {jobs!r}")
    if data is not None:
        suite = _data_suite(data, {"suite": suite, **data_options})["suite"]
    elif data_options:
        raise ConfigError(f"{sorted(data_options)} describe own data; pass data=... too")
    if not isinstance(suite, Suite):  # a Suite object was set up (and its notices shown) by the caller
        suite = load_suite(suite)
        suite.warn_notices()
    if seeds is not None:
        if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Iterable):  # seeds=3 was a TypeError
            raise ConfigError(f"seeds must be a list of integers, e.g. range(3), got {seeds!r}")
        seeds = list(seeds)
        if not seeds:
            raise ConfigError("seeds must not be empty")
        if len(set(seeds)) != len(seeds):  # one training counted twice shrank the CI to ± 0
            raise ConfigError(f"seeds repeat a seed ({sorted(seeds)}); list each seed once")
        suite = suite.with_seeds(seeds)
    # one expression or baseline name alone is one, not a sequence of characters (baselines="mse" scored m, s, e)
    if isinstance(expressions, (str, LossExpression)):
        expressions = [expressions]
    elif not isinstance(expressions, Iterable):  # score(3) was a TypeError
        raise ExpressionError(f"expressions must be expression text, a LossExpression or a list of them, "
                              f"got {type(expressions).__name__}")
    if isinstance(baselines, str):
        baselines = [baselines]
    exprs = [LossExpression.coerce(e) for e in expressions]
    names = list(baselines) if baselines is not None else []
    check_baselines(names, suite)
    if baselines is None:
        for problem in sorted(suite.problems):
            names += [n for n in DISPLAY_BASELINES[problem] if n not in names]
    references = {t.task.reference for t in suite.tasks}
    all_names = names + [r for r in sorted(references) if r not in names]
    evaluator = Evaluator(suite, make_executor("joblib", jobs), chunk_size=16, device=device)
    try:
        reasons = [evaluator.rejection(e)[0] for e in exprs]  # a rejected loss is never trained
        trained = [e for e, reason in zip(exprs, reasons) if reason is None]
        specs: list[Any] = [list(e.tokens) for e in trained] + all_names
        results = evaluator.train(specs, FULL, False)
    finally:
        evaluator.executor.close()
    evaluator.reference.update({n: r.raw for n, r in zip(all_names, results[len(trained):])})
    by_key = dict(zip((e.key for e in trained), results))
    rows = []
    for i, (expr, reason) in enumerate(zip(exprs, reasons)):
        res = by_key[expr.key] if reason is None else rejected_result(suite, reason)
        fitness, summary = evaluator.fitness(res)
        status = "rejected" if reason is not None else "failed" if res.failed else "complete"
        rows.append(ScoreRow(f"loss {i + 1}", expr.formula(), fitness, summary, status, reason or res.first_reason,
                             suite.fitness_per_seed(res.raw, evaluator.reference_raw())))
    for name in names:
        res = ChunkResult(evaluator.reference[name])
        fitness, summary = evaluator.fitness(res)
        rows.append(ScoreRow(name, name, fitness, summary, "failed" if res.failed else "complete", res.first_reason,
                             suite.fitness_per_seed(res.raw, evaluator.reference_raw())))
    return rows
