"""Selection and variation strategies: how a generation's offspring are bred and who survives.

Like Optuna's GA sampler (``NSGAIIChildGenerationStrategy``, ``NSGAIIElitePopulationSelectionStrategy``),
the search loop is composed of small strategy objects instead of branches on a setting:

* a :class:`Variation` turns parents into children (DEAP's ``varAnd``, or fresh random trees for the
  random-search control) and re-draws a child the run already knows (the novelty filter);
* a :class:`Selection` says what a fitness is (one objective, or fitness and complexity), picks parents
  and breeds offspring through a variation, and picks the next population.

A new scheme is a new class registered in :data:`SELECTIONS` or :data:`VARIATIONS`.
"""

from __future__ import annotations

import random
from typing import Any, Protocol, Sequence

from deap import algorithms, base, tools

from lossforge import gp
from lossforge.expression import LossExpression


class Variation(Protocol):
    """Turns parents into children."""

    #: how many times a child that is not a new loss may be re-drawn before its slot counts as exhausted
    redraws: int

    def vary(self, parents: list[gp.Individual], toolbox: base.Toolbox) -> list[gp.Individual]:
        """Children of ``parents`` (same number); a changed child's fitness is invalid."""

    def redraw(self, child: gp.Individual, pool: Sequence[gp.Individual], toolbox: base.Toolbox) -> gp.Individual:
        """Another child in place of ``child``, which is not a new loss; ``pool``: the current population."""


class VarAnd:
    """DEAP's ``varAnd``: pairwise one-point crossover with ``crossover_prob``, then mutation with
    ``mutation_prob``; a child that is not a new loss is replaced by a mutant of a random member of the
    population (mutating the child again would mostly walk further from the viable region: most trees
    of a space cannot train)."""

    redraws = 50

    def __init__(self, crossover_prob: float, mutation_prob: float) -> None:
        self.crossover_prob, self.mutation_prob = crossover_prob, mutation_prob

    def vary(self, parents: list[gp.Individual], toolbox: base.Toolbox) -> list[gp.Individual]:
        return algorithms.varAnd(parents, toolbox, self.crossover_prob, self.mutation_prob)

    def redraw(self, child: gp.Individual, pool: Sequence[gp.Individual], toolbox: base.Toolbox) -> gp.Individual:
        mutant, = toolbox.mutate(toolbox.clone(random.choice(list(pool)) if pool else child))
        del mutant.fitness.values
        return mutant


class RandomTrees:
    """Random search: every child is a fresh ramped half-and-half tree of the space (parents unused)."""

    redraws = 400  # most random trees cannot train: as many draws as generation 0 may take per slot

    def vary(self, parents: list[gp.Individual], toolbox: base.Toolbox) -> list[gp.Individual]:
        return [toolbox.individual() for _ in parents]

    def redraw(self, child: gp.Individual, pool: Sequence[gp.Individual], toolbox: base.Toolbox) -> gp.Individual:
        return toolbox.individual()


class Selection(Protocol):
    """Parent choice, breeding and survival of one selection scheme."""

    individual_class: type[gp.Individual]

    def objectives(self, fitness: float, expr: LossExpression) -> tuple[float, ...]:
        """The fitness values DEAP compares."""

    def breed(self, population: list[gp.Individual], variation: Variation,
              toolbox: base.Toolbox) -> tuple[list[gp.Individual], list[gp.Individual]]:
        """The offspring of ``population``: (kept unchanged, e.g. the elite; children of variation)."""

    def survivors(self, population: list[gp.Individual], offspring: list[gp.Individual]) -> list[gp.Individual]:
        """The next population, once the offspring are scored."""


class TournamentElitism:
    """Single objective: the ``elite`` best survive unchanged, the rest are tournament winners varied;
    the offspring replace the population."""

    individual_class = gp.Individual

    def __init__(self, elite: int) -> None:
        self.elite = elite

    def objectives(self, fitness: float, expr: LossExpression) -> tuple[float, ...]:
        return (fitness,)

    def breed(self, population: list[gp.Individual], variation: Variation,
              toolbox: base.Toolbox) -> tuple[list[gp.Individual], list[gp.Individual]]:
        elite = tools.selBest(population, min(self.elite, len(population) - 1))
        parents = toolbox.select(population, len(population) - len(elite))
        return elite, variation.vary(parents, toolbox)

    def survivors(self, population: list[gp.Individual], offspring: list[gp.Individual]) -> list[gp.Individual]:
        return offspring


class NSGA2:
    """NSGA-II over (fitness, complexity): parents by crowded tournament, survivors the best fronts of
    parents and offspring together."""

    individual_class = gp.ParetoIndividual

    def objectives(self, fitness: float, expr: LossExpression) -> tuple[float, ...]:
        return (fitness, float(expr.complexity))

    def breed(self, population: list[gp.Individual], variation: Variation,
              toolbox: base.Toolbox) -> tuple[list[gp.Individual], list[gp.Individual]]:
        population = tools.selNSGA2(population, len(population))  # assigns crowding distances
        k = len(population) - len(population) % 4
        parents = tools.selTournamentDCD(population, k) + tools.selRandom(population, len(population) - k)
        return [], variation.vary(parents, toolbox)

    def survivors(self, population: list[gp.Individual], offspring: list[gp.Individual]) -> list[gp.Individual]:
        return tools.selNSGA2(population + offspring, len(population))


#: Selection schemes by the name used in :class:`~lossforge.engine.SearchConfig`.
SELECTIONS = {"tournament": lambda config: TournamentElitism(config.elite), "nsga2": lambda config: NSGA2()}
#: Variation schemes by name.
VARIATIONS = {"varand": lambda config: VarAnd(config.crossover_prob, config.mutation_prob),
              "random": lambda config: RandomTrees()}


def make_selection(config: Any) -> Selection:
    """The selection strategy a config names."""
    return SELECTIONS[config.selection](config)


def make_variation(config: Any) -> Variation:
    """The variation strategy a config names."""
    return VARIATIONS[config.variation](config)
