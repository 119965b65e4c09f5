"""Constant tuning: improve a loss's numeric constants by gradient ascent on its suite fitness.

The gradient of the fitness with respect to the constants is estimated by simultaneous perturbation
(SPSA): each iteration draws ``directions`` random sign vectors Δ, scores the loss with constants
``c ± h·s·Δ`` (``s = max(|c|, 0.1)``, a per-constant scale), and steps along
``Σ (f(c+) - f(c-)) / (2h) · Δ``. Why this rather than differentiating the validation score through unrolled
training updates:

* it uses the suite's *real* fitness (robust accuracy under attack, error after purification, ...), much
  of which is not differentiable, instead of a differentiable surrogate;
* every variant of one iteration is trained as one batched model with common random numbers (same data,
  initial weights, batches and noise), so the differences ``f(c+) - f(c-)`` are free of seed noise and a
  few directions suffice;
* unrolled hypergradients of a few hundred Adam steps cost memory linear in the steps and are notoriously
  noisy for short horizons; SPSA's cost is a handful of extra trainings, batched.

The best variant seen is kept (never worse than the start on the tuning seeds). Constants are the
tree's float tokens, so the tuned loss is an ordinary tree: stored, exported and loaded like any other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from lossforge.evaluator import FULL, Evaluator, Fidelity
from lossforge.expression import LossExpression
from lossforge.scoring import Suite


@dataclass
class TuningResult:
    """The tuned loss, its fitness before and after (on the tuning seeds), and the path taken."""

    start: LossExpression
    tuned: LossExpression
    fitness_before: float
    fitness_after: float
    history: list[tuple[list[float], float]] = field(default_factory=list)

    @property
    def improved(self) -> bool:
        """Whether tuning found better constants."""
        return self.fitness_after > self.fitness_before


def _spec(loss: Any) -> Any:
    """The plain-data loss spec of a tunable loss: an expression's tokens, or a baseline setting's spec."""
    return list(loss.tokens) if isinstance(loss, LossExpression) else loss.spec


def tune_constants(expression: Any, suite: Suite, reference: dict[str, Any],
                   iterations: int = 4, directions: int = 4, h: float = 0.15, step: float = 0.5,
                   seed: int = 0, seeds: Sequence[int] | None = None, device: str = "cpu",
                   evaluator: Evaluator | None = None) -> TuningResult:
    """Tune ``expression``'s constants on ``suite`` (fitness relative to ``reference`` raw results, task
    name -> per-seed results on ``seeds``, default the suite's).

    ``expression`` is a :class:`LossExpression` or a :class:`~lossforge.baselines.BaselineSetting` (a torch
    baseline's hyper-parameters). Each iteration scores ``2 * directions + 1`` variants through
    ``evaluator`` (default: a serial one on ``suite``), which trains them in batched chunks. ``step`` is the
    ascent step in units of each constant's scale per unit of fitness gradient; ``seed`` fixes the directions.
    """
    if evaluator is None:
        evaluator = Evaluator(suite, chunk_size=256, device=device)
        evaluator.set_reference_raw(reference)
    fidelity = Fidelity(None if seeds is None else tuple(seeds))
    c = np.array(expression.constants, dtype=np.float64)
    if c.size == 0:
        f0 = evaluator.fitness_of([_spec(expression)], fidelity)[0]
        return TuningResult(expression, expression, f0, f0)
    rng = np.random.default_rng(seed)
    best_c, best_f = c.copy(), None
    history: list[tuple[list[float], float]] = []
    f_before = None
    for _ in range(iterations):
        scale = np.maximum(np.abs(c), 0.1)
        deltas = rng.choice([-1.0, 1.0], size=(directions, c.size))
        variants = [c] + [c + s * h * scale * d for d in deltas for s in (1.0, -1.0)]
        exprs = [expression.with_constants(v.tolist()) for v in variants]
        fits = evaluator.fitness_of([_spec(e) for e in exprs], fidelity)
        if f_before is None:
            f_before = fits[0]
        for v, f in zip(variants, fits):
            history.append((v.tolist(), f))
            if best_f is None or f > best_f:
                best_c, best_f = v.copy(), f
        grad = np.zeros_like(c)
        for i, d in enumerate(deltas):
            grad += (fits[1 + 2 * i] - fits[2 + 2 * i]) / (2 * h) * d
        grad /= directions
        c = c + step * scale * grad / max(1.0, float(np.abs(grad).max()))  # bounded step per iteration
    tuned = expression.with_constants(best_c.tolist())
    return TuningResult(expression, tuned, float(f_before), float(best_f), history)


@dataclass(frozen=True)
class TunedBaseline:
    """A baseline after constant tuning: ``spec`` is what scores it (prefix tokens or ``name(k=v, ...)``)."""

    name: str
    spec: list | str
    formula: str
    fitness_before: float
    fitness_after: float


def tune_baselines(names: list[str], suite: "Suite", iterations: int = 4, seed: int = 0,
                   device: str = "cpu", jobs: int = 1) -> list[TunedBaseline]:
    """Tune each named baseline's constants (expression) or hyper-parameters (torch) on ``suite``'s seeds.

    The same tuning a search gives its best losses (:func:`tune_constants` with the search's
    default ``tune_iterations``), so a found loss is never compared with a mis-set baseline. The directions
    of each baseline's tuning come from ``seed`` and its name. ``jobs`` worker processes train the variants
    (1: in this process); the result does not depend on it.
    """
    from lossforge import gp
    from lossforge.baselines import get_baseline
    from lossforge.executor import make_executor

    # the one scoring path: the Evaluator trains the references (ConfigError if one fails) and the variants;
    # chunks of 16 let several workers share one iteration's variants
    executor = make_executor("joblib", jobs) if jobs != 1 else None
    evaluator = Evaluator(suite, executor, chunk_size=16 if executor is not None else 256, device=device)
    try:
        evaluator.score_references(evaluator.reference_names())
        reference = evaluator.reference_raw(FULL)
        out = []
        for name in names:
            start = get_baseline(name).tunable()
            result = tune_constants(start, suite, reference, iterations, seed=gp.derive_seed("tune", seed, name),
                                    device=device, evaluator=evaluator)
            tuned = result.tuned
            spec = list(tuned.tokens) if isinstance(tuned, LossExpression) else tuned.spec
            out.append(TunedBaseline(name, spec, tuned.formula(), result.fitness_before, result.fitness_after))
        return out
    finally:
        if executor is not None:
            executor.close()
