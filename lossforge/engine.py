"""The search loop: generations of breed (selection + variation) -> evaluate -> survive, recorded in the run file.

The loop reads like DEAP's ``eaSimple``; what a generation does is delegated: the selection and variation
strategies (:mod:`lossforge.selection`) breed offspring and pick survivors, and the
:class:`~lossforge.evaluator.Evaluator` gives each new loss a fitness (cache, rejection, chunked
training on the executor, fitness), each result written to the run file as it arrives.

Every generation seeds Python's ``random`` (which DEAP's operators use) from (run seed, generation), so
the run is reproducible, independent of ``jobs``, and can be resumed from its last recorded generation.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import random
import statistics
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, TextIO

from lossforge import gp
from lossforge.baselines import DISPLAY_BASELINES
from lossforge.errors import ConfigError, LossforgeError, RunError
from lossforge.evaluator import FULL, Evaluation, Evaluator, Fidelity
from lossforge.executor import make_executor
from lossforge.expression import LossExpression
from lossforge.progress import GenerationStats, Progress, format_duration, make_progress
from lossforge.rejection import rejection_reason
from lossforge.scoring import ChunkResult, Suite, load_suite, suite_from_spec
from lossforge.selection import SELECTIONS, VARIATIONS, make_selection, make_variation
from lossforge.space import SearchSpace, load_space
from lossforge.training import check_device
from lossforge.runfile import CONFIRM_FIDELITY, CandidateRecord, CandidateState, RunStatus, RunStore

__all__ = ["SearchConfig", "Search", "GenerationStats", "Evaluation", "Callback"]



#: Share of the memory available at the start that the workers' models may use together.
MEMORY_BUDGET_FRACTION = 0.5
#: Resident memory of a worker before it trains anything (torch, numpy, sympy, the suite's data).
WORKER_BASE_BYTES = 400 * 2**20


def available_memory_bytes() -> int | None:
    """Memory available to new allocations on this machine (Linux ``MemAvailable``), or None if unknown."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def memory_chunk_cap(chunk_size: int, bytes_per_model: int, n_workers: int, available: int | None = None) -> int:
    """The most losses a chunk may hold so that ``n_workers`` chunks training at once stay within
    ``MEMORY_BUDGET_FRACTION`` of the available memory: ``chunk_size`` or fewer, never below 1."""
    available = available_memory_bytes() if available is None else available
    if not bytes_per_model or available is None:
        return chunk_size
    budget = MEMORY_BUDGET_FRACTION * available - n_workers * WORKER_BASE_BYTES
    return max(1, min(chunk_size, int(budget // (n_workers * bytes_per_model))))


#: Population when none is given.
DEFAULT_POPULATION = 40
#: Budget (full evaluations) when neither a budget, a time nor generations are given and the suite names
#: none (``robust`` names its own, so that a plain search on it takes about 10 minutes on 2 cores).
DEFAULT_BUDGET = 400.0
#: Screening share of the training (one seed); chosen by scripts/screening_correlation.py.
DEFAULT_SCREENING = 0.25
#: Generations when only a time limit bounds the search.
MAX_GENERATIONS = 100_000
#: Largest population: a generation is held in memory and generation 0 draws up to 200 trees a slot, so a
#: mistyped 4000000000 would hang before the first line instead of saying so.
MAX_POPULATION = 1_000_000
#: Longest per-chunk time limit: the interval timer that enforces it overflows far beyond (and inf/1e10
#: made every chunk fail); a longer limit is no limit, which is the default.
MAX_CHUNK_TIMEOUT_S = 1e6
#: Largest integer setting: every count is stored and queried in SQLite, whose integers are 64-bit.
MAX_INT_SETTING = 2**63 - 1
#: What a setting's annotation admits (bool is an int to Python, never a count or a rate here).
_SETTING_TYPES = {"int": ((int,), "an integer"), "float": ((int, float), "a number"), "str": ((str,), "a string"),
                  "bool": ((bool,), "True or False")}


def _setting(default: Any, help: str, **cli: Any) -> Any:
    """A SearchConfig field with its help text (and CLI details: ``flag``, ``choices``, ``metavar``,
    ``type``) in its metadata; the CLI options are generated from these."""
    return field(default=default, metadata={"help": help, **cli})


@dataclass
class SearchConfig:
    """Settings of a search. Stored in the run file; every field is plain data. The one place where the
    search's defaults and their help texts are written (the CLI and :func:`lossforge.search` read them)."""

    # "int", not "positive_int": the range (2..MAX_POPULATION) is checked once, in __post_init__
    population: int | None = _setting(None, f"individuals per generation (default: {DEFAULT_POPULATION})",
                                      type="int", metavar="N")
    generations: int | None = _setting(None, "generations after generation 0 (default: as many as --budget buys)",
                                       type="positive_int", metavar="N")
    budget: float | None = _setting(None, "search budget in full evaluations (one loss scored on every search seed "
                                    "with whole trainings; default: the suite's 'budget' (robust: 250, about 10 "
                                    f"minutes on 2 cores), else {DEFAULT_BUDGET:g}; unlimited with --time alone)",
                                    metavar="EVALS", type="positive_float")
    time_s: float | None = _setting(None, "stop starting generations once this much time would be spent, "
                                    "e.g. 10m, 90s, 1h", flag="--time", metavar="DURATION", type="duration")
    screening: float = _setting(DEFAULT_SCREENING, "share of the training every new loss gets on one seed before "
                                "the best are promoted to full scoring (1: no screening)")
    promote: float = _setting(0.25, "share of each generation's screened losses promoted to full scoring")
    niche: int = _setting(2, "at most this many children of one structure (constants aside) per generation; "
                          "0: no limit")
    seed: int = _setting(0, "seed of every random choice (same seed, same run, whatever the workers)")
    space: str = _setting("survey", "search space name or .toml file")
    suite: str = _setting("regression", "suite name or .toml file")
    jobs: int = _setting(-1, "worker processes (-1: all cores)", type="jobs")
    executor: str = _setting("joblib", "joblib: worker processes on this machine; dask: a cluster "
                             "(--scheduler or --dask-workers)", choices=("joblib", "serial", "dask"))
    scheduler: str | None = _setting(None, "dask scheduler address, e.g. tcp://10.0.0.5:8786", metavar="ADDRESS")
    dask_workers: int | None = _setting(None, "start a local dask cluster of N workers", metavar="N",
                                        type="positive_int")
    chunk_timeout_s: float | None = _setting(
        None, "stop a chunk of candidates scoring longer than this and fail them with that reason",
        flag="--chunk-timeout", metavar="SECONDS")
    chunk_size: int = _setting(16, "at most this many candidates trained as one batched model (a generation is "
                               "split evenly over the workers)", type="positive_int")
    tournament_size: int = _setting(3, "individuals per selection tournament")
    crossover_prob: float = _setting(0.7, "probability that a pair of parents is crossed over")
    mutation_prob: float = _setting(0.4, "probability that a child is mutated")
    elite: int = _setting(2, "best individuals kept unchanged each generation (tournament selection)")
    hall_of_fame: int = _setting(10, "best distinct losses kept in the hall of fame")
    device: str = _setting("cpu", "torch device for training (cpu, cuda, ...)")
    selection: str = _setting("tournament", "single-objective tournament, or NSGA-II over fitness vs complexity",
                              choices=tuple(SELECTIONS))
    variation: str = _setting("varand", "varand: crossover and mutation of parents; random: fresh random trees "
                              "(the random-search control)", choices=tuple(VARIATIONS))
    seed_baselines: bool = _setting(True, "start from the known losses the space can express (generation 0)")
    scale_twins: bool = _setting(False, "on a suite whose tasks all train with Adam, which ignores a positive factor "
                                 "on the loss, count c*L as the twin of a scored L (scored once, varied again); "
                                 "off by default: measured, it made the search return GCE itself more often")
    confirm_top: int = _setting(10, "re-score the best loss of each of this many best structures on the suite's "
                                "confirm seeds at the end; they rank by all their seeds (0: off)")
    validate_top: int = _setting(5, "re-score this many best losses on the suite's validation seeds at the end")
    tune_top: int = _setting(0, "tune the constants of this many best losses (SPSA) at the end")
    tune_iterations: int = _setting(4, "SPSA iterations per tuned loss")

    def __post_init__(self) -> None:
        self._check_types()
        checks = [
            (self.population is None or self.population >= 2, "population must be at least 2"),
            (self.population is None or self.population <= MAX_POPULATION,
             f"population must be at most {MAX_POPULATION} (a generation is held in memory); spend a larger budget on "
             "more generations instead"),
            (self.generations is None or self.generations >= 1, "generations must be at least 1"),
            (self.budget is None or (math.isfinite(self.budget) and self.budget > 0),
             "budget must be a positive number of full evaluations, e.g. 200"),
            (self.time_s is None or (math.isfinite(self.time_s) and self.time_s > 0),
             "time must be a positive duration, e.g. 10m"),
            (0.0 < self.screening <= 1.0, "screening must be in (0, 1], e.g. 0.25 (1: no screening)"),
            (0.0 < self.promote <= 1.0, "promote must be in (0, 1], e.g. 0.25"),
            (self.niche >= 0, "niche must be >= 0 (0: no limit)"),
            (self.jobs == -1 or self.jobs >= 1, "jobs must be -1 (all cores) or at least 1"),
            (self.executor in ("serial", "joblib", "dask"), "executor must be serial, joblib or dask"),
            (self.executor == "dask" or (self.scheduler is None and self.dask_workers is None),
             "scheduler and dask_workers need executor 'dask'"),
            (self.dask_workers is None or self.dask_workers >= 1, "dask_workers must be at least 1"),
            (self.chunk_timeout_s is None or 0 < self.chunk_timeout_s <= MAX_CHUNK_TIMEOUT_S,
             f"chunk_timeout_s must be a positive number of seconds up to {MAX_CHUNK_TIMEOUT_S:g}; leave it out for no "
             "limit"),
            (1 <= self.chunk_size <= 256, "chunk_size must be between 1 and 256"),
            (self.tournament_size >= 2, "tournament_size must be at least 2"),
            (0.0 <= self.crossover_prob <= 1.0, "crossover_prob must be in [0, 1]"),
            (0.0 <= self.mutation_prob <= 1.0, "mutation_prob must be in [0, 1]"),
            (self.elite >= 0, "elite must be >= 0"),
            # with no slot left for a child nothing is ever bred (and the budget cannot buy a generation)
            (self.selection != "tournament" or (self.population or DEFAULT_POPULATION) > self.elite,
             f"population ({self.population or DEFAULT_POPULATION}) must be larger than elite ({self.elite}), or no "
             "child is ever bred; raise --population or lower --elite"),
            (self.hall_of_fame >= 1, "hall_of_fame must be at least 1"),
            (self.selection in SELECTIONS, f"selection must be one of {', '.join(SELECTIONS)}"),
            (self.variation in VARIATIONS, f"variation must be one of {', '.join(VARIATIONS)}"),
            (self.confirm_top >= 0, "confirm_top must be >= 0"),
            (self.validate_top >= 0, "validate_top must be >= 0"),
            (self.tune_top >= 0 and self.tune_iterations >= 1, "tune_top must be >= 0 and tune_iterations >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        check_device(self.device, here=self.scheduler is None)  # a remote cluster's workers hold the GPU

    def _check_types(self) -> None:
        """Each field of its annotated type (a path for ``space``/``suite`` becomes its text), ints within
        SQLite's range: a ConfigError naming the field, not a TypeError or an OverflowError deep in a run."""
        for f in dataclasses.fields(self):
            value, kinds = getattr(self, f.name), str(f.type).split(" | ")
            if value is None and "None" in kinds:
                continue
            if kinds[0] == "str" and isinstance(value, os.PathLike):
                value = os.fspath(value)
                setattr(self, f.name, value)
            if kinds[0] in ("int", "float") and isinstance(value, numbers.Real) and not isinstance(value, bool):
                # numpy's numbers are stored as Python's (the run file is JSON)
                value = int(value) if isinstance(value, numbers.Integral) else value
                value = float(value) if not isinstance(value, (int, float)) else value
                setattr(self, f.name, value)
            accepted, described = _SETTING_TYPES[kinds[0]]
            if not isinstance(value, accepted) or (kinds[0] != "bool" and isinstance(value, bool)):
                raise ConfigError(f"{f.name} must be {described}" + (" or None" if "None" in kinds else "")
                                  + f", got {value!r}")
            if kinds[0] == "int" and abs(value) > MAX_INT_SETTING:
                raise ConfigError(f"{f.name} must be at most {MAX_INT_SETTING} in size, got {value}")

    def to_dict(self) -> dict[str, Any]:
        """Plain data."""
        return dataclasses.asdict(self)

    def resolved(self, suite: Suite) -> "SearchConfig":
        """This config with population and generations filled in from the budget (explicit values win)."""
        population = self.population or DEFAULT_POPULATION
        if self.generations is not None:
            return dataclasses.replace(self, population=population)
        if self.budget is None and self.time_s is not None:  # time alone: as many generations as it allows
            return dataclasses.replace(self, population=population, generations=MAX_GENERATIONS)
        budget = self.default_budget(suite) if self.budget is None else self.budget
        per_gen = self.generation_cost(population, len(suite.seeds))
        # generation 0 is a generation too; a budget beyond MAX_GENERATIONS' worth (1e300) still ends at the budget
        generations = min(MAX_GENERATIONS, max(1, round((budget - per_gen) / per_gen)))
        return dataclasses.replace(self, population=population, generations=generations)

    @staticmethod
    def default_budget(suite: Suite) -> float:
        """The budget of a search that sets none: the suite's, else the engine's default."""
        return suite.budget if suite.budget is not None else DEFAULT_BUDGET

    def generation_cost(self, population: int, n_seeds: int, first: bool = False) -> float:
        """Expected spend of one generation in full evaluations: every child screened, the promoted scored
        (``first``: generation 0, where every member is new)."""
        children = population - (self.elite if self.selection == "tournament" and not first else 0)
        if self.screening >= 1.0:
            return float(children)
        return children * (self.screening / n_seeds + self.promote)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SearchConfig":
        """A stored config (fields added since it was written take their defaults, except those of
        :data:`STORED_BEFORE`: a run resumes as it ran)."""
        return cls(**{**STORED_BEFORE, **data})


#: Settings a stored run lacks because it was written before they existed, as those runs ran (so a later
#: change of their default does not change how an old run resumes).
STORED_BEFORE: dict[str, Any] = {"scale_twins": False}


def stored_setup(store: RunStore, scheduler: str | None = None, dask_workers: int | None = None
                 ) -> tuple[SearchConfig, SearchSpace, Suite, Any]:
    """The configuration, space, suite and last generation of a run file, checked as a new search checks
    them (same bounds, same errors) and with every stored candidate and the population readable: RunError
    naming the problem otherwise. ``scheduler``/``dask_workers`` replace the stored ones: an endpoint is
    never dialled because a file says so."""
    where = f"{store.path}: stored configuration"
    document = store.config()
    parts = {name: document.get(name) for name in ("search", "space", "suite")}
    for name, part in parts.items():
        if not isinstance(part, dict):
            raise RunError(f"{where}: '{name}' is not a table; the run cannot be resumed")
    stored = dict(parts["search"])
    if stored.get("scheduler") is not None and scheduler is None:
        raise RunError(f"{store.path} ran on a dask cluster; give its scheduler again with `lossforge resume "
                       f"{store.path} --scheduler ADDRESS` (addresses are never taken from the run file)")
    stored["scheduler"] = scheduler
    if dask_workers is not None:
        stored["dask_workers"] = dask_workers
    if scheduler is not None or dask_workers is not None:
        stored["executor"] = "dask"
    try:
        config = SearchConfig.from_dict(stored)
        space = SearchSpace.from_dict(parts["space"])
        suite = suite_from_spec(parts["suite"], f"{store.path} (stored suite)")
    except LossforgeError as exc:
        raise RunError(f"{where} is invalid: {exc}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise RunError(f"{where} is invalid ({type(exc).__name__}: {str(exc)[:120]}); it cannot be resumed") from None
    from lossforge.ranking import baseline_rows, generation_stats, ranking

    # every stored record the run will read (and print when it ends) is readable
    store.summary(), store.candidates(), ranking(store), baseline_rows(store), generation_stats(store)
    last = store.last_generation()
    if last is not None:
        cls = gp.ParetoIndividual if config.selection == "nsga2" else gp.Individual
        pset = gp.toolbox_for(space, min(config.tournament_size, config.population), cls)[1]
        try:
            for i, item in enumerate(last.population):
                if not isinstance(item, dict) or not isinstance(item.get("fitness"), (int, float)) \
                        or isinstance(item["fitness"], bool) or not math.isfinite(item["fitness"]):
                    raise ValueError(f"member {i} has no finite fitness")
                tokens = LossExpression(item.get("tree"), where=f"member {i}").tokens
                gp.from_tokens(tokens, pset, cls)  # every name is in the run's primitive set
                if space.violation(tokens) is not None:
                    raise ValueError(f"member {i} is outside the run's search space")
        except (LossforgeError, KeyError, TypeError, ValueError) as exc:
            raise RunError(f"{store.path}: the population of generation {last.gen} is damaged ({str(exc)[:120]}); "
                           "the run cannot be resumed") from None
        if not last.population:
            raise RunError(f"{store.path}: the population of generation {last.gen} is empty; the run cannot be "
                           "resumed")
    return config, space, suite, last


#: ``callback(stats, hall_of_fame) -> bool | None``, called after every generation; True stops the search
#: (the run is then ``stopped`` and can be resumed).
Callback = Callable[[GenerationStats, list[CandidateRecord]], "bool | None"]


def _checked_callbacks(callbacks: Any) -> list[Callback]:
    """``callbacks`` as a list of callables (one callable alone is one); a ConfigError before anything runs,
    where a non-callable failed after generation 0 with a TypeError."""
    if callable(callbacks):
        return [callbacks]
    if isinstance(callbacks, (str, bytes)) or not isinstance(callbacks, Iterable):
        raise ConfigError(f"callbacks must be a list of callables, got {type(callbacks).__name__}")
    out = list(callbacks)
    for callback in out:
        if not callable(callback):
            raise ConfigError(f"callbacks must be callables (called as callback(stats, hall_of_fame)), got "
                              f"{callback!r}")
    return out


class Search:
    """A search bound to a run file. Build with :meth:`create` (new run) or :meth:`resume`."""

    def __init__(self, store: RunStore, config: SearchConfig, space: SearchSpace, suite: Suite,
                 quiet: bool = True, stream: TextIO | None = None, callbacks: Sequence[Callback] = ()) -> None:
        self.store = store
        self.config = config
        self.space = space
        self.suite = suite
        self.quiet, self.stream = quiet, stream
        self.callbacks = _checked_callbacks(callbacks)
        if stream is not None and not callable(getattr(stream, "write", None)):  # failed at the first progress line
            raise ConfigError(f"stream must be a text stream with a write() method (e.g. sys.stdout), got "
                              f"{type(stream).__name__}")
        self.reporter: Progress = make_progress(1, config.population, quiet=True)
        self.selection = make_selection(config)
        self.variation = make_variation(config)
        self.individual_class = self.selection.individual_class
        self.toolbox, self.pset = gp.toolbox_for(
            space, min(config.tournament_size, config.population), self.individual_class
        )
        options = {}
        if config.scheduler is not None:
            options["address"] = config.scheduler
        if config.dask_workers is not None:
            options["n_workers"] = config.dask_workers
        executor = make_executor(config.executor, config.jobs, **options)
        chunk_size = config.chunk_size
        if config.scheduler is None:  # a remote cluster's memory is not this machine's
            per_model = max(t.task.memory_per_model() for t in suite.tasks)
            chunk_size = memory_chunk_cap(config.chunk_size, per_model, executor.n_workers)
        self._gen = 0  # the generation whose candidates the evaluator is recording
        self.finished = False  # set by resume() for a run that already finished
        #: fidelity of the first rung (None: every new loss is scored in full at once)
        self.screen = None if config.screening >= 1.0 else Fidelity((suite.seeds[0],), config.screening)
        self.evaluator = Evaluator(
            suite, executor, chunk_size=chunk_size, device=config.device, chunk_timeout_s=config.chunk_timeout_s,
            violation=space.violation, scale_twins=config.scale_twins and suite.scale_free,
            lookup=lambda key: self.store.lookup(self.suite.hash, key),
            record=lambda expr, ev, duration, worker, fidelity: self._record(expr, self._gen, ev, duration, worker,
                                                                             fidelity),
            on_scored=lambda n: self.reporter.candidate_scored(n),
        )
        # every training passes through _score_specs, so a subclass can observe or replace it
        self.evaluator.train = lambda specs, fidelity, timed: self._score_specs(specs, fidelity, timed)

    # the evaluator owns these; kept as attributes of the search for callers and tests
    executor = property(lambda self: self.evaluator.executor,
                        lambda self, value: setattr(self.evaluator, "executor", value))
    chunk_size = property(lambda self: self.evaluator.chunk_size,
                          lambda self, value: setattr(self.evaluator, "chunk_size", value))
    cache = property(lambda self: self.evaluator.cache)
    reference = property(lambda self: self.evaluator.reference)

    # ------------------------------------------------------------------------------------------ set-up
    @classmethod
    def create(cls, run_path: str | Path, config: SearchConfig, quiet: bool = True,
               stream: TextIO | None = None, callbacks: Sequence[Callback] = ()) -> "Search":
        """Start a new run file at ``run_path`` (refuses an existing one)."""
        space = load_space(config.space)
        suite = load_suite(config.suite)
        suite.warn_notices()
        if config.scale_twins and not suite.scale_free:  # the evaluator ignores it: say so, not silently
            tasks = ", ".join(t.name for t in suite.tasks if not t.task.scale_free)
            warnings.warn(f"lossforge: scale_twins has no effect on suite {suite.name!r}: task(s) {tasks} do not "
                          "train with plain Adam (SGD, weight decay or a confidence penalty), so c*L is not L there",
                          UserWarning, stacklevel=2)
        config = config.resolved(suite)
        document = {"search": config.to_dict(), "space": space.to_dict(), "suite": suite.spec()}
        store = RunStore.create(run_path, document, suite_hash=suite.hash, lease=True)
        try:
            return cls(store, config, space, suite, quiet, stream, callbacks)
        except BaseException:
            store.discard()  # a failed start leaves no run behind, so a retry is not refused
            raise

    def import_cache(self, run_paths: Sequence[str | Path]) -> dict[Path, int]:
        """Reuse the evaluations of earlier runs on the same suite (same tasks, settings and seeds): how many
        each run gave (0 from a run on another suite, whose scores mean something else)."""
        try:
            return {Path(path): self.store.import_cache(path, self.suite.hash) for path in run_paths}
        except BaseException:
            self.executor.close()
            self.store.discard()  # a refused --cache-from leaves no half-made run behind
            raise

    @classmethod
    def resume(cls, run_path: str | Path, quiet: bool = True, stream: TextIO | None = None,
               scheduler: str | None = None, dask_workers: int | None = None,
               callbacks: Sequence[Callback] = ()) -> "Search":
        """Re-open a run file to continue it from its last recorded generation, holding its lease.

        Everything stored is checked first, read-only, as a new search would check it; a refused run is
        left byte-identical. Endpoints (``scheduler``) come from the caller, never from the file."""
        with RunStore.open(run_path, readonly=True) as peek:
            stored_setup(peek, scheduler, dask_workers)
            finished = peek.summary().status is RunStatus.FINISHED
        store = RunStore.open(run_path, lease=True)
        try:
            config, space, suite, last = stored_setup(store, scheduler, dask_workers)
            search = cls(store, config, space, suite, quiet, stream, callbacks)
            # a finished run has nothing left to do: run() only reports it, so neither its status nor its
            # elapsed time changes, and its losses are not probed again
            search.finished = finished
            if not finished:
                search._load_cache()
        except BaseException:
            store.close()
            raise
        return search

    def _load_cache(self) -> None:
        last = self.store.last_generation()
        done = -1 if last is None else last.gen
        for rec in self.store.candidates():
            if rec.key and rec.status.is_finished():
                expr = LossExpression(rec.tree)
                fingerprint = None
                if rec.status != CandidateState.REJECTED and rec.worker is None:  # scored here: re-probe
                    fingerprint = self.evaluator.rejection(expr)[1]
                self.evaluator.remember(expr, Evaluation(
                    rec.status, rec.fitness if rec.fitness is not None else 0.0, rec.reason, rec.task_scores
                ), fingerprint if rec.generation <= done else None, finished=rec.generation <= done)
        for rung in self.store.screenings():
            expr = LossExpression(rung["tree"])
            fidelity = Fidelity(rung["fidelity"]["seeds"], rung["fidelity"]["steps_fraction"])
            fitness = rung["fitness"] if rung["fitness"] is not None else 0.0
            finished = rung["generation"] <= done
            fingerprint = self.evaluator.rejection(expr)[1] if finished else None
            self.evaluator.remember(expr, Evaluation(rung["status"], fitness, rung["reason"], rung["task_scores"]),
                                    fingerprint, fidelity, finished)
        self.evaluator.spent = float(last.stats.get("spent", 0.0)) if last is not None else 0.0
        self.reference.update(self.store.baselines())

    # -------------------------------------------------------------------------------------- scoring
    def _score_specs(self, specs: list[Any], seeds: Sequence[int] | Fidelity | None = None,
                     timed: bool = True) -> list[ChunkResult]:
        """Train losses (tokens or baseline names) through the evaluator's chunks and executor, on ``seeds``
        (None: the search seeds) or at a whole :class:`Fidelity`."""
        fidelity = seeds if isinstance(seeds, Fidelity) else Fidelity(None if seeds is None else tuple(seeds))
        return self.evaluator.train_chunks(specs, fidelity, timed)

    def score_baselines(self) -> None:
        """Score the suite's reference losses (fitness normalises against them) and display baselines."""
        names: list[str] = []
        for t in self.suite.tasks:
            for name in (t.task.reference, *DISPLAY_BASELINES[t.task.problem]):
                if name not in names:
                    names.append(name)
        self.reporter.phase("baselines", len(names))
        for name, raw in self.evaluator.score_references(names).items():
            self.store.set_result("baseline", name, raw)

    def _reference_raw(self) -> dict[str, Any]:
        return self.evaluator.reference_raw(FULL)

    def baseline_fitness(self, name: str) -> float:
        """Fitness of a scored baseline (the reference itself scores 1.0)."""
        return self.suite.fitness(self.reference[name], self._reference_raw())[0]

    def evaluate(self, individuals: Sequence[gp.Individual], generation: int) -> dict[str, int]:
        """Give every individual a fitness through the evaluator at full fidelity (recorded in ``generation``)."""
        self._gen = generation
        exprs = [gp.expression_of(ind) for ind in individuals]
        counts, evaluations = self.evaluator.evaluate(exprs, FULL)
        for ind, expr, ev in zip(individuals, exprs, evaluations):
            ind.fitness.values = self.selection.objectives(ev.fitness, expr)
        return {**counts, "screened": 0}

    def race(self, individuals: Sequence[gp.Individual], generation: int) -> dict[str, int]:
        """:meth:`evaluate` without screening; with it, successive halving over two rungs: every loss is screened at ``self.screen`` (one seed, a share of
        the training); the best ``promote`` share of the screened is scored at full fidelity. Only full
        scores reach the candidates table (so the hall of fame and the ranking); a loss left at the first
        rung gets its screening fitness for selection, capped at the worst full fitness of the promoted losses
        that completed (so it never outranks a loss that beat it on screening and was then measured in full)."""
        if self.screen is None:
            return self.evaluate(individuals, generation)
        self._gen = generation
        exprs = [gp.expression_of(ind) for ind in individuals]
        counts, screens = self.evaluator.evaluate(exprs, self.screen)
        screened = counts.pop("evaluated")
        ranked: dict[str, float] = {}
        for expr, ev in zip(exprs, screens):
            if ev.status == CandidateState.COMPLETE and expr.key not in self.cache:
                ranked.setdefault(expr.key, ev.fitness)
        n_promote = math.ceil(self.config.promote * len(ranked)) if ranked else 0
        promoted = set(sorted(ranked, key=lambda k: -ranked[k])[:n_promote])  # stable: ties keep their order
        chosen = list({e.key: e for e in exprs if e.key in promoted}.values())
        full_counts, _ = self.evaluator.evaluate(chosen, FULL)
        counts["failed"] += full_counts["failed"]
        counts["evaluated"] = full_counts["evaluated"]
        # a promoted loss that failed in full was not measured: its 0 would zero every first-rung loss
        full = [self.cache[k].fitness for k in promoted if self.cache[k].status == CandidateState.COMPLETE]
        cap = min(full) if full else math.inf
        for ind, expr, ev in zip(individuals, exprs, screens):
            if expr.key in self.cache:  # scored in full (or rejected)
                fitness = self.cache[expr.key].fitness
            else:
                fitness = min(ev.fitness, cap)
            ind.fitness.values = self.selection.objectives(fitness, expr)
        return {**counts, "screened": screened}

    def novel(self, children: list[gp.Individual], kept: Sequence[gp.Individual],
              pool: Sequence[gp.Individual] = ()) -> tuple[list[gp.Individual], dict[str, int]]:
        """Every slot a new loss: a child the run already knows (same key or gradient fingerprint as a scored
        loss, or as an earlier child of this generation), that is rejected, or whose structure already fills
        its niche is varied again, at most ``variation.redraws`` times; a slot still not new then counts as exhausted."""
        taken = {gp.expression_of(ind).key for ind in kept}
        structures: dict[str, int] = {}
        fingerprints: set[str | None] = set()
        counts = {"redrawn": 0, "exhausted": 0}
        out = []
        for child in children:
            for attempt in range(self.variation.redraws + 1):
                expr = gp.expression_of(child)
                why = self.evaluator.novelty(expr) or ("known" if expr.key in taken else None)
                fingerprint = self.evaluator.probes.get(expr.key, (None, None))[1]
                if why is None and fingerprint in fingerprints:
                    why = "twin"
                if why is None and self.config.niche and structures.get(expr.structure_key, 0) >= self.config.niche:
                    why = "niche"
                if why is None:
                    break
                if attempt == self.variation.redraws:
                    counts["exhausted"] += 1
                    break
                counts["redrawn"] += 1
                child = self.variation.redraw(child, pool, self.toolbox)
            taken.add(expr.key)
            fingerprints.add(fingerprint)
            structures[expr.structure_key] = structures.get(expr.structure_key, 0) + 1
            out.append(child)
        return out, counts

    def _record(self, expr: LossExpression, generation: int, ev: Evaluation, duration: float,
                worker: str | None = None, fidelity: Fidelity = FULL) -> None:
        if not fidelity.is_full:
            self.store.record_rung(generation, list(expr.tokens), key=expr.key, fidelity=fidelity.to_dict(),
                                   status=ev.status, reason=ev.reason, task_scores=ev.task_scores,
                                   fitness=ev.fitness if ev.status == CandidateState.COMPLETE else None)
            return
        self.store.record_candidate(
            generation, list(expr.tokens), status=ev.status, key=expr.key, structure_key=expr.structure_key,
            formula=expr.formula(), latex=expr.latex(), complexity=expr.complexity, reason=ev.reason,
            fitness=ev.fitness if ev.status == CandidateState.COMPLETE else None,
            task_scores=ev.task_scores,
            constants=expr.constants, duration_s=duration, suite_hash=self.suite.hash, worker=worker,
        )

    # ------------------------------------------------------------------------------------ generations
    def _seed(self, generation: int) -> None:
        random.seed(gp.derive_seed("generation", self.config.seed, generation))

    def seed_individuals(self) -> list[gp.Individual]:
        """Known losses this space can express (and whose problem type the suite has), for generation 0."""
        from lossforge.baselines import BASELINES

        seeds = []
        for b in BASELINES.values():
            if b.expression is None or not (b.problem == "any" or b.problem in self.suite.problems):
                continue
            tokens = LossExpression.parse(b.expression).tokens
            if self.space.violation(tokens) is None:
                seeds.append(gp.from_tokens(tokens, self.pset, self.individual_class))
        return seeds[: self.config.population]

    def initial_population(self) -> tuple[list[gp.Individual], dict[str, int]]:
        """Generation 0: the seeded known losses (if asked), then ramped half-and-half trees with distinct
        canonical keys that satisfy the space's constraints and pass the early-rejection checks (random
        trees mostly cannot train; drawing more is cheap next to training). Returns the population and the
        counts of draws ``rejected`` and of slots ``exhausted`` (filled, once the draws ran out, with a
        repeat or a tree that cannot train: the space holds too few viable losses)."""
        self._seed(0)
        population = self.seed_individuals() if self.config.seed_baselines else []
        seen: set[str] = {gp.expression_of(ind).key for ind in population}
        rejected = exhausted = 0
        budget = 200 * self.config.population  # bounded: a space that cannot make viable trees still runs
        while len(population) < self.config.population:
            ind = self.toolbox.individual()
            expr = gp.expression_of(ind)
            budget -= 1
            repeat = expr.key in seen
            if repeat and budget > 0:
                continue
            seen.add(expr.key)
            unfit = repeat or bool(self.space.violation(expr.tokens)
                                   or rejection_reason(expr, self.suite.problems, self.suite.probe_classes))
            if budget > 0 and unfit:
                rejected += 1
                continue
            exhausted += unfit
            population.append(ind)
        return population, {"rejected": rejected, "exhausted": exhausted}

    def _finish_generation(self, gen: int, population: list[gp.Individual], counts: dict[str, Any],
                           started: float) -> bool:
        """Record generation ``gen``, report it and call the callbacks; True when one asks to stop."""
        fits = [ind.fitness.values[0] for ind in population]
        best = max(population, key=lambda ind: ind.fitness.values[0])
        stats = GenerationStats(
            gen=gen, best=max(fits), median=statistics.median(fits), best_formula=gp.expression_of(best).formula(),
            seconds=time.perf_counter() - started, spent=round(self.evaluator.spent, 6),
            structures=len({gp.expression_of(ind).structure_key for ind in population}), **counts,
        )
        self.store.record_generation(
            gen,
            [{"tree": gp.to_tokens(ind), "fitness": ind.fitness.values[0]} for ind in population],
            dataclasses.asdict(stats),
        )
        self.reporter.generation_finished(stats)
        hof = self.hall_of_fame() if self.callbacks else []
        # every callback sees every generation, even after one has asked to stop
        return any([bool(callback(stats, list(hof))) for callback in self.callbacks])

    def _restore_population(self, records: list[dict[str, Any]]) -> list[gp.Individual]:
        population = []
        for rec in records:
            ind = gp.from_tokens(rec["tree"], self.pset, self.individual_class)
            ind.fitness.values = self.selection.objectives(float(rec["fitness"]), gp.expression_of(ind))
            population.append(ind)
        return population

    def tune(self) -> None:
        """Tune the constants of the best ``tune_top`` losses; improved variants join the run's candidates."""
        from lossforge.tuning import tune_constants

        if self.config.tune_top == 0:
            return
        last = self.store.last_generation()
        generation = last.gen if last is not None else 0
        self.reporter.phase("tuning", None)
        tuned_from = {r.reason for r in self.store.candidates() if r.reason and r.reason.startswith("tuned from")}
        # the best losses of the search itself: after a resume the variants tuned before the stop rank among
        # them, and tuning those again (in place of the losses they push out) would change the run
        searched = [r for r in self.store.best(10**9) if not (r.reason or "").startswith("tuned from")]
        top = searched[: self.config.tune_top]
        outcome = {"without constants": 0, "tuned before": 0, "not improved": 0, "improved": 0}
        for rec in top:
            expr = LossExpression(rec.tree)
            if not expr.constants or any(rec.key in r for r in tuned_from):
                outcome["without constants" if not expr.constants else "tuned before"] += 1
                continue
            result = tune_constants(expr, self.suite, self._reference_raw(), self.config.tune_iterations,
                                    seed=gp.derive_seed("tune", self.config.seed, rec.key), device=self.config.device,
                                    evaluator=self.evaluator)
            tuned = result.tuned
            improved = result.improved and tuned.key not in self.cache
            outcome["improved" if improved else "not improved"] += 1
            if not improved:
                continue
            res = self._score_specs([list(tuned.tokens)])[0]
            fitness, summary = self.suite.fitness(res.raw, self._reference_raw())
            state = CandidateState.FAILED if res.failed else CandidateState.COMPLETE
            reason = f"tuned from {rec.key} (fitness {rec.fitness:.4f} -> {fitness:.4f})"
            ev = Evaluation(state, fitness if not res.failed else 0.0, reason, summary)
            self.cache[tuned.key] = ev
            self._record(tuned, generation, ev, res.duration_s)
            self.reporter.message(f"tuned {rec.formula}  ->  {tuned.formula()}  fitness {rec.fitness:.4f} -> {fitness:.4f}")
        # a loss without constants has nothing to tune: say so, or "--tune-top 3" reads as a silent no-op
        self.reporter.message(f"tuning the best {len(top)} loss(es): "
                              + ", ".join(f"{n} {what}" for what, n in outcome.items() if n))

    def confirm(self) -> None:
        """Re-score the best loss of each of the ``confirm_top`` best structures, and the reference losses,
        on the suite's confirm seeds: two search seeds rank losses whose fitness differs by less than their
        noise at random, so the final choice among the best rests on all the seeds (see
        :func:`lossforge.ranking.confirmed_fitness`). Resumable: losses already confirmed are not re-scored."""
        seeds = list(self.suite.confirm_seeds)
        if not seeds or self.config.confirm_top == 0:
            return
        picks: dict[str, CandidateRecord] = {}
        for rec in self.store.best(10**9):  # best first; one per structure (constants aside)
            if len(picks) == self.config.confirm_top:
                break
            picks.setdefault(rec.structure_key or rec.key, rec)
        done = self.store.confirmations()
        best = [r for r in picks.values() if r.key not in done]
        names = [n for n in self.evaluator.reference_names() if f"baseline:{n}" not in done]
        if not best and not names:
            return
        labels = [r.key for r in best] + [f"baseline:{n}" for n in names]
        self.reporter.phase("confirmation", len(labels))
        for label, res in zip(labels, self._score_specs([list(r.tree) for r in best] + names, seeds)):
            self.store.set_result("validation", label, res.raw, fidelity=CONFIRM_FIDELITY)
        self.reporter.message(f"confirmed the best {len(best)} structure(s) on seeds {seeds}")

    def validate(self) -> None:
        """Re-score the best ``validate_top`` losses (by confirmed fitness where measured, else by search
        fitness) and the baselines on the suite's validation seeds (never used for selection), so the final
        ranking is not biased by the search seeds."""
        from lossforge.ranking import ranking

        seeds = list(self.suite.validation_seeds)
        if not seeds or self.config.validate_top == 0:
            return
        done = self.store.validations()
        # validated losses rank first, so after a resume the top N are the same N as before
        best = [x.record for x in ranking(self.store, self.config.validate_top) if x.record.key not in done]
        names = [n for n in self.reference if n in self.store.baselines() and f"baseline:{n}" not in done]
        specs: list[Any] = [list(r.tree) for r in best] + names
        if not specs:
            return
        labels = [r.key for r in best] + [f"baseline:{n}" for n in names]
        self.reporter.phase("validation", len(specs))
        for label, res in zip(labels, self._score_specs(specs, seeds)):
            self.store.set_result("validation", label, res.raw)
        self.reporter.message(f"validated the best {len(best)} loss(es) and {len(names)} baseline(s) on seeds {seeds}")

    def hall_of_fame(self, n: int | None = None) -> list[CandidateRecord]:
        """The best distinct complete losses of the run so far (from the run file)."""
        return self.store.best(n or self.config.hall_of_fame)

    def _generations(self, population: list[gp.Individual], start_gen: int) -> bool:
        """The generational loop (DEAP's ``eaSimple``): breed, keep only new losses, evaluate them, select;
        True if a callback stopped it. Ends early when the budget or the time is spent."""
        for gen in range(start_gen, self.config.generations + 1):
            if self._out_of_budget():
                break
            started = time.perf_counter()
            self.reporter.generation_started(gen)
            self._seed(gen)
            kept, children = self.selection.breed(population, self.variation, self.toolbox)
            children, novelty = self.novel(children, kept, population)
            counts = self.race([ind for ind in children if not ind.fitness.valid], gen)
            population = self.selection.survivors(population, kept + children)
            if self._finish_generation(gen, population, {**counts, **novelty}, started):
                return True
        return False

    def _out_of_budget(self) -> bool:
        """Whether the budget is spent, or the next generation would end past the time limit."""
        if self.config.budget is not None and self.evaluator.spent >= self.config.budget:
            return True
        if self.config.time_s is None:
            return False
        gens = self.store.generations()
        per_gen = statistics.median(g.stats.get("seconds", 0.0) for g in gens[1:]) if len(gens) > 1 else 0.0
        return self.store.summary().elapsed_s + per_gen > self.config.time_s

    def budget_line(self) -> str:
        """What the search may spend, for the start of a run."""
        c = self.config
        limits = [f"budget {c.budget:g} full evaluations" if c.budget is not None else None,
                  f"time {format_duration(c.time_s)}" if c.time_s is not None else None]
        screen = (f"every new loss screened on 1 seed at {c.screening:g} of the training, the best {c.promote:g} "
                  "promoted to full scoring" if self.screen is not None else "every new loss scored in full")
        n_seeds = len(self.suite.seeds)
        expected = c.generation_cost(c.population, n_seeds) * c.generations + c.generation_cost(c.population, n_seeds,
                                                                                                 first=True)
        stop = ", ".join(x for x in limits if x) or f"about {expected:.0f} full evaluations"
        confirm = (f"; then the best {c.confirm_top} structures confirmed on {len(self.suite.confirm_seeds)} more "
                   "seeds" if self.suite.confirm_seeds and c.confirm_top else "")
        return (f"population {c.population}, up to {c.generations} generations, {stop}; {screen} "
                f"(a full evaluation: {len(self.suite.tasks)} tasks x {len(self.suite.seeds)} seeds){confirm}")

    def spend_line(self) -> str:
        """What the search spent, for the end of a run."""
        gens = self.store.generations()
        screened = sum(g.stats.get("screened", 0) for g in gens)
        trained = sum(g.stats.get("evaluated", 0) for g in gens)
        return (f"spent {self.evaluator.spent:.1f} full evaluations in {len(gens)} generation(s): {screened} losses "
                f"screened, {trained} scored in full, {format_duration(self.store.summary().elapsed_s)}")

    def run(self) -> list[CandidateRecord]:
        """Run (or continue) the search to its last generation; returns the hall of fame records."""
        if self.finished:
            reporter = make_progress(1, 1, quiet=self.quiet, stream=self.stream)
            reporter.message(f"run {self.store.path} already finished: nothing to continue")
            reporter.close()
            return self.hall_of_fame()
        self.store.set_status(RunStatus.RUNNING)
        last = self.store.last_generation()
        start_gen = 0 if last is None else last.gen + 1
        # trainings expected per generation: with racing every new loss is screened and the promoted share
        # trained again in full
        per_gen = self.config.population
        if self.screen is not None:
            per_gen += math.ceil(self.config.promote * self.config.population)
        time_left = None if self.config.time_s is None else self.config.time_s - self.store.summary().elapsed_s
        self.reporter = make_progress(max(1, self.config.generations + 1 - start_gen), per_gen,
                                      quiet=self.quiet, stream=self.stream, time_left_s=time_left)
        if self.chunk_size < self.config.chunk_size:
            self.reporter.message(
                f"chunks of at most {self.chunk_size} losses instead of {self.config.chunk_size}: "
                f"{self.executor.n_workers} worker(s) training more would not fit in the memory available"
            )
        if last is None:
            self.reporter.message(self.budget_line())
        stopped = False
        try:
            self.score_baselines()
            if last is None:
                started = time.perf_counter()
                self.reporter.generation_started(0)
                population, drawn = self.initial_population()
                counts = self.race(population, 0)
                counts["rejected"] += drawn["rejected"]
                counts["exhausted"] = drawn["exhausted"]
                stopped = self._finish_generation(0, population, counts, started)
                start_gen = 1
            else:
                population = self._restore_population(last.population)
            stopped = stopped or self._generations(population, start_gen)
            if not stopped:
                self.reporter.message(self.spend_line())
                self.tune()  # tuned variants join the candidates, so they can be confirmed and validated
                self.confirm()
                self.validate()
        except (KeyboardInterrupt, BrokenPipeError):
            # a closed output (`lossforge search | head`) stops the run as Ctrl-C does: it was marked failed,
            # while the CLI exits 0 for it
            self.store.set_status(RunStatus.INTERRUPTED)
            raise
        except BaseException:
            self.store.set_status(RunStatus.FAILED)
            raise
        finally:
            self.reporter.close()
        self.store.set_status(RunStatus.STOPPED if stopped else RunStatus.FINISHED)
        return self.hall_of_fame()

    def close(self) -> None:
        """Release the executor and the run file."""
        self.executor.close()
        self.store.close()
