#!/usr/bin/env python
"""Does a plain default search find a loss worth having? The search-quality study, as a script.

For each search seed s (default 0-4) it runs

* a plain default search, ``lossforge.search(seed=s, suite="robust")`` with no other settings, and
* a random-search control, ``lossforge.search(seed=s, suite="robust", variation="random")``: the same budget
  of full-fidelity evaluations, losses drawn from the same space with the same rejection, no selection;

then scores each run's best loss, every baseline at its authors' setting and every baseline tuned with the
budget a search gives its best losses (``lossforge.tuning.tune_baselines``) on the suite's validation seeds,
on the ``transfer`` suite (data no search suite uses) and on the ``holdout`` suite (data no other suite uses,
fixed before any found loss was scored on it), with 95 % confidence intervals over seeds, and
compares GP with random search paired over the search seeds (paired t-test and sign test). It writes
``search_quality.md`` (tables) and ``search_quality.json`` (every number) into ``--out``.

    python scripts/search_quality.py --out runs/quality              # the study: hours on 2 cores
    python scripts/search_quality.py --dry-run --seeds 2 --out /tmp/q # a smoke test: tiny suites, a minute
    python scripts/search_quality.py --out runs/quality --phase holdout --holdout shapes
        # one more held-out suite's scores added to a written report, beside those it has (nothing rescored)

Where this lossforge has no ``variation="random"``, the control is skipped and the report says so.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import fields
from pathlib import Path
from typing import Any, Sequence

import lossforge
from lossforge.atomic import write_atomic
from lossforge.api import score
from lossforge.tuning import tune_baselines
from lossforge.expression import LossExpression
from lossforge.scoring import load_suite
from lossforge.stats import mean_ci, paired_comparison

#: Tiny suites and settings of --dry-run: the whole pipeline in about a minute.
DRY_SUITE = """name = "quality_dry"
seeds = [0]
validation_seeds = [100, 101]

[[tasks]]
name = "label_noise"
type = "label_noise"
preset = "symmetric40"
settings = { n_train = 300, epochs = 3, hidden = [16] }
"""
DRY_TRANSFER = """name = "quality_dry_transfer"
seeds = [0, 1]

[[tasks]]
name = "synthetic_b_sym40"
type = "label_noise"
settings = { dataset = "synthetic_b", n_train = 300, epochs = 3, hidden = [16] }
"""
DRY_HOLDOUT = """name = "quality_dry_holdout"
seeds = [0, 1]

[[tasks]]
name = "wine_sym40"
type = "label_noise"
settings = { dataset = "wine", epochs = 3, hidden = [16] }
"""
DRY_SEARCH = {"population": 4, "generations": 1, "jobs": 1, "validate_top": 0}
DRY_BASELINES = ["cross_entropy", "gce", "anl_ce"]


def random_control_available() -> str | None:
    """None when ``lossforge.search`` takes ``variation="random"``; otherwise why the control is skipped."""
    from lossforge.engine import SearchConfig

    if "variation" not in {f.name for f in fields(SearchConfig)}:
        return "this lossforge's SearchConfig has no 'variation' setting (random search not landed yet)"
    try:
        SearchConfig(variation="random")
    except Exception as exc:  # noqa: BLE001 - any refusal means the control cannot run; say which
        return f"SearchConfig(variation='random') is refused: {exc}"
    return None


def _trained(run: Path) -> int | None:
    """Distinct losses scored at full fidelity in a run file (None if this lossforge's store cannot say)."""
    try:
        from lossforge.runfile import CandidateState, RunStore
    except ImportError:
        return None
    store = RunStore.open(run, readonly=True)
    try:
        return sum(1 for c in store.candidates() if c.status is CandidateState.COMPLETE)
    finally:
        store.close()


def _run_status(run: Path) -> tuple[str, float]:
    """A run file's status and elapsed seconds (from the run file itself, so a resumed run counts all of it)."""
    from lossforge.runfile import RunStore

    store = RunStore.open(run, readonly=True)
    try:
        summary = store.summary()
        return summary.status.value, summary.elapsed_s
    finally:
        store.close()


def _known(tokens: Sequence[Any] | None, suite: Any) -> str | None:
    """The known loss a pick trains as (up to a positive factor and a constant), e.g. ``"gce"``; None for a
    new loss or a suite of several problem types."""
    from lossforge.baselines import same_as_known

    if not tokens or suite.problem is None:
        return None
    known = same_as_known(LossExpression(tuple(tokens)), suite.problem, suite.probe_classes[0])
    return None if known is None else known[0]


def _pick(run: Path) -> dict[str, Any]:
    """The loss a search chooses: rank 1 by confirmed fitness (search + confirm seeds), else by search
    fitness; never by validation fitness, so its validation score below is a held-out figure. Also which
    known loss it trains as, when the search returned one (a seeded loss, perhaps rescaled)."""
    from lossforge.ranking import ranking, suite_of
    from lossforge.runfile import RunStore

    store = RunStore.open(run, readonly=True)
    try:
        top = ranking(store, 1, validation=False)
        suite = suite_of(store)
    finally:
        store.close()
    if not top:
        return {"formula": None, "tokens": None, "search_fitness": None, "confirmed_fitness": None,
                "seeded_baseline": None}
    rec = top[0].record
    expr = LossExpression(tuple(rec.tree))
    return {"formula": expr.formula(), "tokens": list(rec.tree), "search_fitness": rec.fitness,
            "confirmed_fitness": top[0].confirmed_fitness, "seeded_baseline": _known(rec.tree, suite)}


def _load_json(path: Path, default: Any) -> Any:
    return json.loads(path.read_text()) if path.exists() else default


def run_searches(seeds: Sequence[int], suite: str, out: Path, settings: dict[str, Any],
                 with_random: bool) -> list[dict[str, Any]]:
    """One GP search per seed (and one random-search control where available); their best losses.

    Each finished search is recorded in ``out/runs.json`` at once, so the study can be stopped and started
    again: a recorded search is not run again, an unfinished run file is resumed (exactly), not restarted.
    """
    done = {(r["arm"], r["seed"]): r for r in _load_json(out / "runs.json", [])}
    arms = ["gp", "random"] if with_random else ["gp"]
    for s in seeds:
        for arm in arms:
            if (arm, s) in done:
                continue
            path = out / f"{arm}-seed{s}.db"
            extra = {"variation": "random"} if arm == "random" else {}
            if path.exists():
                lossforge.resume(path, quiet=True)
            else:
                lossforge.search(run=path, quiet=True, seed=s, suite=suite, **settings, **extra)
            status, elapsed = _run_status(path)
            pick = _pick(path)
            print(f"{arm} seed {s}: {elapsed:.0f} s, best {pick['formula']} (search fitness "
                  f"{pick['search_fitness']}, confirmed {pick['confirmed_fitness']})", flush=True)
            done[(arm, s)] = {"arm": arm, "seed": s, "run": str(path), "status": status, "elapsed_s": elapsed,
                              "trained": _trained(path), **pick}
            write_atomic(out / "runs.json", json.dumps(list(done.values()), indent=1))
    return [done[(a, s)] for s in seeds for a in arms if (a, s) in done]


def _summary(row: Any) -> dict[str, Any]:
    mean, half = mean_ci(row.per_seed)
    return {"fitness": mean, "ci": half, "per_seed": list(row.per_seed),
            "tasks": {t: {"mean": statistics.fmean(v["scores"]), "ci": mean_ci(v["scores"])[1],
                          "scores": list(v["scores"])} for t, v in row.tasks.items()}}


def score_all(runs: list[dict[str, Any]], baselines: list[str], tuned: list[Any], suite: Any,
              seeds: Sequence[int] | None, jobs: int) -> dict[str, dict[str, Any]]:
    """Every best loss, every baseline at its authors' setting and every tuned baseline, scored together."""
    losses = [(f"{r['arm']} s{r['seed']}", LossExpression(tuple(r["tokens"]))) for r in runs if r["tokens"]]
    losses += [(f"{t.name} (tuned)", LossExpression(tuple(t.spec))) for t in tuned if isinstance(t.spec, list)]
    tuned_torch = [t for t in tuned if isinstance(t.spec, str)]
    rows = score([e for _, e in losses], suite, seeds=seeds, baselines=baselines + [t.spec for t in tuned_torch],
                 jobs=jobs)
    labels = [n for n, _ in losses] + baselines + [f"{t.name} (tuned)" for t in tuned_torch]
    return {label: {**_summary(row), "formula": row.formula, "status": row.status} for label, row in zip(labels, rows)}


def _safe(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else x


def compare(runs: list[dict[str, Any]], validation: dict[str, Any], transfer: dict[str, Any],
            baseline_labels: list[str], ce_task: str = "label_noise",
            holdouts: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The study's verdicts: found loss against the best baseline, against cross-entropy, and GP against random,
    on the validation seeds and on each held-out suite's table (``transfer``, and each of ``holdouts``, by
    suite name, when scored)."""
    gp = [f"gp s{r['seed']}" for r in runs if r["arm"] == "gp" and f"gp s{r['seed']}" in validation]
    best_base = max(baseline_labels, key=lambda b: validation[b]["fitness"])
    out: dict[str, Any] = {"best_baseline_validation": best_base,
                           "best_baseline_validation_fitness": validation[best_base]["fitness"]}
    if not gp:
        return out
    out["median_gp_validation_fitness"] = statistics.median(validation[g]["fitness"] for g in gp)
    out["median_gp_ge_best_baseline"] = out["median_gp_validation_fitness"] >= validation[best_base]["fitness"]
    out["gp_vs_best_baseline"] = {}
    for g in gp:
        c = paired_comparison(validation[g]["per_seed"], validation[best_base]["per_seed"])
        out["gp_vs_best_baseline"][g] = {"mean_diff": c.mean_diff, "ci": _safe(c.ci_half_width),
                                         "p": _safe(c.p_value)}
    if "cross_entropy" in validation and ce_task in validation["cross_entropy"]["tasks"]:
        ce = validation["cross_entropy"]["tasks"][ce_task]["mean"]
        gains = {g: validation[g]["tasks"][ce_task]["mean"] - ce for g in gp}
        out["accuracy_gain_over_ce"] = {"task": ce_task, "gains": gains,
                                        "at_least_5_points": sum(v >= 0.05 for v in gains.values()), "of": len(gp)}
    tables = {"": validation, "transfer": transfer, **(holdouts or {})}
    for key, table in tables.items():
        if key and table:
            out[key] = held_out(gp, table, baseline_labels, best_base)
            out[key]["rank_agreement"] = rank_agreement(validation, table)
        versus = gp_vs_random(runs, table) if table else None
        if versus:
            out["gp_vs_random" + (f"_{key}" if key else "")] = versus
    return out


def held_out(gp: list[str], table: dict[str, Any], baseline_labels: list[str], best_base: str) -> dict[str, Any]:
    """The verdict on one held-out suite's table: the median found loss against each task's best baseline,
    against ``best_base`` (the best baseline on validation, the one a user would pick beforehand), and how
    high the per-task bar sits (:func:`transfer_bar`)."""
    per_task = {}
    for task in table[baseline_labels[0]]["tasks"]:
        best = max(baseline_labels, key=lambda b: table[b]["tasks"][task]["mean"])
        median = statistics.median(table[g]["tasks"][task]["mean"] for g in gp)
        per_task[task] = {"median_gp": median, "best_baseline": best,
                          "best_baseline_score": table[best]["tasks"][task]["mean"],
                          "difference": median - table[best]["tasks"][task]["mean"],
                          "validation_best_score": table[best_base]["tasks"][task]["mean"]}
        per_task[task]["difference_to_validation_best"] = median - per_task[task]["validation_best_score"]
    # the per-task best is chosen after the fact, task by task; a user picks one loss beforehand, and the
    # evidence they have is the search suite's validation: so also the baseline that wins there
    return {"per_task": per_task, "mean_difference": statistics.fmean(v["difference"] for v in per_task.values()),
            "validation_best_baseline": best_base,
            "mean_difference_to_validation_best": statistics.fmean(
                v["difference_to_validation_best"] for v in per_task.values()),
            **transfer_bar(table, baseline_labels)}


def rank_agreement(validation: dict[str, Any], table: dict[str, Any]) -> dict[str, Any]:
    """Spearman's rho between the validation fitness and a held-out table's fitness over every distinct loss
    scored on both, for all of them and for the baselines alone: does the search suite's ranking carry over
    to that data? Losses with the same per-seed scores on both tables (a baseline and the searches that
    returned it) count once."""
    from scipy.stats import spearmanr

    out: dict[str, Any] = {}
    for part, keep in (("all", lambda n: True), ("baselines", lambda n: not n.startswith(("gp s", "random s")))):
        names: dict[str, str] = {}
        for name in validation:
            if name in table and keep(name):
                key = (tuple(validation[name].get("per_seed", ())), tuple(table[name].get("per_seed", ())))
                names.setdefault(key if any(key) else validation[name].get("formula", name), name)
        if len(names) >= 3:
            rho = spearmanr([validation[n]["fitness"] for n in names.values()],
                            [table[n]["fitness"] for n in names.values()])
            out[part] = {"rho": _safe(float(rho.statistic)), "p": _safe(float(rho.pvalue)), "losses": len(names)}
    return out


def _gap_to_best(transfer: dict[str, Any], name: str, rivals: list[str]) -> float:
    """Mean over tasks of ``name``'s accuracy minus the best of ``rivals`` on that task."""
    tasks = transfer[rivals[0]]["tasks"]
    return statistics.fmean(transfer[name]["tasks"][t]["mean"] - max(transfer[b]["tasks"][t]["mean"] for b in rivals)
                            for t in tasks)


def transfer_bar(transfer: dict[str, Any], baseline_labels: list[str]) -> dict[str, Any]:
    """How high the transfer target's bar (the best baseline of each task, chosen after the fact) sits.

    ``single_baseline_gaps``: each baseline measured against the same bar built from the *other* baselines:
    a negative number for every one says no single known loss clears it either. ``held_out_best``: the bar
    without the winner's curse: for each transfer seed, each task's best baseline is chosen on the other
    seeds and its accuracy taken on the left-out one (None when tasks lack per-seed scores or have one seed).
    """
    out: dict[str, Any] = {}
    if len(baseline_labels) >= 2:
        out["single_baseline_gaps"] = {
            b: _gap_to_best(transfer, b, [o for o in baseline_labels if o != b]) for b in baseline_labels}
    tasks = transfer[baseline_labels[0]]["tasks"]
    try:
        seeds = {len(transfer[b]["tasks"][t]["scores"]) for b in baseline_labels for t in tasks}
    except KeyError:
        seeds = set()
    if len(seeds) == 1 and (n := seeds.pop()) >= 2:
        held = {}
        for t in tasks:
            scores = {b: transfer[b]["tasks"][t]["scores"] for b in baseline_labels}
            picked = []
            for left in range(n):
                best = max(baseline_labels, key=lambda b: (sum(scores[b]) - scores[b][left], b))
                picked.append(scores[best][left])
            held[t] = statistics.fmean(picked)
        out["held_out_best"] = held
    return out


def gp_vs_random(runs: list[dict[str, Any]], table: dict[str, Any]) -> dict[str, Any] | None:
    """GP against the random-search control, paired over the search seeds on one table's fitness: wins,
    mean difference with its 95 % CI, paired t-test and sign test; None without a pair."""
    from scipy.stats import binomtest

    pairs = [(f"gp s{r['seed']}", f"random s{r['seed']}") for r in runs if r["arm"] == "gp"]
    pairs = [(g, r) for g, r in pairs if g in table and r in table]
    if not pairs:
        return None
    a = [table[g]["fitness"] for g, _ in pairs]
    b = [table[r]["fitness"] for _, r in pairs]
    c = paired_comparison(a, b)
    wins = sum(x > y for x, y in zip(a, b))
    losses = sum(x < y for x, y in zip(a, b))
    sign_p = binomtest(wins, wins + losses, 0.5).pvalue if wins + losses else math.nan
    return {"search_seeds": len(pairs), "gp_wins": wins, "random_wins": losses, "mean_diff": c.mean_diff,
            "ci": _safe(c.ci_half_width), "t_test_p": _safe(c.p_value), "sign_test_p": _safe(float(sign_p))}


def _cell(entry: dict[str, Any]) -> str:
    ci = entry["ci"]
    return f"{entry['fitness']:.4f} ± {ci:.4f}" if math.isfinite(ci) else f"{entry['fitness']:.4f}"


def _num(x: float | None) -> str:
    return "" if x is None else f"{x:.4f}"


def _held_out_lines(key: str, h: dict[str, Any]) -> list[str]:
    """One held-out suite's verdicts (``key``: its table's name) as Markdown lines."""
    chosen = h["validation_best_baseline"]
    lines = ["", f"**{key.capitalize()}**: median found loss minus the best baseline of each task, mean over tasks: "
             f"{h['mean_difference']:+.4f}; minus the best baseline on validation ({chosen}): "
             f"{h['mean_difference_to_validation_best']:+.4f}."]
    if "single_baseline_gaps" in h:
        gaps = sorted(h["single_baseline_gaps"].items(), key=lambda kv: -kv[1])
        lines.append("The same bar for each baseline, built from the other baselines (mean over tasks): "
                     + ", ".join(f"{name} {gap:+.4f}" for name, gap in gaps)
                     + (": no single known loss clears it." if gaps[0][1] < 0 else "."))
    if h.get("rank_agreement", {}).get("all"):
        agree = h["rank_agreement"]
        lines.append(f"Rank agreement with validation (Spearman over {agree['all']['losses']} distinct losses): "
                     f"{_num(agree['all']['rho'])} (p = {agree['all']['p']:.2g})"
                     + (f"; baselines alone ({agree['baselines']['losses']}): {_num(agree['baselines']['rho'])}"
                        if "baselines" in agree else "") + ".")
    if "held_out_best" in h:
        per_task, held = h["per_task"], h["held_out_best"]
        lines.append(f"Chosen per task on the other {key} seeds and measured on the left-out one (no winner's "
                     "curse), the best baseline scores "
                     f"{statistics.fmean(per_task[t]['best_baseline_score'] - held[t] for t in held):.4f} less per "
                     "task; the median found loss minus that bar: "
                     f"{statistics.fmean(per_task[t]['median_gp'] - held[t] for t in held):+.4f}.")
    lines += ["", f"{key.capitalize()} per task (accuracy): the median found loss against the best baseline of that "
              f"task and against {chosen}, the best baseline on validation:", "",
              f"| task | median found loss | best baseline | its accuracy | difference | {chosen} | difference |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {task} | {v['median_gp']:.4f} | {v['best_baseline']} | {v['best_baseline_score']:.4f} "
              f"| {v['difference']:+.4f} | {v['validation_best_score']:.4f} "
              f"| {v['difference_to_validation_best']:+.4f} |" for task, v in h["per_task"].items()]
    return lines


def markdown(result: dict[str, Any]) -> str:
    """The study as Markdown: settings, the loss table and the verdicts."""
    v, t, c = result["validation"], result["transfer"], result["comparison"]
    hos = holdouts_of(result)
    lines = [f"# Search quality: `{result['suite']}` suite, search seeds {result['seeds']}", "",
             f"Settings: {json.dumps(result['search_settings']) if result['search_settings'] else 'defaults'}; "
             f"validation seeds {result['validation_seeds']}; transfer suite `{result['transfer_suite']}`"
             + "".join(f", held-out suite `{name}`" for name in hos) + "; "
             f"the searches took {sum(r['elapsed_s'] for r in result['runs']) / 60:.1f} min in all, tuning and "
             f"scoring {result['report_s'] / 60:.1f} min.", ""]
    if result["random_control"] is not None:
        lines += [f"**Random-search control skipped**: {result['random_control']}.", ""]
    lines += ["| search | seed | time (s) | trained | search fitness | confirmed fitness | best loss |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['arm']} | {r['seed']} | {r['elapsed_s']:.0f} | {r['trained']} | {_num(r.get('search_fitness'))} "
              f"| {_num(r.get('confirmed_fitness'))} | `{r['formula']}`"
              f"{' (trains as ' + r['seeded_baseline'] + ')' if r.get('seeded_baseline') else ''} |"
              for r in result["runs"]]
    lines += ["", "Fitness relative to cross-entropy (1 = as good), mean ± 95 % CI over seeds:", "",
              "| loss | validation fitness | transfer fitness |" + "".join(f" {h} fitness |" for h in hos)
              + " formula |", "|---|---|---|" + "---|" * len(hos) + "---|"]
    for name in sorted(v, key=lambda n: -v[n]["fitness"]):
        lines.append(f"| {name} | {_cell(v[name])} | {_cell(t[name]) if name in t else ''} |"
                     + "".join(f" {_cell(h[name]) if name in h else ''} |" for h in hos.values())
                     + f" `{v[name]['formula']}` |")
    lines += ["", f"Best baseline on validation: **{c['best_baseline_validation']}** "
              f"({c['best_baseline_validation_fitness']:.4f})."]
    if "median_gp_validation_fitness" in c:
        lines.append(f"Median best found loss: {c['median_gp_validation_fitness']:.4f} "
                     f"({'≥' if c['median_gp_ge_best_baseline'] else '<'} the best baseline).")
    if "accuracy_gain_over_ce" in c:
        g = c["accuracy_gain_over_ce"]
        lines.append(f"Beat cross-entropy by ≥ 5 accuracy points on `{g['task']}`: {g['at_least_5_points']} of {g['of']}.")
    for key, where in (("gp_vs_random", "validation"), ("gp_vs_random_transfer", "transfer"),
                       *((f"gp_vs_random_{h}", h) for h in hos)):
        if key in c:
            r = c[key]
            lines.append(f"GP vs random search over {r['search_seeds']} search seeds ({where} fitness): GP better "
                         f"on {r['gp_wins']}, random on {r['random_wins']}; mean difference {r['mean_diff']:+.4f} "
                         f"± {_num(r['ci'])} (t-test p = {_num(r['t_test_p'])}, sign test p = "
                         f"{_num(r['sign_test_p'])}).")
    for key in ("transfer", *hos):
        if key in c:
            lines += _held_out_lines(key, c[key])
    return "\n".join(lines) + "\n"


def holdouts_of(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A report's held-out tables beyond ``transfer``, by suite name, in the order they were added (a report
    written before there could be several holds one, as ``holdout`` and ``holdout_suite``)."""
    if "holdouts" in result:
        return result["holdouts"]
    return {result["holdout_suite"]: result["holdout"]} if result.get("holdout") else {}


#: Baselines scored beside the found losses: the search's display set (the strongest robust losses at their
#: authors' settings) and the two single-term losses of the same papers.
STUDY_BASELINES = ["cross_entropy", "gce", "mae", "sce", "nce_rce", "nce_agce", "anl_ce", "agce", "aul"]
#: The baselines tuned with a found loss's tuning budget (those with hyper-parameters; CE and MAE have none).
TUNED_BASELINES = ["gce", "sce", "nce_rce", "nce_agce", "anl_ce"]


def tune(names: list[str], suite: Any, out: Path, iterations: int, jobs: int) -> list[Any]:
    """The tuned baselines (cached in ``out/tuned.json``: tuning is seeded, so a rerun would give the same)."""
    from lossforge.tuning import TunedBaseline

    cache = out / "tuned.json"
    if cache.exists():
        return [TunedBaseline(**t) for t in json.loads(cache.read_text())]
    print(f"tuning {len(names)} baselines on the search seeds", flush=True)
    tuned = tune_baselines(names, suite, iterations=iterations, jobs=jobs)
    write_atomic(cache, json.dumps([t.__dict__ for t in tuned], indent=1))
    return tuned


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5, help="search seeds 0..N-1 (default 5)")
    parser.add_argument("--out", default="runs/search_quality", help="output directory (run files, md, json)")
    parser.add_argument("--suite", default="robust", help="search suite (default robust)")
    parser.add_argument("--transfer", default="transfer", help="held-out suite (default transfer)")
    parser.add_argument("--jobs", type=int, default=-1, help="workers for tuning and scoring (default: all cores)")
    parser.add_argument("--holdout", default="holdout",
                        help="one more held-out suite, scored like transfer ('' for none; default holdout)")
    parser.add_argument("--phase", choices=("all", "searches", "report", "holdout"), default="all",
                        help="searches: only the searches; report: tune, score and report the searches recorded "
                             "so far; holdout: add the --holdout suite's scores to a written report, beside "
                             "the held-out suites it has (default all)")
    parser.add_argument("--dry-run", action="store_true", help="tiny suites and searches: a smoke test")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suite_name, transfer_name, holdout_name, settings = args.suite, args.transfer, args.holdout, {}
    if args.dry_run:
        (out / "dry_suite.toml").write_text(DRY_SUITE)
        (out / "dry_transfer.toml").write_text(DRY_TRANSFER)
        (out / "dry_holdout.toml").write_text(DRY_HOLDOUT)
        suite_name, transfer_name, settings = str(out / "dry_suite.toml"), str(out / "dry_transfer.toml"), DRY_SEARCH
        holdout_name = str(out / "dry_holdout.toml") if holdout_name else ""
    if args.phase == "holdout" and not holdout_name:
        parser.error("--phase holdout needs a --holdout suite")
    if args.phase == "holdout" and not (out / "search_quality.json").exists():
        parser.error(f"--phase holdout adds to a written report, and {out / 'search_quality.json'} is missing: "
                     "run the report phase first")
    start = time.perf_counter()
    suite = load_suite(suite_name)
    missing = random_control_available()
    if missing:
        print(f"random-search control skipped: {missing}", flush=True)
    seeds = list(range(args.seeds))
    if args.phase == "holdout":
        return add_holdout(out, holdout_name, args.dry_run, args.jobs, start)
    if args.phase == "report":
        recorded = _load_json(out / "runs.json", [])
        runs = [{**r, "seeded_baseline": _known(r["tokens"], suite)} for r in recorded if r["seed"] in seeds]
    else:
        runs = run_searches(seeds, suite_name, out, settings, with_random=missing is None)
    if args.phase == "searches":
        return 0
    report_start = time.perf_counter()
    names, tuned, baseline_labels = _baselines(suite, out, args.dry_run, args.jobs)
    print("scoring on the validation seeds and the held-out suites", flush=True)
    validation = score_all(runs, names, tuned, suite, list(suite.validation_seeds) or None, args.jobs)
    transfer = score_all(runs, names, tuned, load_suite(transfer_name), None, args.jobs)
    held = load_suite(holdout_name) if holdout_name else None
    holdout = score_all(runs, names, tuned, held, None, args.jobs) if held else {}
    result = {
        "suite": suite.name, "transfer_suite": load_suite(transfer_name).name, "seeds": seeds, "dry_run": args.dry_run,
        "search_settings": settings, "validation_seeds": list(suite.validation_seeds),
        "random_control": missing, "runs": runs,
        "tuned_baselines": [{"name": t.name, "formula": t.formula, "spec": t.spec,
                             "tuning_fitness_before": t.fitness_before, "tuning_fitness_after": t.fitness_after}
                            for t in tuned],
        "validation": validation, "transfer": transfer,
        "holdouts": {held.name: holdout} if held else {},
    }
    result["comparison"] = compare(runs, validation, transfer, baseline_labels, holdouts=result["holdouts"])
    result["elapsed_s"] = time.perf_counter() - start  # this invocation: searches run now, tuning, scoring
    result["report_s"] = time.perf_counter() - report_start  # tuning and scoring
    return _write(out, result)


def _baseline_names(dry_run: bool) -> list[str]:
    """The baselines a study scores at their authors' settings."""
    return DRY_BASELINES if dry_run else STUDY_BASELINES


def _baselines(suite: Any, out: Path, dry_run: bool, jobs: int) -> tuple[list[str], list[Any], list[str]]:
    """The baselines at their authors' settings, the tuned ones that tuning improved, and the labels of both."""
    names = _baseline_names(dry_run)
    to_tune = DRY_BASELINES[1:] if dry_run else TUNED_BASELINES
    tuned = [t for t in tune(to_tune, suite, out, 1 if dry_run else 4, jobs) if t.fitness_after > t.fitness_before]
    return names, tuned, names + [f"{t.name} (tuned)" for t in tuned]


def add_holdout(out: Path, holdout_name: str, dry_run: bool, jobs: int, start: float) -> int:
    """Score a written report's losses (its runs' picks, its baselines, its tuned baselines) on one more
    held-out suite and add that table and its verdicts to the report, beside the held-out suites it has (the
    same suite again replaces its own table); nothing else is scored again."""
    result = json.loads((out / "search_quality.json").read_text())
    holdouts = holdouts_of(result)
    times = result.get("holdout_s", {})
    if not isinstance(times, dict):  # an older report: one held-out table, stored under fixed keys
        times = {result["holdout_suite"]: times}
    for key in ("holdout", "holdout_suite"):
        result.pop(key, None)
    names = _baseline_names(dry_run)
    tuned = report_tuned(result)
    baseline_labels = names + [f"{t.name} (tuned)" for t in tuned]
    held = load_suite(holdout_name)
    print(f"scoring on the held-out suite {held.name}", flush=True)
    holdouts[held.name] = score_all(result["runs"], names, tuned, held, None, jobs)
    result["holdouts"] = holdouts
    result["comparison"] = compare(result["runs"], result["validation"], result["transfer"], baseline_labels,
                                   holdouts=holdouts)
    result["holdout_s"] = {**times, held.name: time.perf_counter() - start}  # seconds each suite's scoring took
    return _write(out, result)


def report_tuned(result: dict[str, Any]) -> list[Any]:
    """The tuned baselines a written report scored, as it scored them: tuning again at a later version of
    lossforge need not give the same ones (nor the same set that tuning improved), and a held-out table must
    score the losses its validation table scored. A report written before it stored each one's ``spec`` has
    its formula: a torch baseline's is its spec, an expression's is parsed (safely, nothing evaluated) with
    the constants as printed, to 4 significant digits."""
    from lossforge.expression import parse
    from lossforge.tuning import TunedBaseline

    tuned = []
    for t in result["tuned_baselines"]:
        spec = t.get("spec")
        if spec is None:
            spec = t["formula"] if t["formula"].startswith(f"{t['name']}(") else list(parse(t["formula"]))
        tuned.append(TunedBaseline(name=t["name"], spec=spec, formula=t["formula"],
                                   fitness_before=t["tuning_fitness_before"], fitness_after=t["tuning_fitness_after"]))
    return tuned


def _write(out: Path, result: dict[str, Any]) -> int:
    write_atomic(out / "search_quality.json", json.dumps(result, indent=1, default=_json_default))
    write_atomic(out / "search_quality.md", markdown(result))
    print(f"wrote {out / 'search_quality.md'} and {out / 'search_quality.json'}")
    return 0


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    raise TypeError(f"not JSON: {type(value).__name__}")


if __name__ == "__main__":
    sys.exit(main())
