"""The ``lossforge`` command. Bad input gets one line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, NoReturn, Sequence

from lossforge import strict_json
from lossforge.errors import LossforgeError, printable as _printable


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"lossforge: error: {_printable(message)} (see `{self.prog} --help`)\n")
        raise SystemExit(2)

    def _parse_optional(self, arg_string: str) -> Any:
        # A word starting with a single "-" that is no option of this command is a value: an expression
        # such as "-y_real*log(y_pred)" needs no "--" before it. Long options (--x) are still checked.
        if (arg_string.startswith("-") and not arg_string.startswith("--") and len(arg_string) > 1
                and arg_string[:2] not in self._option_string_actions):
            return None
        return super()._parse_optional(arg_string)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be at least 1")
    return value


def _jobs(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value != -1 and value < 1:
        raise argparse.ArgumentTypeError("use -1 (all cores) or a positive number of workers")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    # cells come from files (formulas, task names): shown, never obeyed by the terminal
    cells = [[_printable(str(c)) for c in row] for row in rows]
    headers = [_printable(str(h)) for h in headers]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in cells])


def _check_named(value: str | None, flag: str, what: str, example: str) -> None:
    """One line when an option is given an empty value: a script's unset variable named nothing, and the
    option was silently ignored."""
    if value is not None and not value.strip():
        raise LossforgeError(f"{flag} names no {what}; give one, e.g. {flag} {example}, or leave it out")


def cmd_search(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from lossforge.api import default_run_name
    from lossforge.engine import Search, SearchConfig
    from lossforge.errors import RunError
    from lossforge.runfile import resolve_run_path

    args.suite = _data_suite(args) or args.suite
    settings = {f.name: getattr(args, f.name) for f in fields(SearchConfig)}
    if args.scheduler or args.dask_workers:  # a cluster's address or size implies dask
        settings["executor"] = "dask"
    config = SearchConfig(**settings)
    # an empty --run is refused as a name, not replaced by a fresh one (the user named no run there)
    path = resolve_run_path(default_run_name() if args.run is None else args.run, args.runs_dir)
    cache_from = [resolve_run_path(r, args.runs_dir) for r in args.cache_from]
    for other in cache_from:  # check before creating anything
        if not other.exists():
            raise RunError(f"no run at {other} to take cached evaluations from")
    callbacks = _callbacks(args)
    engine = Search.create(path, config, quiet=args.quiet, callbacks=callbacks)
    imported = engine.import_cache(cache_from)
    if not args.quiet:
        if cache_from:
            print(f"reusing {sum(imported.values())} evaluation(s) from {len(cache_from)} earlier run(s) on the "
                  "same suite")
            for other, count in imported.items():
                if not count:  # silently reusing nothing looked like a cache that worked
                    print(f"note: {_printable(str(other))} has no evaluations on this suite (its tasks, settings "
                          "or seeds differ): nothing reused from it")
        config = engine.config  # population and generations resolved from the budget
        print(f"run {_printable(str(path))}: population {config.population}, {config.generations} generations, "
              f"suite {_printable(engine.suite.name)} ({len(engine.suite.tasks)} tasks x {len(engine.suite.seeds)} seeds), "
              f"{engine.executor.n_workers} worker(s)", flush=True)
    return _drive(engine, path, callbacks)


def cmd_resume(args: argparse.Namespace) -> int:
    from lossforge.engine import Search
    from lossforge.runfile import resolve_run_path

    path = resolve_run_path(args.run, args.runs_dir)
    callbacks = _callbacks(args)
    engine = Search.resume(path, quiet=args.quiet, scheduler=args.scheduler, dask_workers=args.dask_workers,
                           callbacks=callbacks)
    return _drive(engine, path, callbacks)


def _callbacks(args: argparse.Namespace) -> list[Any]:
    """The per-generation callbacks the command line asks for (``--tensorboard DIR``)."""
    _check_named(args.tensorboard, "--tensorboard", "directory", "runs/tb")  # was silently no TensorBoard at all
    if not args.tensorboard:
        return []
    from lossforge.tensorboard import TensorBoardCallback

    return [TensorBoardCallback(args.tensorboard)]


def _drive(engine: Any, path: Path, callbacks: Sequence[Any] = ()) -> int:
    try:
        engine.run()
        print()
        print(_ranking_table(engine.store, 5, "best"))
        print()
        print(_baseline_table(engine.store))
        shown = _printable(str(path))  # a file name is shown, never obeyed by the terminal
        print(f"\nrun saved to {shown}  (lossforge show {shown} | lossforge export {shown} --format py)")
        return 0
    except KeyboardInterrupt:
        shown = _printable(str(path))
        sys.stderr.write(f"lossforge: interrupted; everything scored is saved in {shown}; "
                         f"continue with `lossforge resume {shown}`\n")
        return 130
    finally:
        engine.close()
        for callback in callbacks:  # e.g. TensorBoard's event file: written out in full before the command ends
            getattr(callback, "close", lambda: None)()


def _ranking_table(store: Any, n: int, pick: str) -> str:
    """The final ranking as a table; a loss that trains as a known one (up to a positive factor) says which,
    and a line below says so when it is rank 1."""
    from lossforge.baselines import known_loss_text, stored_same_as_known
    from lossforge.ranking import against_best_baseline, ranking, suite_of

    ranked = ranking(store, n, pick)
    if not ranked:
        return "no loss was scored successfully yet"
    suite = suite_of(store)
    problem = suite.problem
    task_names = list(ranked[0].record.task_scores)
    confirmed = any(item.confirmed_fitness is not None for item in ranked)  # the column only where a run confirmed
    rows, first_known = [], None
    for rank, item in enumerate(ranked, 1):
        rec = item.record
        per_task = [_fmt(rec.task_scores.get(t, {}).get("normalized")) for t in task_names]
        invalid = _invalid_tokens(rec.tree)
        known = stored_same_as_known(rec.tree, problem, suite.probe_classes[0])
        first_known = known if rank == 1 else first_known
        formula = rec.formula or " ".join(map(str, rec.tree))
        formula = (f"{formula}  (= {known_loss_text(*known)})" if known
                   else f"{formula}  (invalid: {invalid})" if invalid else formula)
        rows.append([rank, _fmt(rec.fitness), *([_fmt(item.confirmed_fitness)] if confirmed else []),
                     _fmt(item.validation_fitness), rec.complexity, *per_task, formula])
    table = _table(["rank", "fitness", *(["confirmed"] if confirmed else []), "validation", "complexity",
                    *task_names, "formula"], rows)
    if first_known:
        table += (f"\nrank 1 trains as the known loss {known_loss_text(*first_known)} (a positive factor, which Adam ignores, "
                  "and a constant term aside): the search found no loss that beat it")
    elif (versus := against_best_baseline(store, ranked[0].record.key)) is not None:
        table += "\n" + versus_line(versus)
    return table


def _invalid_tokens(tokens: Any) -> str | None:
    """Why stored prefix tokens are no valid loss (a hand-edited row: listed with the others, marked), or None."""
    from lossforge.expression import LossExpression

    try:
        LossExpression(tuple(tokens))
    except LossforgeError as exc:
        return str(exc)
    except TypeError:  # not even a sequence
        return "the stored tokens are not a list"
    return None


def versus_line(versus: Any) -> str:
    """What rank 1's validation says against the best baseline's, and how far to trust it."""
    c, name = versus.comparison, versus.baseline
    line = f"rank 1 against {name}, the best baseline on the validation seeds: {c.summary()}; "
    if c.mean_diff > 0 and c.p_value < 0.05:
        return line + "these seeds also chose rank 1 among the validated losses, which flatters it"
    return line + (f"no clear gain over {name} (these seeds also chose rank 1, which flatters it): `lossforge "
                   f"score` it beside {name} on other data or more seeds before you prefer it")


def _baseline_table(store: Any) -> str:
    from lossforge.ranking import baseline_rows

    rows = baseline_rows(store)
    if not rows:
        return "no baselines stored"
    task_names = list(rows[0]["tasks"])
    return _table(["baseline", "fitness", "validation", *task_names],
                  [[r["name"], _fmt(r["fitness"]), _fmt(r["validation_fitness"]),
                    *[_fmt(r["tasks"][t]) for t in task_names]] for r in rows])


SHOW_FORMATS = ("table", "csv", "markdown", "json")


def _show_rows(doc: dict[str, Any], raw: bool = False) -> tuple[list[str], list[list[Any]]]:
    """The hall of fame of a ``show --json`` document as a header and rows, with the table's columns: a
    ``confirmed`` column where the run confirmed, one column per task, and which known loss a row trains as
    (``raw``: numbers unformatted and that in a ``same_as`` column, for CSV; else as the table writes it,
    the formula cell a pair (formula, note or None) for Markdown)."""
    from lossforge.baselines import known_loss_text

    hof = doc["hall_of_fame"]
    tasks = doc["tasks"]  # the suite's, so a run with no scored loss yet still has its task columns
    confirmed = any(h["confirmed_fitness"] is not None for h in hof)
    known = any(h["same_as"] for h in hof)
    fmt = (lambda v: v) if raw else _fmt
    headers = ["rank", "fitness", *(["confirmed"] if confirmed else []), "validation", "complexity", *tasks,
               "formula", *(["same_as"] if known and raw else [])]
    rows = []
    for h in hof:
        same = known_loss_text(h["same_as"]["name"], h["same_as"]["scale"]) if h["same_as"] else None
        invalid = None if raw else _invalid_tokens(h["tokens"])
        # Markdown: the formula and the table's note apart, so the formula alone goes in the code span
        formula = (h["formula"] if raw else (h["formula"], f"(= {same})" if same
                                             else f"(invalid: {invalid})" if invalid else None))
        rows.append([h["rank"], fmt(h["fitness"]), *([fmt(h["confirmed_fitness"])] if confirmed else []),
                     fmt(h["validation_fitness"]), h["complexity"], *[fmt(h["tasks"].get(t)) for t in tasks],
                     formula, *([same or ""] if known and raw else [])])
    return headers, rows


def _markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Names and formulas come from the run file: shown literally, never rendered as markup or HTML; a cell
    given as (formula, note) is the formula as a code span, then the note."""
    from lossforge import markdown

    def cell(v: Any) -> str:
        if isinstance(v, tuple):
            formula, note = v
            return markdown.code(formula) + (f" {markdown.text(note)}" if note else "")
        return markdown.text(v)

    out = ["| " + " | ".join(cell(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(out + ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows])


def cmd_show(args: argparse.Namespace) -> int:
    import csv
    import json

    from lossforge.results import open_run
    from lossforge.runfile import RunStore, resolve_run_path

    path = resolve_run_path(args.run, args.runs_dir)
    fmt = "json" if args.json else args.format
    if fmt != "table":
        doc = open_run(path, pick=args.pick).to_dict(top=args.top)
        if fmt == "json":
            print(strict_json.dumps(doc, indent=2))
            return 0
        headers, rows = _show_rows(doc, raw=fmt == "csv")
        if fmt == "csv":
            names = {"validation": "validation_fitness", "confirmed": "confirmed_fitness"}
            writer = csv.writer(sys.stdout, lineterminator="\n")
            writer.writerow([names.get(h, h) for h in headers])
            writer.writerows(rows)
        else:
            print(_markdown_table(headers, rows))
        return 0
    with RunStore.open(path, readonly=True) as store:
        summary = store.summary()
        print(f"{path}: {store.shown_status(summary.status)}, {summary.generations} generation(s), "
              f"{summary.candidates} candidate(s), {summary.elapsed_s:.0f}s "
              "(fitness: relative to the suite's reference losses, 1 = as good, on the search seeds; confirmed: on the "
              "search and confirm seeds; validation: on held-out seeds)")
        print(_ranking_table(store, args.top, args.pick))
        print()
        print(_baseline_table(store))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from lossforge.export import ranked_from_run, render
    from lossforge.runfile import RunStore, resolve_run_path

    if args.output == "":  # -o '' wrote to stdout, as if no file was named
        raise LossforgeError("-o names no file; give a file name, or leave -o out to print the export")
    _check_named(args.name, "--name", "class name", "RobustLoss")  # was the default class name, silently
    path = resolve_run_path(args.run, args.runs_dir)
    item, expression = ranked_from_run(path, args.rank, args.pick)
    with RunStore.open(path, readonly=True) as store:
        suite = store.config().get("suite", {}).get("name")
    metadata = {"run": str(path), "rank": args.rank, "pick": args.pick, "fitness": item.record.fitness,
                "validation_fitness": item.validation_fitness, "suite": suite, "key": item.record.key}
    text = render(expression, args.format, metadata, args.name)
    if args.output:
        from lossforge.atomic import check_output, write_atomic

        out = check_output(args.output, force=args.force, inputs=[path])
        write_atomic(out, text, replace=args.force)
        print(f"wrote {out}")
    else:
        sys.stdout.write(text)
    return 0


def _score_table(rows: Sequence[Any], against: str | None) -> str:
    """Fitness and each task's raw score as mean ± 95 % CI over seeds; paired comparisons with ``against``."""
    from lossforge.stats import mean_ci, paired_comparison

    def ci(values: Sequence[float]) -> str:
        failed = sum(1 for v in values if not math.isfinite(v))
        if failed:  # a failed training scores -inf: "-inf ± nan" said nothing of how many seeds failed
            return f"failed ({failed} of {len(values)} seed(s))"
        mean, half = mean_ci(values)
        # one seed gives no interval (mean_ci's inf): say so rather than "± inf"
        return f"{mean:.4f} ± {half:.4f}" if len(values) > 1 else f"{mean:.4f} (1 seed)"

    task_names = list(rows[0].tasks)
    table = [[r.name, ci(r.per_seed), *[ci(r.tasks[t]["scores"]) for t in task_names], r.formula] for r in rows]
    out = _table(["loss", "fitness", *[f"{t} score" for t in task_names], "formula"], table)
    out += "\n(fitness: relative to the reference loss, 1 = as good; scores: the tasks' own units, higher is better)"
    if len(rows[0].per_seed) < 2:
        out += "\n(one seed: no CI can be given; score on more seeds with --seeds N)"
    if against:
        ref = next(r for r in rows if r.name == against)
        lines = []
        for r in rows:
            if r is ref:
                continue
            lines.append(paired_comparison(r.per_seed, ref.per_seed).line(f"{r.name} fitness", against))
            for t in task_names:
                lines.append("  " + paired_comparison(r.tasks[t]["scores"], ref.tasks[t]["scores"]).line(
                    f"{r.name} {t} score", against))
        out += "\n\n" + "\n".join(lines)
    return out


def _score_json(rows: Sequence[Any], against: str | None = None) -> str:
    """``{"rows": [{name, baseline, formula, fitness, ci, tasks: {task: {score, ci, normalized}}, against,
    ...}]}``: ``fitness`` is the mean over seeds and ``ci`` its 95 % half-width (as in the table);
    ``against``: with ``--against NAME``, the paired comparison the table prints (``{"baseline", "mean_diff",
    "ci", "p", "seeds", "tasks": {task: {...}}}``), null for NAME's own row or without ``--against``."""
    import json

    from lossforge.stats import mean_ci, paired_comparison

    ref = next((r for r in rows if r.name == against), None) if against else None

    def versus(r: Any) -> dict[str, Any] | None:
        if ref is None or r is ref:
            return None
        tasks = {t: paired_comparison(r.tasks[t]["scores"], ref.tasks[t]["scores"]).record() for t in r.tasks}
        return {"baseline": against, **paired_comparison(r.per_seed, ref.per_seed).record(), "tasks": tasks}

    def num(value: Any) -> float | None:
        return None if value is None or value != value or value in (float("inf"), float("-inf")) else float(value)

    out = []
    for r in rows:
        mean, half = mean_ci(r.per_seed)
        tasks = {}
        for name, t in r.tasks.items():
            t_mean, t_half = mean_ci(t["scores"])
            tasks[name] = {"score": num(t_mean), "ci": num(t_half), "normalized": num(t.get("normalized")),
                           "scores": [num(v) for v in t["scores"]]}
        out.append({"name": r.name, "baseline": not r.name.startswith("loss "), "formula": r.formula,
                    "fitness": num(mean), "ci": num(half), "status": r.status, "reason": r.reason,
                    "per_seed": [num(v) for v in r.per_seed], "tasks": tasks, "against": versus(r)})
    return strict_json.dumps({"rows": out}, indent=2)


def cmd_score(args: argparse.Namespace) -> int:
    from lossforge.api import score
    from lossforge.baselines import DISPLAY_BASELINES
    from lossforge.export import read_json_export
    from lossforge.expression import LossExpression
    from lossforge.scoring import load_suite

    suffix = Path(args.expression.strip()).suffix.lower()
    if suffix == ".json":  # a file name, even when the file is missing (LOSS.JSON too, not "unknown name")
        expr, _ = read_json_export(args.expression)
    elif suffix == ".py":  # was "cannot parse expression" or "unsupported syntax (Attribute)"
        raise LossforgeError(f"{args.expression}: score reads expression text or a .json export, never a .py "
                             "module (no file's code is run); export the loss with --format json and score that")
    elif suffix in (".db", ".sqlite", ".sqlite3"):  # a run file, even when missing: was "unsupported syntax"
        raise LossforgeError(f"{args.expression}: score reads expression text or a .json export, not a run file; "
                             "export the loss with `lossforge export RUN --rank K --format json -o loss.json` and "
                             "score that")
    else:
        try:
            expr = LossExpression.parse(args.expression)
        except LossforgeError:
            if not Path(args.expression).is_file():
                raise
            # e.g. the LaTeX or sympy export, which only the .json export stands for
            raise LossforgeError(f"{args.expression}: a file, not expression text; score reads expression text or "
                                 "a .json export (`lossforge export RUN --format json -o loss.json`)") from None
    args.suite = _data_suite(args) or args.suite
    suite = load_suite(args.suite)
    seeds = list(range(args.seeds)) if args.seeds else None
    if args.validation:
        seeds = list(suite.validation_seeds)
        if not seeds:
            raise LossforgeError(f"suite {suite.name} has no validation_seeds; use --seeds N")
    if args.baselines is not None:  # '' (or ',,'): the loss alone
        names = _baseline_names(args.baselines)
    else:
        names = [n for p in sorted(suite.problems) for n in DISPLAY_BASELINES[p]]
    _check_named(args.against, "--against", "baseline", "mse")  # --against '' compared with nothing, silently
    if args.against is not None:
        names.append(args.against)
    rows = score([expr], suite, seeds=seeds, baselines=list(dict.fromkeys(names)))  # names checked first
    if args.json:
        print(_score_json(rows, args.against))
        return 0
    print(_score_table(rows, args.against))
    if rows[0].reason:
        print(f"note: {rows[0].reason}")
    return 0


def _baseline_names(text: str) -> list[str]:
    """``--baselines a, b,`` as names (empty entries dropped): one reading for ``score`` and ``baselines``.
    Commas inside parentheses belong to a spec (``anl_ce(alpha=1.2, beta=0.9),gce`` is two baselines)."""
    names, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += (ch == "(") - (ch == ")")
        if ch == "," and depth <= 0:
            names.append(text[start:i].strip())
            start, depth = i + 1, 0
    names.append(text[start:].strip())  # an unclosed spec stays one (wrong) name, refused by get_baseline
    return [n for n in names if n]


def cmd_baselines(args: argparse.Namespace) -> int:
    from lossforge.api import check_baselines, score
    from lossforge.baselines import baselines_for
    from lossforge.tuning import tune_baselines
    from lossforge.errors import ConfigError
    from lossforge.expression import LossExpression
    from lossforge.scoring import load_suite

    suite = load_suite(args.suite)
    if args.baselines is not None:
        names = _baseline_names(args.baselines)
        if not names:
            raise ConfigError("--baselines names no baseline; give some, e.g. --baselines gce,sce, or leave it out "
                              "for every one")
        check_baselines(names, suite)  # before any tuning or training
    else:
        names = [b.name for p in sorted(suite.problems) for b in baselines_for(p)]
    names = list(dict.fromkeys(names))
    if args.validation and not suite.validation_seeds:
        raise ConfigError(f"suite {suite.name!r} has no validation_seeds; drop --validation or use --seeds")
    seeds = list(range(args.seeds)) if args.seeds else (list(suite.validation_seeds) if args.validation else None)
    info = sys.stderr if args.json else sys.stdout  # JSON on stdout stays parseable
    attempts = []
    if args.tune:
        # tuned on the suite's own (search) seeds, as a search tunes its best losses; shown on the table's seeds
        print(f"tuning {len(names)} baselines on seeds {list(suite.seeds)} ({args.tune_iterations} SPSA iterations each)", file=info)
        attempts = tune_baselines(names, suite, args.tune_iterations, args.tune_seed)
    tuned = [t for t in attempts if t.fitness_after > t.fitness_before]
    exprs = [LossExpression(tuple(t.spec)) for t in tuned if isinstance(t.spec, list)]
    tuned_torch = [t for t in tuned if isinstance(t.spec, str)]
    rows = score(exprs, suite, seeds=seeds, baselines=names + [t.spec for t in tuned_torch])
    labels = [t for t in tuned if isinstance(t.spec, list)] + [None] * len(names) + tuned_torch
    for row, t in zip(rows, labels):
        if t is not None:
            row.name, row.formula = f"{t.name} (tuned)", t.formula
    print(_score_json(rows) if args.json else _score_table(rows, None))
    for t in attempts:
        kept = "kept the given setting" if "(" in t.name else "kept the authors' setting"  # a spec is the user's
        outcome = t.formula if t in tuned else kept
        print(f"tuned {t.name}: {outcome}  (tuning seeds: fitness {t.fitness_before:.4f} -> {t.fitness_after:.4f})", file=info)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from lossforge.report import write_report
    from lossforge.runfile import resolve_run_path

    _check_named(args.output, "-o", "directory", "runs/my-report")  # was the default directory, silently
    path = resolve_run_path(args.run, args.runs_dir)
    out = Path(args.output) if args.output is not None else path.with_name(path.stem + "-report")
    print(f"wrote {write_report(path, out, top=args.top, force=args.force)}")
    return 0


def cmd_diagnose(args: argparse.Namespace) -> int:
    from lossforge.baselines import get_baseline
    from lossforge.diagnostics import diagnose, plot_curves
    from lossforge.expression import LossExpression
    from lossforge.ranking import ranking, suite_of
    from lossforge.runfile import RunStore, resolve_run_path
    from lossforge.runfile.paths import is_run_name

    target = args.target
    _check_named(args.plot, "--plot", "file", "curves.png")  # was silently no plot
    if target.endswith(".db") or "/" in target or (Path(args.runs_dir) / f"{target}.db").exists():
        path = resolve_run_path(target, args.runs_dir)
        with RunStore.open(path, readonly=True) as store:
            losses = [(f"rank {i}", LossExpression(r.record.tree)) for i, r in enumerate(ranking(store, args.top), 1)]
            problems = sorted(suite_of(store).problems)
    else:
        from lossforge.scoring import load_suite

        try:
            losses = [("loss", LossExpression.parse(target))]
        except LossforgeError as exc:
            if not is_run_name(target) or target in ("y_pred", "y_real"):
                raise
            # a mistyped run name read as an expression: "unknown name 'my'" for my-run named neither
            raise LossforgeError(f"no run {target!r} in {args.runs_dir} (list them with `lossforge runs`), and as "
                                 f"an expression: {exc}") from None
        # by default the convention of the default suite, as `search` and `score` use it
        problems = [args.problem] if args.problem else sorted(load_suite(DEFAULT_SUITE).problems)
    references = {"classification": ["cross_entropy", "mae", "gce"], "regression": ["mse", "mae"]}
    plots = {}
    if args.plot:
        from lossforge.atomic import check_output

        for problem in problems:  # all checked before any is drawn: an existing file was replaced silently
            out = Path(args.plot)
            out = out.with_name(f"{out.stem}-{problem}{out.suffix or '.png'}") if len(problems) > 1 else out
            plots[problem] = check_output(out, force=args.force)
    rows = []
    for problem in problems:
        items = losses + [(n, LossExpression.parse(get_baseline(n).expression)) for n in references[problem]]
        rows += [[label, *diagnose(expr, problem).row()[1:], expr.formula()] for label, expr in items]
        if problem in plots:
            print(f"wrote {plot_curves([(label, e) for label, e in items[:1] + items[len(losses):]], problem, plots[problem])}")
    print(_table(["loss", "problem", "bounded", "symmetric", "monotone", "formula"], rows))
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from lossforge.dashboard import serve
    from lossforge.runfile import resolve_run_path

    target = Path(args.run) if args.run else Path(args.runs_dir)
    if args.run and not target.is_dir():
        target = resolve_run_path(args.run, args.runs_dir)
    serve(target, args.port, args.host)
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from lossforge.ranking import ranking
    from lossforge.runfile import RunStore, list_runs

    skipped: list[str] = []
    runs = list_runs(args.runs_dir, on_skip=lambda p, e: skipped.append(f"{p}: {e}"))
    rows = []
    for r in runs:
        # rank 1 as `show` ranks it: validated losses first, by validation fitness
        try:
            with RunStore.open(r.path, readonly=True) as store:
                top = ranking(store, 1)
                status = store.shown_status(r.status)
        except LossforgeError as exc:
            skipped.append(f"{r.path}: {exc}")
            continue
        fitness = top[0].record.fitness if top else None
        validation = top[0].validation_fitness if top else None
        rows.append([_printable(r.name), status, r.generations, r.candidates, _fmt(fitness), _fmt(validation),
                     f"{r.elapsed_s:.0f}s"])
    print(_table(["run", "status", "generations", "candidates", "fitness", "validation", "time"], rows) if rows
          else f"no runs in {args.runs_dir}")
    if rows:
        print("(fitness and validation of rank 1 as `lossforge show` ranks it: by validation fitness when measured)")
    for line in skipped:
        print(f"skipped {_printable(line)}", file=sys.stderr)
    return 0


def cmd_space(args: argparse.Namespace) -> int:
    from lossforge.operators import OPERATORS
    from lossforge.space import load_space

    space = load_space(args.space)
    # text from a file: shown, never obeyed; a space without a description is its name alone, not "name: "
    print(f"{_printable(space.name)}: {_printable(space.description)}" if space.description.strip()
          else _printable(space.name))
    constants = (f"constants uniform in [{space.const_low}, {space.const_high}], {space.const_digits} decimals"
                 if space.constants else "no constants")
    print(f"variables: {', '.join(space.variables)}; {constants}; max depth {space.max_depth}, max nodes "
          f"{space.max_nodes}")
    rows = [[n, OPERATORS[n].arity, OPERATORS[n].description, OPERATORS[n].protected or "total"]
            for n in space.operators]
    print(_table(["operator", "arity", "meaning", "protected semantics"], rows))
    return 0


#: The suite ``search``, ``score``, ``baselines`` and ``diagnose`` use when none is given.
DEFAULT_SUITE = "regression"


def _bundled() -> str:
    """The bundled suites and search spaces, for the help texts."""
    from lossforge.scoring import SUITES_DIR
    from lossforge.space import SPACES_DIR

    suites = ", ".join(sorted(p.stem for p in SUITES_DIR.glob("*.toml")))
    spaces = ", ".join(sorted(p.stem for p in SPACES_DIR.glob("*.toml")))
    return (f"bundled suites: {suites} (or a .toml file); bundled search spaces: {spaces} (or a .toml file). "
            "`lossforge space NAME` shows a space's operators.")


# --- own data, plug-in tasks, version ---------------------------------------------------------------------


def _add_version(parser: argparse.ArgumentParser) -> None:
    from lossforge import __version__

    parser.add_argument("--version", action="version", version=f"lossforge {__version__}")


def _add_data_options(p: argparse.ArgumentParser, required: bool = False) -> None:
    g = p.add_argument_group("your own data" + ("" if required else " (instead of --suite)"))
    g.add_argument("--data", metavar="FILE", required=required, help="a .csv, .parquet, .npz or .npy file")
    g.add_argument("--target", metavar="COLUMN", default="y", help="the label column (default: y)")
    g.add_argument("--problem", choices=["classification", "regression"], default="classification")
    g.add_argument("--noise", metavar="KIND:RATE",
                   help="inject label noise: symmetric:0.4, pair:0.3, asymmetric:0.3:SRC>DST,SRC>DST; for "
                        "regression gaussian:STD[:MEAN] or outliers:FRACTION")
    g.add_argument("--trusted", metavar="COLUMN|FILE",
                   help="the labels are already noisy; these rows (flag column) or this file are clean")
    g.add_argument("--test-data", metavar="FILE", help="a clean test file instead of a held-out split")
    g.add_argument("--features", metavar="A,B,...", help="feature columns (default: all but target/trusted)")
    g.add_argument("--image-shape", metavar="[C,]H,W",
                   help="rows are images: H,W one channel, or C,H,W (also CxHxW) with channel-major rows")
    g.add_argument("--model", metavar="SPEC",
                   help="mlp (default), mlp:128,128, cnn, or package.module:factory (your nn.Module, batched)")
    g.add_argument("--procedures", metavar="LIST", help="comma-separated: plain,augment,adversarial,regularize")
    g.add_argument("--epochs", type=_positive_int, help="training epochs of every task (default 40)")


def _data_spec(args: argparse.Namespace) -> dict[str, Any]:
    from lossforge.data_suite import data_suite_spec

    return data_suite_spec(
        args.data, args.target, problem=args.problem, noise=args.noise, trusted=args.trusted,
        test_data=args.test_data, features=[f for f in (args.features or "").split(",") if f],
        image_shape=args.image_shape, model=args.model, procedures=args.procedures, epochs=args.epochs)


def _noise_report(spec: dict[str, Any]) -> str | None:
    """The estimated transition matrix of the first task, when the labels are declared noisy; each line with
    control characters escaped (class names come from the data: shown, never obeyed by the terminal, and the
    report also goes into the suite file's comment, where TOML allows no control characters)."""
    report = _raw_noise_report(spec)
    return None if report is None else "\n".join(_printable(line) for line in report.splitlines())


def _raw_noise_report(spec: dict[str, Any]) -> str | None:
    from lossforge.tasks.registry import make_task
    from lossforge.tasks.user import format_transition

    first = spec["tasks"][0]
    if first["settings"].get("trusted") is None:
        return None
    task = make_task(first["type"], **first["settings"])
    if task.problem == "regression":
        model = task.noise_estimate()  # type: ignore[attr-defined]
        return ("estimated target noise (standardised units; trusted rows vs the rest): "
                + ", ".join(f"{k} {v:.3f}" for k, v in model.items()))
    matrix = task.noise_estimate()  # type: ignore[attr-defined]
    rate = 1.0 - float(sum(matrix[i, i] for i in range(len(matrix)))) / len(matrix)
    return (f"estimated label noise (rows: true class, columns: given label; from the trusted rows): "
            f"mean off-diagonal mass {rate:.3f}\n{format_transition(matrix, task.classes)}")  # type: ignore[attr-defined]


def _data_suite(args: argparse.Namespace) -> str | None:
    """The suite file for ``--data`` (written under RUNS_DIR/suites/), or None without ``--data``."""
    if not getattr(args, "data", None):
        return None
    if args.suite != DEFAULT_SUITE:  # the suite was given too, and silently replaced by the data's
        raise LossforgeError(f"--data and --suite {args.suite} exclude each other: --data searches or scores on a "
                             "suite made for your data; drop one")
    from lossforge.data_suite import suite_file_for

    spec = _data_spec(args)
    report = _noise_report(spec)
    if report and not getattr(args, "quiet", False):
        print(report)
    return str(suite_file_for(spec, Path(args.runs_dir) / "suites"))


def cmd_suite_init(args: argparse.Namespace) -> int:
    from lossforge.atomic import check_output
    from lossforge.data_sources import is_data_path
    from lossforge.data_suite import suite_toml, write_text_atomic
    from lossforge.scoring import suite_from_spec

    # -o over the data it reads (even with --force) replaced the user's data file with the suite
    inputs = [p for p in (args.data, args.test_data, args.trusted) if p and is_data_path(p)]
    check_output(args.output, force=args.force, inputs=inputs)
    spec = _data_spec(args)
    suite_from_spec(spec).warn_notices()  # setting up is when a doubtful image shape is worth a word
    report = _noise_report(spec)
    header = "A suite on your data, written by `lossforge suite init`: edit it, then\n" \
             f"lossforge search --suite {args.output}"
    if report:
        header += "\n\n" + report
        print(report)
    path = write_text_atomic(args.output, suite_toml(spec, header), overwrite=args.force)
    print(f"suite written to {path} ({len(spec['tasks'])} task(s)); run it with: lossforge search --suite {path}")
    return 0


def cmd_check_task(args: argparse.Namespace) -> int:
    import json

    from lossforge.conformance import check_task

    try:
        settings = json.loads(args.settings) if args.settings else {}
    except json.JSONDecodeError as exc:
        raise LossforgeError(f"--settings must be a JSON object: {exc}") from None
    if not isinstance(settings, dict):
        raise LossforgeError("--settings must be a JSON object, e.g. '{\"epochs\": 2}'")
    report = check_task(args.task, settings)
    for line in report.lines():
        print(line)
    return 0 if report.passed else 1


def _add_userdata_commands(sub: Any) -> None:
    p = sub.add_parser("suite", help="write a suite file for your data (suite init)")
    inner = p.add_subparsers(dest="suite_command", required=True, parser_class=_Parser)
    init = inner.add_parser("init", help="write a suite for --data FILE to edit and search with")
    _add_data_options(init, required=True)
    init.add_argument("-o", "--output", required=True, help="the suite file to write")
    init.add_argument("--force", action="store_true", help="replace an existing file")
    init.set_defaults(func=cmd_suite_init)

    p = sub.add_parser("check-task", help="conformance check of a task type (built-in name or module:Class)")
    p.add_argument("task", help="e.g. label_noise, or mypackage.tasks:MyTask")
    p.add_argument("--settings", help="JSON object of settings to construct it with (keep it small and fast)")
    p.set_defaults(func=cmd_check_task)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"{text} must be a positive number")
    return value


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``10m``, ``1.5h`` -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600}
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    try:
        value = float(number) * units[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration; use e.g. 90s, 10m or 1h") from None
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"{text} must be a positive duration, e.g. 10m")
    return value


_OPTION_TYPES: dict[str, Callable[[str], Any]] = {"int": _int, "float": float, "str": str, "positive_int": _positive_int,
                                                  "jobs": _jobs, "positive_float": _positive_float,
                                                  "duration": parse_duration}


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """One option per :class:`~lossforge.engine.SearchConfig` field, with its default and help text."""
    from dataclasses import MISSING, fields

    from lossforge.engine import SearchConfig

    for f in fields(SearchConfig):
        meta = f.metadata
        flag = meta.get("flag", "--" + f.name.replace("_", "-"))
        default = f.default if f.default is not MISSING else None
        help_text = meta.get("help", "")
        if str(f.type) == "bool":  # --x / --no-x, the default from the config
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=default,
                                help=help_text)
            continue
        kind = meta.get("type") or str(f.type).split(" |")[0]
        shown = "" if default is None else f" (default: {default})"
        parser.add_argument(flag, dest=f.name, type=_OPTION_TYPES[kind], default=default,
                            choices=meta.get("choices"), metavar=meta.get("metavar"), help=help_text + shown)


#: Most seeds ``score``/``baselines --seeds N`` trains on (each is a full training of every loss).
MAX_SCORE_SEEDS = 1000


def _seed_count(text: str) -> int:
    value = _positive_int(text)
    if value > MAX_SCORE_SEEDS:  # range(1e20) was an OverflowError traceback, range(1e9) a hang
        raise argparse.ArgumentTypeError(f"{text} seeds is too many; use at most {MAX_SCORE_SEEDS}")
    return value


def _add_seed_options(p: argparse.ArgumentParser) -> None:
    """``--seeds N`` or ``--validation``, not both (given both, one of them was silently ignored)."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--seeds", type=_seed_count, help="score on seeds 0..N-1 instead of the suite's seeds")
    g.add_argument("--validation", action="store_true", help="score on the suite's validation seeds")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``lossforge`` command."""
    parser = _Parser(prog="lossforge", description="Discover robust loss functions by genetic programming.",
                     epilog=_bundled())
    parser.add_argument("--runs-dir", default="runs", help="where run names are stored (default: runs)")
    _add_version(parser)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("search", help="run a new search")
    add_config_options(p)
    p.add_argument("--run", help="run name (runs/NAME.db) or path; default: search-<time>")
    p.add_argument("--cache-from", action="append", default=[], metavar="RUN",
                   help="reuse evaluations of an earlier run on the same suite and seeds (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--tensorboard", metavar="DIR", help="write TensorBoard scalars and best formulas per generation")
    _add_data_options(p)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("resume", help="continue a stopped run")
    p.add_argument("run")
    p.add_argument("--scheduler", metavar="ADDRESS", help="dask scheduler address (never taken from the run file)")
    p.add_argument("--dask-workers", type=_positive_int, metavar="N", help="start a local dask cluster of N workers")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--tensorboard", metavar="DIR", help="write TensorBoard scalars and best formulas per generation")
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("show", help="the hall of fame of a run")
    p.add_argument("run")
    p.add_argument("--top", type=_positive_int, default=10)
    p.add_argument("--pick", choices=["best", "knee", "ratio"], default="best",
                   help="rank 1: best fitness, knee of the complexity/fitness front, or best gain per complexity")
    g = p.add_mutually_exclusive_group()  # given both, --json silently won over --format csv
    g.add_argument("--format", choices=SHOW_FORMATS, default="table",
                   help="table (default), csv, markdown, or json (the run's counts, hall of fame and baselines)")
    g.add_argument("--json", action="store_true", help="same as --format json")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("export", help="export a loss of a run")
    p.add_argument("run")
    p.add_argument("--rank", type=_positive_int, default=1)
    p.add_argument("--pick", choices=["best", "knee", "ratio"], default="best")
    p.add_argument("--format", choices=["py", "json", "latex", "sympy"], required=True)
    p.add_argument("--name", help="class name of the py export")
    p.add_argument("-o", "--output", help="write to this file instead of stdout (never over a run file)")
    p.add_argument("--force", action="store_true", help="replace an existing output file")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("score", help="score a loss (expression text or a .json export) on a suite")
    p.add_argument("expression", help='e.g. "(y_pred - y_real)**2", or an exported loss.json (transfer)')
    p.add_argument("--suite", default="regression")
    _add_seed_options(p)
    p.add_argument("--against", help="baseline for a paired comparison over seeds, e.g. cross_entropy")
    p.add_argument("--baselines", help="comma-separated baselines to score beside it (default: the suite's usual; '' for none)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    _add_data_options(p)
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("baselines", help="score the known losses on a suite")
    p.add_argument("--suite", default="regression")
    _add_seed_options(p)
    p.add_argument("--baselines", help="comma-separated baselines (default: every one for the suite's problems)")
    p.add_argument("--tune", action="store_true",
                   help="also tune each baseline's constants / hyper-parameters on the suite's seeds, "
                        "with the budget a search gives its best losses; improved ones get a '(tuned)' row")
    p.add_argument("--tune-iterations", type=_positive_int, default=4, help="SPSA iterations per baseline")
    p.add_argument("--tune-seed", type=_int, default=0, help="seed of the tuning directions")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.set_defaults(func=cmd_baselines)

    p = sub.add_parser("report", help="plots and a Markdown summary of a run")
    p.add_argument("run")
    p.add_argument("-o", "--output", help="output directory (default: <run>-report next to the run file)")
    p.add_argument("--top", type=_positive_int, default=10)
    p.add_argument("--force", action="store_true", help="replace the files of an earlier report there")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("diagnose", help="bounded / symmetric / monotone checks of a run's losses or an expression")
    p.add_argument("target", help="a run, or an expression")
    p.add_argument("--top", type=_positive_int, default=5)
    p.add_argument("--problem", choices=["classification", "regression"],
                   help="for an expression: which convention to check (default: the default suite's, "
                        "regression, as for search and score)")
    p.add_argument("--plot", help="write the value and gradient curves of the best loss and references here")
    p.add_argument("--force", action="store_true", help="replace an existing plot file")
    p.set_defaults(func=cmd_diagnose)

    p = sub.add_parser("dashboard", help="a local web page that follows a run (running or finished)")
    p.add_argument("run", nargs="?", help="a run name or file, or a directory of runs (default: --runs-dir)")
    p.add_argument("--port", type=_int, default=8765, help="port to listen on (default: 8765; 0: any free port)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default: 127.0.0.1, this machine only; the page has no login)")
    p.set_defaults(func=cmd_dashboard)

    p = sub.add_parser("runs", help="list runs")
    p.set_defaults(func=cmd_runs)

    for name in ("search", "score", "baselines", "diagnose"):
        sub.choices[name].epilog = _bundled()

    p = sub.add_parser("space", help="show a search space and the operators' protected semantics",
                       epilog=_bundled())
    p.add_argument("space", nargs="?", default="survey")
    p.set_defaults(func=cmd_space)
    _add_userdata_commands(sub)
    return parser


def _warning_line(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  line: str | None = None) -> str:
    """A lossforge notice as the one line it is (no source path and code line); others as usual."""
    text = str(message)
    if text.startswith("lossforge:"):
        return text + "\n"
    return _default_formatwarning(message, category, filename, lineno, line)


_default_formatwarning = warnings.formatwarning


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lossforge`` command."""
    warnings.formatwarning = _warning_line  # type: ignore[assignment]
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except LossforgeError as exc:
        sys.stderr.write(f"lossforge: error: {_printable(str(exc))}\n")
        return 2
    except BrokenPipeError:  # output piped into `head` and closed: not an error
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:  # e.g. Ctrl-C while a run is being opened, before anything new is scored
        sys.stderr.write("lossforge: interrupted\n")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
