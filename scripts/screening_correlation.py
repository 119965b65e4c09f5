#!/usr/bin/env python
"""How well does a cheap screening score rank losses like the full score?

Draws random viable losses of a space (distinct canonical keys and gradient fingerprints, passing the
rejection checks), scores each at full fidelity (every search seed, whole trainings) and at each screening
fidelity (one seed, a fraction of the training), and prints the Spearman rank correlation between each
screening score and the full score. Results are appended to ``--out`` (JSON lines) batch by batch, so an
interrupted measurement keeps what it did and a second call continues it.

    OMP_NUM_THREADS=1 python scripts/screening_correlation.py --suite robust --n 200
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

from scipy.stats import spearmanr

from lossforge import gp
from lossforge.evaluator import FULL, Evaluator, Fidelity
from lossforge.executor import make_executor
from lossforge.scoring import load_suite
from lossforge.space import load_space


def draw_viable(space_name: str, suite, n: int, seed: int) -> list:
    """``n`` random viable losses (distinct keys and fingerprints), in a reproducible order."""
    space = load_space(space_name)
    toolbox, _ = gp.toolbox_for(space)
    probe_ev = Evaluator(suite, violation=space.violation)
    random.seed(seed)
    out, keys, prints = [], set(), set()
    while len(out) < n:
        expr = gp.expression_of(toolbox.individual())
        if expr.key in keys:
            continue
        keys.add(expr.key)
        reason, fingerprint = probe_ev.rejection(expr)
        if reason is None and fingerprint not in prints:
            prints.add(fingerprint)
            out.append(expr)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", default="robust")
    parser.add_argument("--space", default="survey")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--fractions", default="0.25,0.5", help="steps fractions screened on one seed")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--jobs", type=int, default=-1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="screening_correlation.jsonl")
    args = parser.parse_args(argv)

    suite = load_suite(args.suite)
    levels = [Fidelity((suite.seeds[0],), float(f)) for f in args.fractions.split(",")]
    out = Path(args.out)
    done = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    losses = draw_viable(args.space, suite, args.n, args.seed)[len(done):]
    evaluator = Evaluator(suite, make_executor("joblib", args.jobs), chunk_size=args.batch)
    evaluator.score_references(evaluator.reference_names())
    for start in range(0, len(losses), args.batch):
        batch = losses[start:start + args.batch]
        specs = [list(e.tokens) for e in batch]
        rows = [{"formula": e.formula(), "key": e.key} for e in batch]
        for level in [FULL, *levels]:
            name = "full" if level.is_full else f"screen@{level.steps_fraction:g}"
            for row, fitness in zip(rows, evaluator.fitness_of(specs, level)):
                row[name] = fitness
        with out.open("a") as handle:
            handle.writelines(json.dumps(r) + "\n" for r in rows)
        done += rows
        report(done, levels)
    evaluator.executor.close()
    return 0


def report(rows: list[dict], levels: list[Fidelity]) -> None:
    full = [r["full"] for r in rows]
    parts = [f"{len(rows)} losses"]
    for level in levels:
        name = f"screen@{level.steps_fraction:g}"
        rho = spearmanr([r[name] for r in rows], full).statistic
        parts.append(f"{name} (1 seed): rho {rho:.3f}")
    print("; ".join(parts), flush=True)


if __name__ == "__main__":
    sys.exit(main())
