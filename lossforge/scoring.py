"""Suites and fitness: which tasks and seeds score a loss, and how their results become one number.

A :class:`Suite` is data (a TOML file under ``lossforge/suites/`` or a path): tasks with settings and
weights, search seeds and validation seeds. Scoring is split in two so that workers only ever receive plain
data:

* :func:`score_chunk` (runs in a worker): trains the models of a chunk of losses on every task and seed of
  the suite, K losses at a time as one batched model, and returns raw per-seed results.
* :meth:`Suite.fitness` (runs in the search process): turns raw results into per-task normalised scores
  (relative to the task's reference loss on the same seed) and their weighted mean, the fitness. A failed
  seed normalises to 0, so a failure can never poison the fitness with NaN.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import traceback
import warnings
import dataclasses
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import torch

from lossforge.errors import ConfigError
from lossforge.space import read_toml_file
from lossforge.tasks.base import Task
from lossforge.tasks.registry import check_settings, presets, resolve, type_name

SUITES_DIR = Path(__file__).resolve().parent / "suites"

#: A loss as plain data: prefix tokens of an expression, or the name of a baseline.
LossSpec = list | tuple | str


@dataclass(frozen=True)
class SuiteTask:
    """One task of a suite: its name, its configured task object and its weight in the fitness."""

    name: str
    task: Task
    weight: float = 1.0


@dataclass(frozen=True)
class Suite:
    """A validated suite of tasks."""

    name: str
    description: str
    tasks: tuple[SuiteTask, ...]
    seeds: tuple[int, ...]
    validation_seeds: tuple[int, ...] = ()
    #: The search budget (full evaluations) a search on this suite gets when the user sets none: each
    #: bundled suite's is chosen so a plain search takes about 10 minutes on 2 cores. None: the engine's default.
    budget: float | None = None
    #: Seeds on which the best losses of a search are re-scored when it ends, so that the final choice among
    #: them rests on more seeds than selection could afford (search seeds + these). Disjoint from both the
    #: search and the validation seeds, so validation stays a held-out check.
    confirm_seeds: tuple[int, ...] = ()

    def spec(self) -> dict[str, Any]:
        """Plain data that rebuilds this suite (:func:`suite_from_spec`), stored in run files."""
        spec: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "seeds": list(self.seeds),
            "validation_seeds": list(self.validation_seeds),
            "tasks": [
                {"name": t.name, "type": type_name(type(t.task)), "weight": t.weight, "settings": t.task.settings()}
                for t in self.tasks
            ],
        }
        if self.budget is not None:
            spec["budget"] = self.budget
        if self.confirm_seeds:
            spec["confirm_seeds"] = list(self.confirm_seeds)
        return spec

    @property
    def hash(self) -> str:
        """Hash of the spec: runs with equal hashes score losses identically (cross-run cache key). The
        budget and the confirm seeds are left out: they change how long a search runs and which losses it
        re-scores at the end, not what a loss scores."""
        spec = {k: v for k, v in self.spec().items() if k not in ("budget", "confirm_seeds")}
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def probe_classes(self) -> tuple[int, ...]:
        """The class counts of the suite's classification tasks (the rejection probe checks a loss at each);
        the probe's default when there are none."""
        from lossforge.rejection import PROBE_CLASSES

        counts = {t.task.n_classes for t in self.tasks if t.task.problem == "classification"}
        return tuple(sorted(counts)) or (PROBE_CLASSES,)

    @property
    def scale_free(self) -> bool:
        """Whether every task trains alike with ``c * L`` and ``L`` for ``c > 0`` (:attr:`Task.scale_free`)."""
        return all(t.task.scale_free for t in self.tasks)

    def warn_notices(self) -> None:
        """Each distinct notice of the suite's tasks (:meth:`Task.notices`) once, as a ``lossforge:`` warning
        (the command line prints it as one line)."""
        for notice in dict.fromkeys(n for t in self.tasks for n in t.task.notices()):
            warnings.warn(f"lossforge: {notice}", UserWarning, stacklevel=3)

    @property
    def problems(self) -> set[str]:
        """The problem types (``regression``/``classification``) of the suite's tasks."""
        return {t.task.problem for t in self.tasks}

    @property
    def problem(self) -> str | None:
        """The suite's one problem type, or None when its tasks mix them."""
        return next(iter(self.problems)) if len(self.problems) == 1 else None

    def with_seeds(self, seeds: Sequence[int]) -> "Suite":
        """The same suite scored on other seeds (validation re-scoring, ``--seeds``); it confirms on none
        (its seeds may be the confirm seeds). Seeds from 0 to MAX_SEED, as a suite file's (-1 trained as
        2**63 - 1: one training under two names)."""
        seeds = tuple(seeds)
        out = _bad_seeds(seeds)
        if out:
            raise ConfigError(f"seeds must be integers from 0 to {MAX_SEED} (2**63 - 1); got {out[:3]}")
        return dataclasses.replace(self, seeds=seeds, confirm_seeds=())

    def fitness(self, raw: dict[str, Any], reference: dict[str, Any]) -> tuple[float, dict[str, Any]]:
        """Fitness and per-task summary of one loss's raw results, normalised against ``reference``.

        ``raw`` and ``reference`` are :func:`score_chunk` outputs (task name -> per-seed lists). Per task:
        the mean raw score, and the mean over seeds of ``task.normalize(score, reference score on the same
        seed)`` (paired by seed, which cancels much of the seed-to-seed spread). The fitness is the weighted
        *geometric* mean of the normalised task scores: 1.0 means as good as the reference on average, and a
        loss must do well on every task (one failed task gives 0) rather than excel on one.
        """
        summary: dict[str, Any] = {}
        log_total, weights = 0.0, 0.0
        for t in self.tasks:
            mine, ref = raw[t.name], reference[t.name]
            normalized = [
                t.task.normalize(s, r) if st == "complete" else 0.0
                for s, r, st in zip(mine["scores"], ref["scores"], mine["statuses"])
            ]
            norm = sum(normalized) / len(normalized)
            scores = [s for s, st in zip(mine["scores"], mine["statuses"]) if st == "complete"]
            summary[t.name] = {
                "score": sum(scores) / len(scores) if scores else t.task.worst_score,
                "normalized": norm,
                **mine,
            }
            log_total += t.weight * (math.log(norm) if norm > 0 else -math.inf)
            weights += t.weight
        return (math.exp(log_total / weights) if weights else 0.0), summary


    def fitness_per_seed(self, raw: dict[str, Any], reference: dict[str, Any]) -> list[float]:
        """The fitness on each seed alone (paired with the reference on that seed), for intervals and tests."""
        n = len(next(iter(raw.values()))["scores"])

        def one(results: dict[str, Any], i: int) -> dict[str, Any]:
            return {task: {k: v[i:i + 1] for k, v in r.items() if isinstance(v, list)} for task, r in results.items()}

        return [self.fitness(one(raw, i), one(reference, i))[0] for i in range(n)]


#: Top-level keys of a suite file.
SUITE_KEYS = frozenset({"name", "description", "seeds", "validation_seeds", "confirm_seeds", "tasks", "budget"})


def join_seeds(*raws: dict[str, Any]) -> dict[str, Any]:
    """One set of raw results (task name -> per-seed lists) from several scored on different seeds: each
    task's per-seed lists concatenated in order (so :meth:`Suite.fitness` averages over all the seeds)."""
    out: dict[str, Any] = {}
    for raw in raws:
        for task, results in raw.items():
            lists = out.setdefault(task, {})
            for key, value in results.items():
                if isinstance(value, list):
                    lists[key] = lists.get(key, []) + value
    return out


def _suite_path(spec: str | Path) -> Path:
    if not isinstance(spec, (str, os.PathLike)):  # was a TypeError from Path()
        raise ConfigError(f"a suite is a bundled name, a .toml path or a Suite, got {type(spec).__name__}")
    if not str(spec).strip():  # Path("") is the current directory: "cannot read suite: Is a directory: '.'"
        raise ConfigError("no suite given (an empty name); give a bundled suite name such as regression or a .toml path")
    path = Path(spec)
    if path.suffix == ".toml" or path.exists():
        return path
    path = SUITES_DIR / f"{spec}.toml"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in SUITES_DIR.glob("*.toml")))
        raise ConfigError(f"unknown suite {str(spec)!r}; bundled suites: {known}, or give a .toml path")
    return path


def load_suite(spec: str | Path = "regression") -> Suite:
    """Load a suite by bundled name or TOML path; one ConfigError naming the file and field on bad input."""
    path = _suite_path(spec)
    where = str(path)
    data = read_toml_file(path, where, ConfigError, "suite", "give a .toml path or a bundled suite name")
    data.setdefault("name", path.stem)
    suite = suite_from_spec(data, where)
    _check_suite_file(data, where)
    return suite


def _check_suite_file(data: dict[str, Any], where: str) -> None:
    """Rules of a suite file beyond what :func:`suite_from_spec` checks. Kept to files (bundled or yours), so a
    suite stored in an earlier run file stays readable as it was written: a repeated seed counted one training
    twice (its CI shrank to ± 0), a validation seed that is also a search seed was not held out, an infinite
    weight gave every loss fitness nan, and an empty task name an unnamed column."""
    seeds, val = data.get("seeds", [0]), data.get("validation_seeds", [])
    if not _int_list(val):
        raise ConfigError(f"{where}: 'validation_seeds' must be a list of integers")
    for key, values in (("seeds", seeds), ("validation_seeds", val), ("confirm_seeds", data.get("confirm_seeds", []))):
        # tasks draw from seed mod 2**63 (regression's streams) or 2**64: 2**63 trained as seed 0 and -1 as
        # 2**63 - 1, a training counted twice under two names
        if _bad_seeds(values):
            raise ConfigError(f"{where}: {key!r} must be seeds from 0 to {MAX_SEED} (2**63 - 1); got "
                              f"{_bad_seeds(values)[:3]}")
        if len(set(values)) != len(values):
            raise ConfigError(f"{where}: {key!r} repeats a seed ({sorted(values)}); list each seed once")
    shared = sorted(set(seeds) & set(val))
    if shared:
        raise ConfigError(f"{where}: seed(s) {shared} are both search and validation seeds; validation must be on "
                          "seeds the search never sees")
    if not isinstance(data.get("name"), str) or not data["name"].strip():
        raise ConfigError(f"{where}: 'name' must be a non-empty string")
    for i, entry in enumerate(data["tasks"]):
        if "name" in entry and (not isinstance(entry["name"], str) or not entry["name"].strip()):
            raise ConfigError(f"{where}: tasks[{i}]: 'name' must be a non-empty string")
        if "name" in entry and (entry["name"][0] in "=+-@" or any(ord(ch) < 32 or ord(ch) == 127
                                                                  for ch in entry["name"])):
            # a task name heads a column of `show --format csv`: a spreadsheet runs a cell starting with
            # = + - @ as a formula, and a control character breaks the tables
            raise ConfigError(f"{where}: tasks[{i}]: 'name' {entry['name']!r} must not start with = + - @ or "
                              "hold control characters; rename the task")
        if not math.isfinite(entry.get("weight", 1.0)):
            raise ConfigError(f"{where}: tasks[{i}]: 'weight' must be a positive, finite number")
        if not MIN_WEIGHT <= entry.get("weight", 1.0) <= MAX_WEIGHT:
            # weights are relative: two of 1e308 summed to inf and one of 1e-320 lost log(score) to underflow,
            # and either way every loss got fitness 1.0
            raise ConfigError(f"{where}: tasks[{i}]: 'weight' must be between {MIN_WEIGHT:g} and {MAX_WEIGHT:g} "
                              "(weights are relative: 2 counts a task twice)")


#: Range of a task's weight in a suite file (weights are relative; outside it the fitness over- or underflows).
MIN_WEIGHT, MAX_WEIGHT = 1e-6, 1e6

#: Largest seed a suite file may name (seeds are non-negative and kept within the tasks' generators).
MAX_SEED = 2**63 - 1


def _bad_seeds(values: Sequence[Any]) -> list[Any]:
    """The entries of ``values`` that are no seed: an integer (not a boolean) from 0 to MAX_SEED."""
    return [s for s in values if not (isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= MAX_SEED)]


def _int_list(value: Any) -> bool:
    """Whether ``value`` is a list of integers (booleans are not seeds)."""
    return isinstance(value, list) and all(isinstance(s, int) and not isinstance(s, bool) for s in value)


def suite_from_spec(data: dict[str, Any], where: str = "suite") -> Suite:
    """Build a Suite from plain data (a parsed TOML file or a stored :meth:`Suite.spec`)."""
    unknown_keys = sorted(set(data) - SUITE_KEYS)
    if unknown_keys:  # a typo such as ``sed = [0]`` must not fall back to the default silently
        raise ConfigError(f"{where}: unknown key(s) {unknown_keys}; valid keys: {', '.join(sorted(SUITE_KEYS))}")
    seeds = data.get("seeds", [0])
    if not _int_list(seeds) or not seeds:
        raise ConfigError(f"{where}: 'seeds' must be a non-empty list of integers")
    val = data.get("validation_seeds", [])
    if not isinstance(val, list) or not all(isinstance(s, int) for s in val):
        raise ConfigError(f"{where}: 'validation_seeds' must be a list of integers")
    budget = data.get("budget")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float))
                               or not math.isfinite(budget) or budget <= 0):
        raise ConfigError(f"{where}: 'budget' must be a positive number of full evaluations, e.g. 250")
    confirm = data.get("confirm_seeds", [])
    if not _int_list(confirm):
        raise ConfigError(f"{where}: 'confirm_seeds' must be a list of integers, e.g. [2, 3, 4, 5]")
    overlap = sorted(set(confirm) & (set(seeds) | set(val)))
    if overlap or len(set(confirm)) != len(confirm):
        raise ConfigError(f"{where}: 'confirm_seeds' must be distinct and differ from the search and validation "
                          f"seeds (repeated or shared: {overlap or sorted(confirm)})")
    raw_tasks = data.get("tasks")
    if not isinstance(raw_tasks, list) or not raw_tasks:
        raise ConfigError(f"{where}: list at least one [[tasks]] entry")
    tasks = []
    for i, entry in enumerate(raw_tasks):
        at = f"{where}: tasks[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{at}: must be a table")
        unknown = set(entry) - {"name", "type", "preset", "weight", "settings"}
        if unknown:
            raise ConfigError(f"{at}: unknown field(s) {sorted(unknown)}; use name, type, preset, weight, settings")
        kind = entry.get("type")
        try:
            cls = resolve(kind)
        except ConfigError as exc:
            raise ConfigError(f"{at}: {exc}") from None
        settings: dict[str, Any] = {}
        if "preset" in entry:
            named = presets(kind)
            if entry["preset"] not in named:
                raise ConfigError(f"{at}: unknown preset {entry['preset']!r} for {kind}; known: {', '.join(named)}")
            settings.update(named[entry["preset"]])
        extra = entry.get("settings", {})
        if not isinstance(extra, dict):
            raise ConfigError(f"{at}: 'settings' must be a table")
        settings.update(extra)
        try:
            check_settings(cls, kind, settings)
            task = cls(**settings)
        except TypeError as exc:
            raise ConfigError(f"{at}: bad settings for {kind}: {exc}") from None
        except ConfigError as exc:
            raise ConfigError(f"{at}: {exc}") from None
        weight = entry.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
            raise ConfigError(f"{at}: 'weight' must be a positive number")
        tasks.append(SuiteTask(str(entry.get("name", f"{kind}_{i}")), task, float(weight)))
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: task names must be unique, got {names}")
    return Suite(str(data["name"]), str(data.get("description", "")), tuple(tasks), tuple(seeds), tuple(val),
                 None if budget is None else float(budget), tuple(confirm))


@lru_cache(maxsize=8)
def _cached_suite(spec_json: str) -> Suite:
    return suite_from_spec(json.loads(spec_json))


def make_loss(spec: LossSpec, problem: str) -> torch.nn.Module:
    """A per-sample loss module from plain data: prefix tokens, or a baseline name."""
    from lossforge.baselines import get_baseline
    from lossforge.loss import SymbolicLoss

    if isinstance(spec, str):
        return get_baseline(spec).make(problem)
    return SymbolicLoss(spec, reduction="none", problem=problem)


@dataclass
class ChunkResult:
    """Raw results of one loss on a suite: task name -> per-seed scores, statuses, reasons, metrics."""

    raw: dict[str, dict[str, list]] = field(default_factory=dict)
    duration_s: float = 0.0

    @property
    def failed(self) -> bool:
        """True when every task and seed failed."""
        return all(st != "complete" for r in self.raw.values() for st in r["statuses"])

    @property
    def first_reason(self) -> str | None:
        """The first failure reason, if any."""
        for name, r in self.raw.items():
            for reason in r["reasons"]:
                if reason:
                    return f"{name}: {reason}"
        return None


def score_chunk(
    specs: Sequence[LossSpec], suite_spec: dict[str, Any], seeds: Sequence[int] | None = None, device: str = "cpu",
    steps_fraction: float = 1.0,
) -> list[ChunkResult]:
    """Score a chunk of losses on every task and seed of a suite, the chunk trained as one batched model;
    ``steps_fraction`` < 1 shortens every task's training (screening, :meth:`Task.shortened`).

    Runs in worker processes: inputs and outputs are plain data. Torch is limited to one thread, as
    several workers share the machine's cores (two threads per process under load slowed training ~10x).
    """
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    suite = _cached_suite(json.dumps(suite_spec, sort_keys=True))
    seeds = list(suite.seeds if seeds is None else seeds)
    results = [ChunkResult() for _ in specs]
    start = time.perf_counter()
    for t in suite.tasks:
        losses = [make_loss(s, t.task.problem) for s in specs]
        task = t.task.shortened(steps_fraction)
        per_seed = [task.evaluate(losses, seed, device) for seed in seeds]
        for k, res in enumerate(results):
            rs = [seed_results[k] for seed_results in per_seed]
            res.raw[t.name] = {
                "seeds": seeds,
                "scores": [r.score if math.isfinite(r.score) else t.task.worst_score for r in rs],
                "statuses": [r.status for r in rs],
                "reasons": [r.reason for r in rs],
                "metrics": [r.metrics for r in rs],
            }
    elapsed = time.perf_counter() - start
    for res in results:  # the chunk trained together: each loss is charged an equal share
        res.duration_s = elapsed / max(1, len(specs))
    return results


def score_chunk_safe(
    specs: Sequence[LossSpec], suite_spec: dict[str, Any], seeds: Sequence[int] | None = None, device: str = "cpu",
    steps_fraction: float = 1.0,
) -> list[ChunkResult]:
    """:func:`score_chunk`, but an unexpected exception fails the chunk's losses instead of the search."""
    try:
        return score_chunk(specs, suite_spec, seeds, device, steps_fraction)
    except Exception as exc:  # noqa: BLE001 - one bad chunk must not stop a search
        reason = "scoring raised " + traceback.format_exception_only(type(exc), exc)[-1].strip()
        return failed_chunk(len(specs), suite_spec, seeds, reason)


def failed_chunk(n: int, suite_spec: dict[str, Any], seeds: Sequence[int] | None, reason: str) -> list[ChunkResult]:
    """Results for ``n`` losses whose chunk could not be scored (an error, a time limit, a lost worker):
    every task and seed failed with ``reason`` and the task's worst score."""
    suite = _cached_suite(json.dumps(suite_spec, sort_keys=True))
    seeds = list(suite.seeds if seeds is None else seeds)
    return [
        ChunkResult(raw={
            t.name: {
                "seeds": list(seeds),
                "scores": [t.task.worst_score] * len(seeds),
                "statuses": ["failed"] * len(seeds),
                "reasons": [reason] * len(seeds),
                "metrics": [{} for _ in seeds],
            }
            for t in suite.tasks
        })
        for _ in range(n)
    ]
