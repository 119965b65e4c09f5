"""The GP machinery on DEAP: primitive set from a search space, individuals <-> prefix tokens, variation.

DEAP's operators draw from Python's global ``random``; the engine seeds it at the start of every
generation from (run seed, generation), so a run is reproducible, independent of the number of workers,
and a resumed run continues exactly as an uninterrupted one would. Individuals are plain classes defined
here (no ``creator`` globals), and workers never see them: they receive prefix tokens.
"""

from __future__ import annotations

import copy
import hashlib
import operator
import random
from functools import lru_cache
from typing import Callable, Sequence

from deap import base, gp, tools

from lossforge.expression import LossExpression, Token
from lossforge.operators import OPERATORS
from lossforge.space import SearchSpace, constant_bounds


class ScalarFitness(base.Fitness):
    """Single objective: robustness fitness, maximised."""

    weights = (1.0,)


class ParetoFitness(base.Fitness):
    """Two objectives for NSGA-II: robustness fitness (maximised) and complexity (minimised)."""

    weights = (1.0, -1.0)


class Individual(gp.PrimitiveTree):
    """A GP tree with a single-objective fitness."""

    fitness_class: type[base.Fitness] = ScalarFitness

    def __init__(self, content: Sequence[gp.Primitive | gp.Terminal]) -> None:
        super().__init__(content)
        self.fitness = self.fitness_class()


class ParetoIndividual(Individual):
    """A GP tree with a (fitness, complexity) fitness."""

    fitness_class = ParetoFitness


def derive_seed(*parts: object) -> int:
    """A stable 63-bit seed from any parts (Python's ``hash`` is salted per process, so not used)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


@lru_cache(maxsize=None)
def _constant_sampler(low: float, high: float, digits: int) -> Callable[[], float]:
    # DEAP requires the same function object for an ephemeral name within a process: cache it.
    first, last = constant_bounds(low, high, digits)

    def sample() -> float:
        # rounding may step outside the range (0.12 .. 0.9 at 1 decimal gave 0.1): keep it inside
        return min(max(round(random.uniform(low, high), digits), first), last)

    return sample


def _ephemeral_name(space: SearchSpace) -> str:
    return "lossforge_const_" + hashlib.sha1(
        repr((space.const_low, space.const_high, space.const_digits)).encode()
    ).hexdigest()[:12]


def primitive_set(space: SearchSpace) -> gp.PrimitiveSet:
    """DEAP primitive set of a space: its operators (from the table), variables and ephemeral constant."""
    pset = gp.PrimitiveSet("loss", len(space.variables))
    pset.renameArguments(**{f"ARG{i}": name for i, name in enumerate(space.variables)})
    for name in space.operators:
        op = OPERATORS[name]
        pset.addPrimitive(op.torch_form, op.arity, name=op.name)
    if space.constants:
        pset.addEphemeralConstant(
            _ephemeral_name(space), _constant_sampler(space.const_low, space.const_high, space.const_digits)
        )
    return pset


def to_tokens(individual: gp.PrimitiveTree) -> list[Token]:
    """Prefix tokens of a DEAP tree."""
    tokens: list[Token] = []
    for node in individual:
        if isinstance(node, gp.Primitive):
            tokens.append(node.name)
        elif isinstance(node.value, str):
            tokens.append(node.value)
        else:
            tokens.append(float(node.value))
    return tokens


def from_tokens(tokens: Sequence[Token], pset: gp.PrimitiveSet, cls: type[Individual] = Individual) -> Individual:
    """Rebuild a DEAP individual from prefix tokens (constants become ephemerals, as in a grown tree)."""
    eph_class = next((t for t in pset.terminals[pset.ret] if isinstance(t, type)), None)
    nodes: list[gp.Primitive | gp.Terminal] = []
    for tok in tokens:
        if isinstance(tok, float):
            if eph_class is None:
                raise ValueError(f"constant {tok!r} in a search space without constants")
            node = eph_class.__new__(eph_class)  # not eph_class(): that would draw a random value
            node.value = tok
            nodes.append(node)
        else:
            nodes.append(pset.mapping[tok])
    return cls(nodes)


def expression_of(individual: gp.PrimitiveTree) -> LossExpression:
    """The LossExpression of a DEAP tree."""
    return LossExpression(to_tokens(individual))


def constraint_limit(space: SearchSpace) -> Callable:
    """Decorator for DEAP variation operators, like ``gp.staticLimit``: an offspring that breaks the
    space's constraints is replaced by a copy of its parent."""

    def decorator(func: Callable) -> Callable:
        def wrapper(*args, **kwargs):
            keep = [copy.deepcopy(ind) for ind in args]
            new_inds = list(func(*args, **kwargs))
            for i, ind in enumerate(new_inds):
                if space.violation(to_tokens(ind)) is not None:
                    new_inds[i] = random.choice(keep)
            return new_inds

        return wrapper

    return decorator


def toolbox_for(space: SearchSpace, tournament_size: int = 3,
                cls: type[Individual] = Individual) -> tuple[base.Toolbox, gp.PrimitiveSet]:
    """A DEAP toolbox: ramped half-and-half init, tournament selection, one-point crossover and a mix of
    subtree, point, constant and shrink mutations, all under the space's height, size and form limits."""
    pset = primitive_set(space)
    tb = base.Toolbox()
    tb.register("expr", gp.genHalfAndHalf, pset=pset, min_=space.init_min_depth, max_=space.init_max_depth)
    tb.register("individual", lambda: cls(tb.expr()))
    tb.register("select", tools.selTournament, tournsize=tournament_size)
    tb.register("mate", gp.cxOnePoint)
    tb.register("expr_mut", gp.genFull, min_=0, max_=2, pset=pset)

    def mutate(individual: Individual) -> tuple[Individual]:
        choice = random.random()
        has_constant = any(isinstance(type(n), gp.MetaEphemeral) for n in individual)
        if choice < 0.4:
            return gp.mutUniform(individual, expr=tb.expr_mut, pset=pset)
        if choice < 0.7:
            return gp.mutNodeReplacement(individual, pset=pset)
        if choice < 0.9 and has_constant:
            return gp.mutEphemeral(individual, "one")
        if len(individual) > 1 and any(isinstance(n, gp.Primitive) and n.arity > 0 for n in individual[1:]):
            return gp.mutShrink(individual)
        return gp.mutUniform(individual, expr=tb.expr_mut, pset=pset)

    tb.register("mutate", mutate)
    for name in ("mate", "mutate"):
        tb.decorate(name, gp.staticLimit(key=operator.attrgetter("height"), max_value=space.max_depth))
        tb.decorate(name, gp.staticLimit(key=len, max_value=space.max_nodes))
        tb.decorate(name, constraint_limit(space))
    return tb, pset
