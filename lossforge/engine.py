"""The search loop: generations of ask (variation) -> score -> tell (selection), recorded in the run file.

Every generation seeds Python's ``random`` (which DEAP's operators use) from (run seed, generation), so
the run is reproducible, independent of ``jobs``, and can be resumed from its last recorded generation.
Candidates are de-duplicated by canonical key before scoring (a loss is never trained twice in a run),
cheap checks reject hopeless ones, and the rest are scored in chunks (each chunk one batched model per
task, at most ``chunk_size`` losses, at least one chunk per worker) by the executor; each result is
written to the run file as soon as it arrives.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, TextIO

from deap import algorithms, tools

from lossforge import gp
from lossforge.errors import ConfigError, LossforgeError, RunError
from lossforge.executor import ChunkTimeout, make_executor
from lossforge.expression import LossExpression
from lossforge.progress import GenerationStats, Progress, make_progress
from lossforge.rejection import probe, rejection_reason
from lossforge.scoring import ChunkResult, Suite, failed_chunk, load_suite, score_chunk_safe, suite_from_spec
from lossforge.space import SearchSpace, load_space
from lossforge.runfile import CandidateState, RunStatus, RunStore

#: Baselines scored on every run's suite, shown beside the evolved losses.
DISPLAY_BASELINES = {"regression": ("mse", "huber", "mae"),
                     "classification": ("cross_entropy", "gce", "mae", "sce", "nce_rce", "nce_agce", "anl_ce")}


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


@dataclass
class SearchConfig:
    """Settings of a search. Stored in the run file; every field is plain data."""

    population: int = 40
    generations: int = 8
    seed: int = 0
    space: str = "survey"
    suite: str = "regression"
    jobs: int = -1
    #: "serial", "joblib" (default, one machine) or "dask" (a cluster: scheduler address or local workers)
    executor: str = "joblib"
    scheduler: str | None = None
    dask_workers: int | None = None
    #: a chunk of candidates scoring longer than this (seconds) is stopped and its candidates fail
    chunk_timeout_s: float | None = None
    chunk_size: int = 16
    tournament_size: int = 3
    crossover_prob: float = 0.7
    mutation_prob: float = 0.4
    elite: int = 2
    hall_of_fame: int = 10
    device: str = "cpu"
    #: "tournament" (single objective, elitist) or "nsga2" (fitness vs complexity, Pareto front)
    selection: str = "tournament"
    #: put the known losses the space can express into generation 0
    seed_baselines: bool = False
    #: re-score this many hall-of-fame losses on the suite's validation seeds when the search ends
    validate_top: int = 5
    #: tune the constants of this many best losses (SPSA on the search seeds) when the search ends
    tune_top: int = 0
    tune_iterations: int = 4

    def __post_init__(self) -> None:
        checks = [
            (self.population >= 2, "population must be at least 2"),
            (self.generations >= 1, "generations must be at least 1"),
            (self.jobs == -1 or self.jobs >= 1, "jobs must be -1 (all cores) or at least 1"),
            (self.executor in ("serial", "joblib", "dask"), "executor must be serial, joblib or dask"),
            (self.executor == "dask" or (self.scheduler is None and self.dask_workers is None),
             "scheduler and dask_workers need executor 'dask'"),
            (self.dask_workers is None or self.dask_workers >= 1, "dask_workers must be at least 1"),
            (self.chunk_timeout_s is None or self.chunk_timeout_s > 0, "chunk_timeout_s must be positive"),
            (1 <= self.chunk_size <= 256, "chunk_size must be between 1 and 256"),
            (self.tournament_size >= 2, "tournament_size must be at least 2"),
            (0.0 <= self.crossover_prob <= 1.0, "crossover_prob must be in [0, 1]"),
            (0.0 <= self.mutation_prob <= 1.0, "mutation_prob must be in [0, 1]"),
            (self.elite >= 0, "elite must be >= 0"),
            (self.hall_of_fame >= 1, "hall_of_fame must be at least 1"),
            (self.selection in ("tournament", "nsga2"), "selection must be 'tournament' or 'nsga2'"),
            (self.validate_top >= 0, "validate_top must be >= 0"),
            (self.tune_top >= 0 and self.tune_iterations >= 1, "tune_top must be >= 0 and tune_iterations >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    def to_dict(self) -> dict[str, Any]:
        """Plain data."""
        return dataclasses.asdict(self)


@dataclass
class Evaluation:
    """The outcome of scoring one loss (shared by every individual with its canonical key)."""

    status: CandidateState
    fitness: float
    reason: str | None = None
    task_scores: dict[str, Any] = field(default_factory=dict)


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
        config = SearchConfig(**stored)
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


class Search:
    """A search bound to a run file. Build with :meth:`create` (new run) or :meth:`resume`."""

    def __init__(self, store: RunStore, config: SearchConfig, space: SearchSpace, suite: Suite,
                 quiet: bool = True, stream: TextIO | None = None) -> None:
        self.store = store
        self.config = config
        self.space = space
        self.suite = suite
        self.suite_spec = suite.spec()
        self.quiet, self.stream = quiet, stream
        self.reporter: Progress = make_progress(1, config.population, quiet=True)
        self.individual_class = gp.ParetoIndividual if config.selection == "nsga2" else gp.Individual
        self.toolbox, self.pset = gp.toolbox_for(
            space, min(config.tournament_size, config.population), self.individual_class
        )
        self.cache: dict[str, Evaluation] = {}
        self.fingerprints: dict[str, str] = {}  # gradient fingerprint -> key of the loss scored for it
        self.reference: dict[str, Any] = {}
        options = {}
        if config.scheduler is not None:
            options["address"] = config.scheduler
        if config.dask_workers is not None:
            options["n_workers"] = config.dask_workers
        self.executor = make_executor(config.executor, config.jobs, **options)
        self.chunk_size = config.chunk_size
        if config.scheduler is None:  # a remote cluster's memory is not this machine's
            per_model = max(t.task.memory_per_model() for t in suite.tasks)
            self.chunk_size = memory_chunk_cap(config.chunk_size, per_model, self.executor.n_workers)

    # ------------------------------------------------------------------------------------------ set-up
    @classmethod
    def create(cls, run_path: str | Path, config: SearchConfig, quiet: bool = True,
               stream: TextIO | None = None) -> "Search":
        """Start a new run file at ``run_path`` (refuses an existing one)."""
        space = load_space(config.space)
        suite = load_suite(config.suite)
        document = {"search": config.to_dict(), "space": space.to_dict(), "suite": suite.spec()}
        store = RunStore.create(run_path, document, suite_hash=suite.hash, lease=True)
        try:
            return cls(store, config, space, suite, quiet, stream)
        except BaseException:
            store.discard()  # a failed start leaves no run behind, so a retry is not refused
            raise

    def import_cache(self, run_paths: Sequence[str | Path]) -> int:
        """Reuse the evaluations of earlier runs on the same suite (same tasks, settings and seeds)."""
        try:
            return sum(self.store.import_cache(path, self.suite.hash) for path in run_paths)
        except BaseException:
            self.executor.close()
            self.store.discard()  # a refused --cache-from leaves no half-made run behind
            raise

    @classmethod
    def resume(cls, run_path: str | Path, quiet: bool = True, stream: TextIO | None = None,
               scheduler: str | None = None, dask_workers: int | None = None) -> "Search":
        """Re-open a run file to continue it from its last recorded generation, holding its lease.

        Everything stored is checked first, read-only, as a new search would check it; a refused run is
        left byte-identical. Endpoints (``scheduler``) come from the caller, never from the file."""
        with RunStore.open(run_path, readonly=True) as peek:
            stored_setup(peek, scheduler, dask_workers)
        store = RunStore.open(run_path, lease=True)
        try:
            config, space, suite, last = stored_setup(store, scheduler, dask_workers)
            search = cls(store, config, space, suite, quiet, stream)
            search._load_cache()
        except BaseException:
            store.close()
            raise
        return search

    def _load_cache(self) -> None:
        for rec in self.store.candidates():
            if rec.key and rec.status.is_finished():
                self.cache[rec.key] = Evaluation(rec.status, rec.fitness if rec.fitness is not None else 0.0,
                                                 rec.reason, rec.task_scores)
                if rec.status != CandidateState.REJECTED and rec.worker is None:  # scored here: re-probe
                    fingerprint = probe(LossExpression(rec.tree), self.suite.problems).fingerprint
                    self.fingerprints.setdefault(fingerprint, rec.key)
        self.reference = {name: scores for name, scores in self.store.baselines().items()}

    # -------------------------------------------------------------------------------------- scoring
    def _score_specs(self, specs: list[Any], seeds: list[int] | None = None, timed: bool = True) -> list[ChunkResult]:
        """Score losses (tokens or baseline names) in chunks of at most ``chunk_size``, and at least one per
        worker while there are losses enough; results in input order. ``timed``: apply the per-chunk time
        limit (not to the reference losses, without which no fitness means anything)."""
        # A loss's result does not depend on which or how many losses share its chunk (tasks keep model k's
        # arithmetic independent of K; tests/test_batch_independence.py), so a resumed run or a loss scored
        # alone reproduces the search's numbers bit for bit, and the chunks can be cut for speed alone:
        # evenly, so that 10 losses on 2 workers are 5 + 5, not 10 on one worker while the other waits.
        n_chunks = max(math.ceil(len(specs) / self.chunk_size), min(len(specs), self.executor.n_workers))
        bounds = [round(i * len(specs) / n_chunks) for i in range(n_chunks + 1)] if specs else [0]
        starts = bounds[:-1]
        chunks = [specs[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        out: list[ChunkResult | None] = [None] * len(specs)
        items = [(chunk, self.suite_spec, seeds, self.config.device) for chunk in chunks]
        try:
            for ci, results in self.executor.map_unordered(
                score_chunk_safe, items, self.config.chunk_timeout_s if timed else None
            ):
                if isinstance(results, ChunkTimeout):
                    results = failed_chunk(len(chunks[ci]), self.suite_spec, seeds, results.reason)
                out[starts[ci]:starts[ci] + len(results)] = results
                self.reporter.candidate_scored(len(results))
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # noqa: BLE001 - a lost worker fails its chunks, not the search
            reason = f"executor failed: {type(exc).__name__}: {exc}"
            for start, chunk in zip(starts, chunks):
                if out[start] is None:
                    out[start:start + len(chunk)] = failed_chunk(len(chunk), self.suite_spec, seeds, reason)
        return out  # type: ignore[return-value]

    def score_baselines(self) -> None:
        """Score the suite's reference losses (fitness normalises against them) and display baselines."""
        names: list[str] = []
        for t in self.suite.tasks:
            for name in (t.task.reference, *DISPLAY_BASELINES[t.task.problem]):
                if name not in names and name not in self.reference:
                    names.append(name)
        if not names:
            return
        self.reporter.phase("baselines", len(names))
        for name, res in zip(names, self._score_specs(names, timed=False)):
            self.reference[name] = res.raw
            self.store.set_result("baseline", name, res.raw)
        for t in self.suite.tasks:  # without a working reference no fitness means anything
            ref = self.reference[t.task.reference][t.name]
            if "complete" not in ref["statuses"]:
                raise ConfigError(f"reference loss {t.task.reference} failed on task {t.name} "
                                  f"({ref['reasons'][0]}); check the suite's settings")

    def _reference_raw(self) -> dict[str, Any]:
        return {t.name: self.reference[t.task.reference][t.name] for t in self.suite.tasks}

    def baseline_fitness(self, name: str) -> float:
        """Fitness of a scored baseline (the reference itself scores 1.0)."""
        return self.suite.fitness(self.reference[name], self._reference_raw())[0]

    def evaluate(self, individuals: Sequence[gp.Individual], generation: int) -> dict[str, int]:
        """Give every individual a fitness: from the cache (same canonical key, same gradient fingerprint,
        or an imported run), by rejection, or by training (recorded as it arrives)."""
        counts = {"evaluated": 0, "cache_hits": 0, "rejected": 0, "failed": 0}
        exprs = [gp.expression_of(ind) for ind in individuals]
        pending: dict[str, LossExpression] = {}
        aliases: dict[str, str] = {}  # key -> key of an equivalent loss scored in its place
        for expr in exprs:
            if expr.key in self.cache or expr.key in pending or expr.key in aliases:
                counts["cache_hits"] += 1
                continue
            imported = self.store.lookup(self.suite.hash, expr.key)
            if imported is not None and imported.origin is not None:  # scored by another run: reuse
                ev = Evaluation(imported.status, imported.fitness or 0.0,
                                imported.reason or f"cached from {imported.origin}", imported.task_scores)
                self._record(expr, generation, ev, 0.0, worker=f"cache:{imported.origin}")
                counts["cache_hits"] += 1
                continue
            violation = self.space.violation(expr.tokens)
            result = probe(expr, self.suite.problems) if violation is None else None
            reason = violation or result.reason
            if reason is not None:
                self._record(expr, generation, Evaluation(CandidateState.REJECTED, 0.0, reason), 0.0)
                counts["rejected"] += 1
                continue
            twin = self.fingerprints.get(result.fingerprint)
            if twin is not None:
                aliases[expr.key] = twin
                counts["cache_hits"] += 1
                continue
            self.fingerprints[result.fingerprint] = expr.key
            pending[expr.key] = expr
        todo = list(pending.values())
        if todo:
            results = self._score_specs([list(e.tokens) for e in todo])
            reference = self._reference_raw()
            for expr, res in zip(todo, results):
                fitness, summary = self.suite.fitness(res.raw, reference)
                if res.failed:
                    ev = Evaluation(CandidateState.FAILED, 0.0, res.first_reason, summary)
                    counts["failed"] += 1
                else:
                    ev = Evaluation(CandidateState.COMPLETE, fitness, res.first_reason, summary)
                self._record(expr, generation, ev, res.duration_s)
                counts["evaluated"] += 1
        for key, twin in aliases.items():
            self.cache[key] = self.cache[twin]
        for ind, expr in zip(individuals, exprs):
            ind.fitness.values = self._objectives(self.cache[expr.key].fitness, expr)
        return counts

    def _objectives(self, fitness: float, expr: LossExpression) -> tuple[float, ...]:
        if self.config.selection == "nsga2":
            return (fitness, float(expr.complexity))
        return (fitness,)

    def _record(self, expr: LossExpression, generation: int, ev: Evaluation, duration: float,
                worker: str | None = None) -> None:
        self.cache[expr.key] = ev
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

    def initial_population(self) -> tuple[list[gp.Individual], int]:
        """Generation 0: the seeded known losses (if asked), then ramped half-and-half trees with distinct
        canonical keys that satisfy the space's constraints and pass the early-rejection checks (random
        trees mostly cannot train; drawing more is cheap next to training). Returns the population and how
        many draws were rejected."""
        self._seed(0)
        population = self.seed_individuals() if self.config.seed_baselines else []
        seen: set[str] = {gp.expression_of(ind).key for ind in population}
        rejected = 0
        budget = 200 * self.config.population  # bounded: a space that cannot make viable trees still runs
        while len(population) < self.config.population:
            ind = self.toolbox.individual()
            expr = gp.expression_of(ind)
            budget -= 1
            if expr.key in seen and budget > 0:
                continue
            seen.add(expr.key)
            if budget > 0 and (self.space.violation(expr.tokens) or rejection_reason(expr, self.suite.problems)):
                rejected += 1
                continue
            population.append(ind)
        return population, rejected

    def _next_generation(self, population: list[gp.Individual], generation: int) -> list[gp.Individual]:
        """Offspring of ``population`` (tournament: elitist; nsga2: offspring only, merged after scoring)."""
        self._seed(generation)
        if self.config.selection == "nsga2":
            population = tools.selNSGA2(population, len(population))  # assigns crowding distances
            k = len(population) - len(population) % 4
            parents = tools.selTournamentDCD(population, k) + tools.selRandom(population, len(population) - k)
            return algorithms.varAnd(parents, self.toolbox, self.config.crossover_prob, self.config.mutation_prob)
        elite = tools.selBest(population, min(self.config.elite, len(population) - 1))
        offspring = self.toolbox.select(population, len(population) - len(elite))
        offspring = algorithms.varAnd(offspring, self.toolbox, self.config.crossover_prob, self.config.mutation_prob)
        return elite + offspring

    def _survivors(self, population: list[gp.Individual], offspring: list[gp.Individual]) -> list[gp.Individual]:
        if self.config.selection == "nsga2":
            return tools.selNSGA2(population + offspring, len(population))
        return offspring

    def _finish_generation(self, gen: int, population: list[gp.Individual], counts: dict[str, int],
                           started: float) -> GenerationStats:
        fits = [ind.fitness.values[0] for ind in population]
        best = max(population, key=lambda ind: ind.fitness.values[0])
        stats = GenerationStats(
            gen=gen, best=max(fits), median=statistics.median(fits), best_formula=gp.expression_of(best).formula(),
            seconds=time.perf_counter() - started, **counts,
        )
        self.store.record_generation(
            gen,
            [{"tree": gp.to_tokens(ind), "fitness": ind.fitness.values[0]} for ind in population],
            dataclasses.asdict(stats),
        )
        self.reporter.generation_finished(stats)
        return stats

    def _restore_population(self, records: list[dict[str, Any]]) -> list[gp.Individual]:
        population = []
        for rec in records:
            ind = gp.from_tokens(rec["tree"], self.pset, self.individual_class)
            ind.fitness.values = self._objectives(float(rec["fitness"]), gp.expression_of(ind))
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
        for rec in self.store.best(self.config.tune_top):
            expr = LossExpression(rec.tree)
            if not expr.constants or any(rec.key in r for r in tuned_from):
                continue
            result = tune_constants(expr, self.suite, self._reference_raw(), self.config.tune_iterations,
                                    seed=gp.derive_seed("tune", self.config.seed, rec.key), device=self.config.device)
            tuned = result.tuned
            if not result.improved or tuned.key in self.cache:
                continue
            res = self._score_specs([list(tuned.tokens)])[0]
            fitness, summary = self.suite.fitness(res.raw, self._reference_raw())
            state = CandidateState.FAILED if res.failed else CandidateState.COMPLETE
            reason = f"tuned from {rec.key} (fitness {rec.fitness:.4f} -> {fitness:.4f})"
            self._record(tuned, generation, Evaluation(state, fitness if not res.failed else 0.0, reason, summary),
                         res.duration_s)
            self.reporter.message(f"tuned {rec.formula}  ->  {tuned.formula()}  fitness {rec.fitness:.4f} -> {fitness:.4f}")

    def validate(self) -> None:
        """Re-score the best ``validate_top`` losses and the baselines on the suite's validation seeds
        (never used for selection), so the final ranking is not biased by the search seeds."""
        seeds = list(self.suite.validation_seeds)
        if not seeds or self.config.validate_top == 0:
            return
        done = self.store.validations()
        best = [r for r in self.store.best(self.config.validate_top) if r.key not in done]
        names = [n for n in self.reference if f"baseline:{n}" not in done]
        specs: list[Any] = [list(r.tree) for r in best] + names
        if not specs:
            return
        labels = [r.key for r in best] + [f"baseline:{n}" for n in names]
        self.reporter.phase("validation", len(specs))
        for label, res in zip(labels, self._score_specs(specs, seeds)):
            self.store.set_result("validation", label, res.raw)
        self.reporter.message(f"validated the best {len(best)} loss(es) and {len(names)} baseline(s) on seeds {seeds}")

    def hall_of_fame(self, n: int | None = None):
        """The best distinct complete losses of the run so far (from the run file)."""
        return self.store.best(n or self.config.hall_of_fame)

    def run(self) -> list:
        """Run (or continue) the search to its last generation; returns the hall of fame records."""
        self.store.set_status(RunStatus.RUNNING)
        last = self.store.last_generation()
        start_gen = 0 if last is None else last.gen + 1
        self.reporter = make_progress(max(1, self.config.generations + 1 - start_gen), self.config.population,
                                      quiet=self.quiet, stream=self.stream)
        if self.chunk_size < self.config.chunk_size:
            self.reporter.message(
                f"chunks of at most {self.chunk_size} losses instead of {self.config.chunk_size}: "
                f"{self.executor.n_workers} worker(s) training more would not fit in the memory available"
            )
        try:
            self.score_baselines()
            if last is None:
                started = time.perf_counter()
                self.reporter.generation_started(0)
                population, rejected = self.initial_population()
                counts = self.evaluate(population, 0)
                counts["rejected"] += rejected
                self._finish_generation(0, population, counts, started)
                start_gen = 1
            else:
                population = self._restore_population(last.population)
            for gen in range(start_gen, self.config.generations + 1):
                started = time.perf_counter()
                self.reporter.generation_started(gen)
                offspring = self._next_generation(population, gen)
                counts = self.evaluate([ind for ind in offspring if not ind.fitness.valid], gen)
                population = self._survivors(population, offspring)
                self._finish_generation(gen, population, counts, started)
            self.tune()
            self.validate()
        except KeyboardInterrupt:
            self.store.set_status(RunStatus.INTERRUPTED)
            raise
        except BaseException:
            self.store.set_status(RunStatus.FAILED)
            raise
        finally:
            self.reporter.close()
        self.store.set_status(RunStatus.FINISHED)
        return self.hall_of_fame()

    def close(self) -> None:
        """Release the executor and the run file."""
        self.executor.close()
        self.store.close()
