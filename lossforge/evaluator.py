"""The one scoring path: cache -> rejection -> chunking -> executor -> fitness -> record.

Every score lossforge reports goes through an :class:`Evaluator`: the search loop's candidates, the
``score``/``baselines`` commands and :func:`lossforge.score`, constant tuning and validation. So one loss
is trained the same way, rejected for the same reasons and cached under the same key wherever it is
scored, and a change to how losses are scored is made in one place.

Every request names a :class:`Fidelity` (which seeds, what share of each task's training): full fidelity
is the suite's search seeds with whole trainings; a screening fidelity (one seed, a fraction of the
steps) is what the search's racing uses to rank new losses cheaply before promoting the best.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from lossforge.executor import ChunkTimeout, Executor, make_executor
from lossforge.expression import LossExpression
from lossforge.rejection import probe
from lossforge.scoring import ChunkResult, LossSpec, Suite, failed_chunk, score_chunk_safe
from lossforge.runfile import CandidateState


@dataclass(frozen=True)
class Fidelity:
    """How much scoring an evaluation request gets: ``seeds`` (None: the suite's search seeds) and
    ``steps_fraction`` of each task's training length (1.0: the whole training)."""

    seeds: tuple[int, ...] | None = None
    steps_fraction: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 < self.steps_fraction <= 1.0:
            raise ValueError(f"steps_fraction must be in (0, 1], got {self.steps_fraction}")
        if self.seeds is not None:
            object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))

    @property
    def is_full(self) -> bool:
        """The search's own fidelity: every search seed, whole trainings."""
        return self.seeds is None and self.steps_fraction == 1.0

    def label(self) -> str:
        """Short text for progress lines and the run file."""
        seeds = "all seeds" if self.seeds is None else f"{len(self.seeds)} seed(s)"
        return f"{seeds}, {self.steps_fraction:g} of the training"

    def to_dict(self) -> dict[str, Any]:
        """Plain data."""
        return {"seeds": None if self.seeds is None else list(self.seeds), "steps_fraction": self.steps_fraction}


FULL = Fidelity()


@dataclass
class Evaluation:
    """The outcome of scoring one loss (shared by every individual with its canonical key)."""

    status: CandidateState
    fitness: float
    reason: str | None = None
    task_scores: dict[str, Any] = field(default_factory=dict)


#: Counts an :meth:`Evaluator.evaluate` call returns (the generation statistics add them up).
COUNT_NAMES = ("evaluated", "cache_hits", "rejected", "failed")


class Evaluator:
    """Scores losses on a suite. ``record(expr, evaluation, duration_s, worker)`` (optional) is called for
    every new result of :meth:`evaluate`, so the search writes it to its run file as it arrives.

    ``train`` is the seam through which every training request passes (chunks -> executor); tests and
    the search may wrap it to count or observe what is trained.
    """

    def __init__(self, suite: Suite, executor: Executor | None = None, *, chunk_size: int = 16,
                 device: str = "cpu", chunk_timeout_s: float | None = None,
                 violation: Callable[[Sequence[Any]], str | None] | None = None,
                 lookup: Callable[[str], Any] | None = None,
                 record: Callable[[LossExpression, Evaluation, float, str | None, "Fidelity"], None] | None = None,
                 on_scored: Callable[[int], None] | None = None, scale_twins: bool = False) -> None:
        self.suite = suite
        #: fingerprints ignore a positive factor on the loss (for a scale-free suite: Adam ignores it)
        self.scale_twins = scale_twins
        self.suite_spec = suite.spec()
        self.executor = executor if executor is not None else make_executor("serial", 1)
        self.chunk_size = chunk_size
        self.device = device
        self.chunk_timeout_s = chunk_timeout_s
        self.violation = violation or (lambda tokens: None)
        self.lookup = lookup or (lambda key: None)
        self.record = record or (lambda expr, ev, duration, worker, fidelity: None)
        self.on_scored = on_scored or (lambda n: None)
        self.train: Callable[[list[LossSpec], Fidelity, bool], list[ChunkResult]] = self.train_chunks
        self.cache: dict[str, Evaluation] = {}  # full fidelity (and rejections, which hold at any fidelity)
        self.screens: dict[Fidelity, dict[str, Evaluation]] = {}  # lower fidelities
        self.probes: dict[str, tuple[str | None, str | None]] = {}  # key -> (rejection reason, fingerprint)
        #: results recorded by an unfinished generation (resume): served when that loss is asked for again at
        #: that fidelity, without training or recording it again, but not "known" to the novelty filter
        self.replay: dict[tuple[Fidelity, str], Evaluation] = {}
        #: candidate trainings so far, in full-evaluation equivalents (see :meth:`cost`)
        self.spent = 0.0
        self.fingerprints: dict[str, str] = {}  # gradient fingerprint -> key of the loss scored for it
        self.reference: dict[str, Any] = {}  # loss name -> raw results at full fidelity

    # -------------------------------------------------------------------------------- chunks, executor
    def train_chunks(self, specs: list[LossSpec], fidelity: Fidelity = FULL, timed: bool = True) -> list[ChunkResult]:
        """Train losses (tokens or baseline names) in chunks of at most ``chunk_size``, and at least one per
        worker while there are losses enough; results in input order. ``timed``: apply the per-chunk time
        limit (not to the reference losses, without which no fitness means anything)."""
        # A loss's result does not depend on which or how many losses share its chunk (tasks keep model k's
        # arithmetic independent of K; tests/test_batch_independence.py), so a resumed run or a loss scored
        # alone reproduces the search's numbers bit for bit, and the chunks can be cut for speed alone:
        # evenly, so that 10 losses on 2 workers are 5 + 5, not 10 on one worker while the other waits.
        seeds = None if fidelity.seeds is None else list(fidelity.seeds)
        n_chunks = max(math.ceil(len(specs) / self.chunk_size), min(len(specs), self.executor.n_workers))
        bounds = [round(i * len(specs) / n_chunks) for i in range(n_chunks + 1)] if specs else [0]
        starts = bounds[:-1]
        chunks = [specs[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        out: list[ChunkResult | None] = [None] * len(specs)
        items = [(chunk, self.suite_spec, seeds, self.device, fidelity.steps_fraction) for chunk in chunks]
        try:
            for ci, results in self.executor.map_unordered(
                score_chunk_safe, items, self.chunk_timeout_s if timed else None
            ):
                if isinstance(results, ChunkTimeout):
                    results = failed_chunk(len(chunks[ci]), self.suite_spec, seeds, results.reason)
                out[starts[ci]:starts[ci] + len(results)] = results
                self.on_scored(len(results))
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # noqa: BLE001 - a lost worker fails its chunks, not the search
            reason = f"executor failed: {type(exc).__name__}: {exc}"
            for start, chunk in zip(starts, chunks):
                if out[start] is None:
                    out[start:start + len(chunk)] = failed_chunk(len(chunk), self.suite_spec, seeds, reason)
        return out  # type: ignore[return-value]

    # ------------------------------------------------------------------------------------- references
    def score_references(self, names: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Train the named baselines at full fidelity (untimed) and keep them as references; returns the
        raw results of those newly scored. Raises ConfigError if a task's reference loss fails."""
        from lossforge.errors import ConfigError

        todo = [n for n in dict.fromkeys(names) if n not in self.reference]
        new = dict(zip(todo, (r.raw for r in self.train(todo, FULL, False)))) if todo else {}
        self.reference.update(new)
        for t in self.suite.tasks:  # without a working reference no fitness means anything
            ref = self.reference.get(t.task.reference, {}).get(t.name)
            if ref is not None and "complete" not in ref["statuses"]:
                raise ConfigError(f"reference loss {t.task.reference} failed on task {t.name} "
                                  f"({ref['reasons'][0]}); check the suite's settings")
        return new

    def set_reference_raw(self, raw: dict[str, Any]) -> None:
        """Use ``raw`` (task name -> the task's reference results) as the references."""
        for t in self.suite.tasks:
            self.reference.setdefault(t.task.reference, {})[t.name] = raw[t.name]

    def reference_names(self) -> list[str]:
        """The suite's reference losses (one per task, in task order, no repeats)."""
        return list(dict.fromkeys(t.task.reference for t in self.suite.tasks))

    def reference_raw(self, fidelity: Fidelity = FULL) -> dict[str, Any]:
        """Each task's reference results at ``fidelity`` (seed subsets are cut from the full results; a
        shortened training is scored once and kept, as its own reference)."""
        if fidelity.steps_fraction != 1.0:
            label = f"@{fidelity.steps_fraction:g}:{fidelity.seeds}"
            if label not in self.reference:
                names = self.reference_names()
                results = self.train(names, fidelity, False)
                self.reference[label] = {n: r.raw for n, r in zip(names, results)}
            return {t.name: self.reference[label][t.task.reference][t.name] for t in self.suite.tasks}
        raw = {t.name: self.reference[t.task.reference][t.name] for t in self.suite.tasks}
        if fidelity.seeds is None:
            return raw
        return {task: _select_seeds(r, fidelity.seeds) for task, r in raw.items()}

    def fitness(self, result: ChunkResult, fidelity: Fidelity = FULL) -> tuple[float, dict[str, Any]]:
        """Fitness (0 for a loss that failed everywhere) and per-task summary of one training result."""
        fitness, summary = self.suite.fitness(result.raw, self.reference_raw(fidelity))
        return (0.0 if result.failed else fitness), summary

    # --------------------------------------------------------------------------------- one-off scoring
    def rejection(self, expr: LossExpression) -> tuple[str | None, str | None]:
        """(why ``expr`` may not be trained, or None; its gradient fingerprint when it may). Memoised."""
        if expr.key not in self.probes:
            violation = self.violation(expr.tokens)
            if violation is not None:
                self.probes[expr.key] = (violation, None)
            else:
                result = probe(expr, self.suite.problems, self.suite.probe_classes, scale_free=self.scale_twins)
                self.probes[expr.key] = (result.reason, result.fingerprint)
        return self.probes[expr.key]

    def cost(self, fidelity: Fidelity) -> float:
        """What training one loss at ``fidelity`` costs, in full evaluations (seeds share x steps share)."""
        seeds = 1.0 if fidelity.seeds is None else len(fidelity.seeds) / len(self.suite.seeds)
        return seeds * fidelity.steps_fraction

    def novelty(self, expr: LossExpression) -> str | None:
        """None if ``expr`` is a new trainable loss for this run; else why not: ``known`` (its key was
        evaluated at some fidelity or imported), ``twin`` (a scored loss has its gradient fingerprint) or
        ``rejected``."""
        if expr.key in self.cache or any(expr.key in c for c in self.screens.values()):
            return "known"
        imported = self.lookup(expr.key)
        if imported is not None and imported.origin is not None:
            return "known"
        reason, fingerprint = self.rejection(expr)
        if reason is not None:
            return "rejected"
        return "twin" if fingerprint in self.fingerprints else None

    def fitness_of(self, specs: list[LossSpec], fidelity: Fidelity = FULL) -> list[float]:
        """Fitness of each loss (no cache, no record): for tuning, whose variants are throwaway points."""
        return [self.fitness(r, fidelity)[0] for r in self.train(specs, fidelity, True)]

    # ------------------------------------------------------------------------------ search candidates
    def evaluate(self, exprs: Sequence[LossExpression], fidelity: Fidelity = FULL) -> tuple[dict[str, int], list[Evaluation]]:
        """Give every loss an evaluation at ``fidelity``: from the cache (same canonical key, same gradient
        fingerprint, or an imported run; a full-fidelity result serves any request), by rejection, or by
        training (each new result passed to ``record``). Returns the counts (:data:`COUNT_NAMES`) and one
        evaluation per input, in order."""
        counts = dict.fromkeys(COUNT_NAMES, 0)
        cache = self.cache if fidelity.is_full else self.screens.setdefault(fidelity, {})
        known = lambda key: key in self.cache or key in cache  # noqa: E731
        pending: dict[str, LossExpression] = {}
        aliases: dict[str, str] = {}  # key -> key of an equivalent loss scored in its place
        for expr in exprs:
            if known(expr.key) or expr.key in pending or expr.key in aliases:
                counts["cache_hits"] += 1
                continue
            imported = self.lookup(expr.key)  # a full result serves a screening too
            if imported is not None and imported.origin is not None:  # scored by another run: reuse
                ev = Evaluation(imported.status, imported.fitness or 0.0,
                                imported.reason or f"cached from {imported.origin}", imported.task_scores)
                self._keep(self.cache, expr, ev, 0.0, f"cache:{imported.origin}", FULL)
                counts["cache_hits"] += 1
                continue
            reason, fingerprint = self.rejection(expr)
            if reason is not None:  # rejected at every fidelity
                self._keep(self.cache, expr, Evaluation(CandidateState.REJECTED, 0.0, reason), 0.0, None, FULL)
                counts["rejected"] += 1
                continue
            twin = self.fingerprints.get(fingerprint)
            if twin is not None and twin != expr.key and (known(twin) or twin in pending):
                aliases[expr.key] = twin
                counts["cache_hits"] += 1
                continue
            self.fingerprints.setdefault(fingerprint, expr.key)
            pending[expr.key] = expr
        todo = []
        for expr in pending.values():
            replayed = self.replay.pop((fidelity, expr.key), None)
            failed = self.replay.get((FULL, expr.key))
            if replayed is None and failed is not None and failed.status == CandidateState.FAILED:
                replayed = self.replay.pop((FULL, expr.key))  # failures are recorded at full fidelity
            if replayed is None:
                todo.append(expr)
                continue
            (self.cache if replayed.status == CandidateState.FAILED else cache)[expr.key] = replayed
            self.spent += self.cost(fidelity)
            counts["evaluated"] += 1
            counts["failed"] += replayed.status == CandidateState.FAILED
        if todo:
            self.spent += len(todo) * self.cost(fidelity)
            for expr, res in zip(todo, self.train([list(e.tokens) for e in todo], fidelity, True)):
                fitness, summary = self.fitness(res, fidelity)
                if res.failed:  # a loss that cannot train fails at every fidelity: a final result
                    ev = Evaluation(CandidateState.FAILED, 0.0, res.first_reason, summary)
                    counts["failed"] += 1
                    self._keep(self.cache, expr, ev, res.duration_s, None, FULL)
                else:
                    ev = Evaluation(CandidateState.COMPLETE, fitness, res.first_reason, summary)
                    self._keep(cache, expr, ev, res.duration_s, None, fidelity)
                counts["evaluated"] += 1
        for key, twin in aliases.items():
            cache[key] = self.cache[twin] if twin in self.cache else cache[twin]
        return counts, [self.cache[e.key] if e.key in self.cache else cache[e.key] for e in exprs]

    def _keep(self, cache: dict[str, Evaluation], expr: LossExpression, ev: Evaluation, duration: float,
              worker: str | None, fidelity: Fidelity) -> None:
        cache[expr.key] = ev
        self.record(expr, ev, duration, worker, fidelity)

    def knows(self, expr: LossExpression) -> bool:
        """Whether this loss (its canonical key) has already been given an evaluation."""
        return expr.key in self.cache

    def remember(self, expr: LossExpression, ev: Evaluation, fingerprint: str | None = None,
                 fidelity: Fidelity = FULL, finished: bool = True) -> None:
        """Take a stored result (resume) into the cache, and its fingerprint when it was trained here.
        ``finished=False``: the result of a generation that did not finish, kept for replay only (the
        generation is bred again exactly as before, so it must not find its own losses known)."""
        if not finished and ev.status != CandidateState.REJECTED:
            self.replay[(fidelity, expr.key)] = ev
            return
        (self.cache if fidelity.is_full or ev.status == CandidateState.REJECTED
         else self.screens.setdefault(fidelity, {}))[expr.key] = ev
        if fingerprint is not None:
            self.fingerprints.setdefault(fingerprint, expr.key)


def _select_seeds(raw: dict[str, list], seeds: Sequence[int]) -> dict[str, list]:
    index = [raw["seeds"].index(s) for s in seeds]
    return {k: [v[i] for i in index] if isinstance(v, list) else v for k, v in raw.items()}


def rejected_result(suite: Suite, reason: str, seeds: Sequence[int] | None = None) -> ChunkResult:
    """The result a rejected loss stands for: every task and seed failed with ``reason`` (never trained)."""
    return failed_chunk(1, suite.spec(), seeds, reason)[0]
