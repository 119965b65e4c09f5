"""The ``lossforge`` command. Bad input gets one line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, NoReturn, Sequence

from lossforge.errors import LossforgeError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"lossforge: error: {message} (see `{self.prog} --help`)\n")
        raise SystemExit(2)


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
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in cells])


def cmd_search(args: argparse.Namespace) -> int:
    from lossforge.api import default_run_name
    from lossforge.engine import Search, SearchConfig
    from lossforge.storage import resolve_run_path

    config = SearchConfig(
        population=args.population, generations=args.generations, seed=args.seed, space=args.space,
        suite=args.suite, jobs=args.jobs, executor=args.executor, chunk_size=args.chunk_size, device=args.device,
    )
    path = resolve_run_path(args.run or default_run_name(), args.runs_dir)
    say = (lambda line: None) if args.quiet else (lambda line: print(line, flush=True))
    engine = Search.create(path, config, say)
    say(f"run {path}: population {config.population}, {config.generations} generations, suite "
        f"{engine.suite.name} ({len(engine.suite.tasks)} tasks x {len(engine.suite.seeds)} seeds), "
        f"{engine.executor.n_workers} worker(s)")
    return _drive(engine, path)


def cmd_resume(args: argparse.Namespace) -> int:
    from lossforge.engine import Search
    from lossforge.storage import resolve_run_path

    path = resolve_run_path(args.run, args.runs_dir)
    engine = Search.resume(path, None if args.quiet else (lambda line: print(line, flush=True)))
    return _drive(engine, path)


def _drive(engine: Any, path: Path) -> int:
    try:
        hof = engine.run()
        print()
        print(_hof_table(engine.store, len(hof) and min(5, len(hof))))
        print()
        names = [n for n in engine.reference]
        print("baselines on the same suite: " + ", ".join(f"{n} {engine.baseline_fitness(n):.4f}" for n in names))
        print(f"run saved to {path}  (lossforge show {path} | lossforge export {path} --format py)")
        return 0
    except KeyboardInterrupt:
        sys.stderr.write(f"lossforge: interrupted; everything scored is saved in {path}; "
                         f"continue with `lossforge resume {path}`\n")
        return 130
    finally:
        engine.close()


def _hof_table(store: Any, n: int) -> str:
    rows = []
    best = store.best(n) if n else []
    task_names = list(best[0].task_scores) if best else []
    for rank, rec in enumerate(best, 1):
        per_task = [_fmt(rec.task_scores.get(t, {}).get("normalized")) for t in task_names]
        rows.append([rank, _fmt(rec.fitness), rec.complexity, *per_task, rec.formula])
    if not rows:
        return "no loss was scored successfully yet"
    return _table(["rank", "fitness", "complexity", *task_names, "formula"], rows)


def cmd_show(args: argparse.Namespace) -> int:
    from lossforge.engine import Search
    from lossforge.storage import RunStore, resolve_run_path

    path = resolve_run_path(args.run, args.runs_dir)
    with RunStore.open(path, readonly=True) as store:
        summary = store.summary()
        print(f"{path}: {summary.status.value}, {summary.generations} generation(s), "
              f"{summary.candidates} candidate(s), {summary.elapsed_s:.0f}s")
        print(_hof_table(store, args.top))
        baselines = store.baselines()
        if baselines:
            suite = Search.suite_of(store)
            ref = {t.name: baselines[t.task.reference][t.name] for t in suite.tasks if t.task.reference in baselines}
            if len(ref) == len(suite.tasks):
                print()
                rows = []
                for name, raw in baselines.items():
                    fit, summary_ = suite.fitness(raw, ref)
                    rows.append([name, _fmt(fit), *[_fmt(summary_[t.name]["normalized"]) for t in suite.tasks]])
                print(_table(["baseline", "fitness", *[t.name for t in suite.tasks]], rows))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from lossforge.export import expression_from_run, render
    from lossforge.storage import RunStore, resolve_run_path

    path = resolve_run_path(args.run, args.runs_dir)
    expression = expression_from_run(path, args.rank)
    with RunStore.open(path, readonly=True) as store:
        rec = store.best(args.rank)[args.rank - 1]
        suite = store.config().get("suite", {}).get("name")
    metadata = {"run": str(path), "rank": args.rank, "fitness": rec.fitness, "suite": suite, "key": rec.key}
    text = render(expression, args.format, metadata, args.name)
    if args.output:
        out = Path(args.output)
        try:
            out.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise LossforgeError(f"cannot write {out}: {exc.strerror}; choose a writable path") from None
        print(f"wrote {out}")
    else:
        sys.stdout.write(text)
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from lossforge.api import score
    from lossforge.expression import LossExpression

    expr = LossExpression.parse(args.expression)
    seeds = list(range(args.seeds)) if args.seeds else None
    rows = score([expr], args.suite, seeds=seeds)
    task_names = list(rows[0].tasks)
    table = [[r.name, _fmt(r.fitness), *[_fmt(r.tasks[t]["normalized"]) for t in task_names], r.formula]
             for r in rows]
    print(_table(["loss", "fitness", *task_names, "formula"], table))
    if rows[0].reason:
        print(f"note: {rows[0].reason}")
    return 0


def cmd_baselines(args: argparse.Namespace) -> int:
    from lossforge.api import score
    from lossforge.baselines import baselines_for
    from lossforge.scoring import load_suite

    suite = load_suite(args.suite)
    names = [b.name for p in sorted(suite.problems) for b in baselines_for(p)]
    names = list(dict.fromkeys(names))
    seeds = list(range(args.seeds)) if args.seeds else None
    rows = score([], suite, seeds=seeds, baselines=names)
    task_names = list(rows[0].tasks)
    print(_table(["baseline", "fitness", *task_names],
                 [[r.name, _fmt(r.fitness), *[_fmt(r.tasks[t]["score"]) for t in task_names]] for r in rows]))
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from lossforge.storage import list_runs

    skipped: list[str] = []
    runs = list_runs(args.runs_dir, on_skip=lambda p, e: skipped.append(f"{p}: {e}"))
    rows = [[r.name, r.status.value, r.generations, r.candidates, _fmt(r.best_fitness), f"{r.elapsed_s:.0f}s"]
            for r in runs]
    print(_table(["run", "status", "generations", "candidates", "best", "time"], rows) if rows
          else f"no runs in {args.runs_dir}")
    for line in skipped:
        print(f"skipped {line}", file=sys.stderr)
    return 0


def cmd_space(args: argparse.Namespace) -> int:
    from lossforge.operators import OPERATORS
    from lossforge.space import load_space

    space = load_space(args.space)
    print(f"{space.name}: {space.description}")
    print(f"variables: {', '.join(space.variables)}; constants uniform in [{space.const_low}, {space.const_high}], "
          f"{space.const_digits} decimals; max depth {space.max_depth}, max nodes {space.max_nodes}")
    rows = [[n, OPERATORS[n].arity, OPERATORS[n].description, OPERATORS[n].protected or "total"]
            for n in space.operators]
    print(_table(["operator", "arity", "meaning", "protected semantics"], rows))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``lossforge`` command."""
    parser = _Parser(prog="lossforge", description="Discover robust loss functions by genetic programming.")
    parser.add_argument("--runs-dir", default="runs", help="where run names are stored (default: runs)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("search", help="run a new search")
    p.add_argument("--space", default="survey", help="search space name or .toml file (default: survey)")
    p.add_argument("--suite", default="regression", help="suite name or .toml file (default: regression)")
    p.add_argument("--population", type=_positive_int, default=40)
    p.add_argument("--generations", type=_positive_int, default=8)
    p.add_argument("--jobs", type=_jobs, default=-1, help="worker processes (-1: all cores)")
    p.add_argument("--seed", type=_int, default=0)
    p.add_argument("--run", help="run name (runs/NAME.db) or path; default: search-<time>")
    p.add_argument("--executor", choices=["joblib", "serial"], default="joblib")
    p.add_argument("--chunk-size", type=_positive_int, default=16, help="candidates trained as one batched model")
    p.add_argument("--device", default="cpu", help="torch device for training (cpu, cuda, ...)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("resume", help="continue a stopped run")
    p.add_argument("run")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("show", help="the hall of fame of a run")
    p.add_argument("run")
    p.add_argument("--top", type=_positive_int, default=10)
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("export", help="export a loss of a run")
    p.add_argument("run")
    p.add_argument("--rank", type=_positive_int, default=1)
    p.add_argument("--format", choices=["py", "json", "latex", "sympy"], required=True)
    p.add_argument("--name", help="class name of the py export")
    p.add_argument("-o", "--output", help="write to this file instead of stdout")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("score", help="score a hand-written loss, e.g. \"(y_pred - y_real)**2\"")
    p.add_argument("expression")
    p.add_argument("--suite", default="regression")
    p.add_argument("--seeds", type=_positive_int, help="score on seeds 0..N-1 instead of the suite's seeds")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("baselines", help="score the known losses on a suite")
    p.add_argument("--suite", default="regression")
    p.add_argument("--seeds", type=_positive_int)
    p.set_defaults(func=cmd_baselines)

    p = sub.add_parser("runs", help="list runs")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("space", help="show a search space and the operators' protected semantics")
    p.add_argument("space", nargs="?", default="survey")
    p.set_defaults(func=cmd_space)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lossforge`` command."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except LossforgeError as exc:
        sys.stderr.write(f"lossforge: error: {exc}\n")
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
