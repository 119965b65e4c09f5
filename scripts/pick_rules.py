#!/usr/bin/env python
"""Which final pick transfers to a task the pick never saw? A leave-one-task-out check on a search's own suite.

A search ranks its losses by the fitness over the suite's tasks, and a user takes rank 1 to other data. This
script asks, with the search suite alone (no held-out data is read), how well a pick rule does on a task it
did not see: for every run file given, every task ``h`` of its suite and every rule, the rule picks one loss
among the run's full-fidelity losses using the *other* tasks only, and the pick's score on ``h`` is compared
with the best of the run's baselines on ``h`` (the bar of the transfer target: per task, the best
hand-designed loss) and with the baseline the same rule would pick off the shelf. Task scores are those the
run stored (its search seeds), 100 x the raw score: accuracy points on classification tasks (a regression
task's score is its negative error).

    python scripts/pick_rules.py runs/gp_*.db                 # table to stdout
    python scripts/pick_rules.py runs/gp_*.db --json out.json  # and every number

A rule that beats the run's own rule (``geomean``, the suite's weighted geometric mean) here has a reason
from the search suite alone; judging it on held-out suites is a separate, later step.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from lossforge.atomic import write_atomic
from lossforge.errors import LossforgeError
from lossforge.ranking import suite_of
from lossforge.runfile import CandidateState, RunStore
from lossforge.stats import mean_ci, paired_comparison

#: A row: per-task normalised score (1 = the task's reference loss) and raw score, by task name.
Row = dict[str, Any]


def _geomean(rows: Sequence[Row], tasks: Sequence[str], weights: dict[str, float],
             bar: dict[str, float] | None = None) -> list[float]:
    out = []
    for r in rows:
        logs = [weights[t] * math.log(r["norm"][t]) if r["norm"][t] > 0 else -math.inf for t in tasks]
        out.append(sum(logs) / sum(weights[t] for t in tasks))
    return out


def _worst(rows: Sequence[Row], tasks: Sequence[str], weights: dict[str, float],
           bar: dict[str, float] | None = None) -> list[float]:
    return [min(r["norm"][t] for t in tasks) for r in rows]


def _mean_rank(rows: Sequence[Row], tasks: Sequence[str], weights: dict[str, float],
               bar: dict[str, float] | None = None) -> list[float]:
    """Weighted mean over tasks of each row's rank share among all rows (1 = best on that task)."""
    n = len(rows)
    total = [0.0] * n
    for t in tasks:
        order = sorted(range(n), key=lambda i: rows[i]["norm"][t])
        for place, i in enumerate(order):
            total[i] += weights[t] * place / max(1, n - 1)
    return [v / sum(weights[t] for t in tasks) for v in total]


def _regret(rows: Sequence[Row], tasks: Sequence[str], weights: dict[str, float],
            bar: dict[str, float]) -> list[float]:
    """Worst task's normalised score minus the best baseline's on that task (the per-task bar)."""
    return [min(r["norm"][t] - bar[t] for t in tasks) for r in rows]


def _geomean_minus_sd(rows: Sequence[Row], tasks: Sequence[str], weights: dict[str, float],
                      bar: dict[str, float] | None = None) -> list[float]:
    out = []
    for r in rows:
        logs = [math.log(r["norm"][t]) if r["norm"][t] > 0 else -50.0 for t in tasks]
        out.append(statistics.fmean(logs) - (statistics.stdev(logs) if len(logs) > 1 else 0.0))
    return out


def _median(rows: Sequence[Row], tasks: Sequence[str], weights: dict[str, float],
            bar: dict[str, float] | None = None) -> list[float]:
    return [statistics.median(r["norm"][t] for t in tasks) for r in rows]


def _drop_best(rows: Sequence[Row], tasks: Sequence[str], weights: dict[str, float],
               bar: dict[str, float] | None = None) -> list[float]:
    """The geometric mean without each row's own best task: a loss must not win on one task alone."""
    out = []
    for r in rows:
        best = max(tasks, key=lambda t: r["norm"][t])
        out.append(_geomean([r], [t for t in tasks if t != best] or list(tasks), weights)[0])
    return out


#: name -> rule(rows, tasks, weights, bar): one score per row, higher picks first; ``bar`` is the best
#: baseline's normalised score per task (only the regret rule reads it).
RULES: dict[str, Callable[..., list[float]]] = {
    "geomean": _geomean, "worst": _worst, "mean_rank": _mean_rank, "regret": _regret,
    "geomean_minus_sd": _geomean_minus_sd, "median": _median, "drop_best": _drop_best,
}


def _row(name: str | None, key: str | None, summary: dict[str, Any], tasks: Sequence[str]) -> Row:
    """A row from a per-task summary as :meth:`lossforge.scoring.Suite.fitness` writes it (a candidate's
    stored ``task_scores`` have the same shape)."""
    return {"name": name, "key": key, "norm": {t: float(summary[t]["normalized"]) for t in tasks},
            "raw": {t: float(summary[t]["score"]) for t in tasks}}


def _baselines(suite: Any, scores: dict[str, Any], prefix: str = "") -> tuple[list[Row], dict[str, Any]]:
    """The baselines among stored ``scores`` (labels ``prefix + name``) as rows, and every label's
    per-task summary; nothing where the suite's reference loss was not scored."""
    try:
        reference = {t.name: scores[f"{prefix}{t.task.reference}"][t.name] for t in suite.tasks}
    except KeyError:
        return [], {}
    tasks = [t.name for t in suite.tasks]
    summaries = {label: suite.fitness(raw, reference)[1] for label, raw in scores.items()}
    rows = [_row(label.removeprefix(prefix), label, summary, tasks) for label, summary in summaries.items()
            if label.startswith(prefix)]
    return rows, summaries


def read_run(path: Path) -> tuple[list[str], dict[str, float], list[Row], list[Row]]:
    """The suite's task names and weights, the run's complete full-fidelity losses and its baselines."""
    with RunStore.open(path, readonly=True) as store:
        suite = suite_of(store)
        tasks = [t.name for t in suite.tasks]
        weights = {t.name: t.weight for t in suite.tasks}
        losses = []
        for c in store.candidates():
            if c.status is not CandidateState.COMPLETE or not c.task_scores:
                continue
            if c.worker and c.worker.startswith("cache:"):
                continue
            try:
                losses.append(_row(c.formula, c.key, c.task_scores, tasks))
            except (KeyError, TypeError, ValueError):
                continue
        baselines, _ = _baselines(suite, store.baselines())
    unique = list({r["key"]: r for r in losses}.values())
    return tasks, weights, unique, baselines


def read_validated(path: Path) -> tuple[list[str], dict[str, float], list[Row], list[Row]]:
    """As :func:`read_run`, from the run's validation stage: the losses it validated and the baselines, with
    their scores on the suite's validation seeds (the final ranking's own choice, made there by fitness)."""
    with RunStore.open(path, readonly=True) as store:
        suite = suite_of(store)
        tasks = [t.name for t in suite.tasks]
        weights = {t.name: t.weight for t in suite.tasks}
        baselines, summaries = _baselines(suite, store.validations(), prefix="baseline:")
        formulas = {c.key: c.formula for c in store.candidates()}
    losses = [_row(formulas.get(label, label), label, summary, tasks) for label, summary in summaries.items()
              if not label.startswith("baseline:")]
    return tasks, weights, losses, baselines


def leave_one_task_out(tasks: Sequence[str], weights: dict[str, float], losses: Sequence[Row],
                       baselines: Sequence[Row]) -> dict[str, dict[str, dict[str, float]]]:
    """rule -> held-out task -> {"vs_best": points over the best baseline on it, "vs_shelf": points over
    the baseline the rule picks, "pick": formula}."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for name, rule in RULES.items():
        out[name] = {}
        for held in tasks:
            seen = [t for t in tasks if t != held]
            bar = {t: max(b["norm"][t] for b in baselines) for t in seen}
            pool = list(losses) + list(baselines)  # a search's ranking holds its seeded known losses too
            scores = rule(pool, seen, weights, bar)
            pick = pool[max(range(len(pool)), key=lambda i: scores[i])]
            shelf_scores = rule(baselines, seen, weights, bar)
            shelf = baselines[max(range(len(baselines)), key=lambda i: shelf_scores[i])]
            best = max(b["raw"][held] for b in baselines)
            out[name][held] = {"vs_best": 100 * (pick["raw"][held] - best),
                               "vs_shelf": 100 * (pick["raw"][held] - shelf["raw"][held]),
                               "pick": pick["name"], "shelf": shelf["name"]}
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished run files of one suite")
    parser.add_argument("--stage", choices=("search", "validation"), default="search",
                        help="pick among every full-fidelity loss by its search-seed scores (default), or among "
                             "the validated losses by their validation-seed scores")
    parser.add_argument("--json", type=Path, help="write every number here too")
    args = parser.parse_args(argv)
    per_run = {}
    for path in args.runs:
        try:
            tasks, weights, losses, baselines = (read_run if args.stage == "search" else read_validated)(path)
        except LossforgeError as exc:
            print(f"pick_rules: {exc}", file=sys.stderr)
            return 2
        if len(tasks) < 2:
            print(f"{path}: its suite has one task; leaving one out needs at least two tasks", file=sys.stderr)
            continue
        if not losses or not baselines:
            print(f"{path}: no complete loss or no baselines; left out", file=sys.stderr)
            continue
        per_run[str(path)] = leave_one_task_out(tasks, weights, losses, baselines)
    if not per_run:
        print("no usable run", file=sys.stderr)
        return 2
    rules = list(RULES)
    # one number per run and rule: the mean over its held-out tasks (tasks of one run are not independent)
    means = {r: [statistics.fmean(v["vs_best"] for v in per_run[p][r].values()) for p in per_run] for r in rules}
    shelf = {r: [statistics.fmean(v["vs_shelf"] for v in per_run[p][r].values()) for p in per_run] for r in rules}
    print(f"leave-one-task-out over {len(per_run)} run(s); points on the held-out task, mean over tasks, "
          "then mean ± 95 % CI over runs")
    print(f"{'rule':<18} {'vs best baseline':>22} {'vs shelf pick':>20} {'vs geomean (paired)':>28}")
    for r in rules:
        m, ci = mean_ci(means[r])
        s, sci = mean_ci(shelf[r])
        cmp = paired_comparison(means[r], means["geomean"]) if r != "geomean" and len(per_run) > 1 else None
        vs = f"{cmp.mean_diff:+.2f} ± {cmp.ci_half_width:.2f} (p={cmp.p_value:.2f})" if cmp else "–"
        print(f"{r:<18} {m:+10.2f} ± {ci:5.2f}{'':6} {s:+8.2f} ± {sci:5.2f}{'':5} {vs:>28}")
    if args.json:
        write_atomic(args.json, json.dumps({"runs": per_run, "means": means, "shelf": shelf}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
