"""Benchmark lossforge's scoring on this machine; the figures and their reading are in docs/benchmarks.md.

    .venv/bin/python scripts/bench.py            # ~5-7 min on 2 shared cores
    .venv/bin/python scripts/bench.py --quick    # ~1.5 min: the suite's first task only, a smaller search

Everything is measured in one run, on the same 32 candidate losses (distinct GP trees of the default space
that pass early rejection, drawn with a fixed seed), scored on the default regression suite's tasks with
its first seed:

* the one-by-one loop (each candidate trained alone with torch autograd and ``torch.optim.Adam``: the
  tasks' ``engine = "autograd"``, the way scoring worked before batching) vs one batched model (K=32) vs
  executors (joblib and dask, 1 and 2 workers, chunks of 16 as the search uses them), all on the default
  numpy engine, as throughput ratios; the numpy engine one by one as well, to separate what batching
  gives from what the engine gives; executors are warmed up first (start-up excluded), and the batched and
  executor figures are the best of three interleaved rounds (two with ``--quick``); whether their results
  are bit-identical to the batched run's, and how closely the autograd loop's scores agree;
* canonicalisation and compilation time as a share of training time;
* the FLOP limit: the training's matmul FLOPs over the measured float32 matmul rate, against the time taken;
* evaluations saved by early rejection and by the cache in a small default search;
* peak memory of this process and of its largest worker.

The summary at the end has one ``name: value`` per line. The machine is shared: the load average is printed
at the start and the end, as other processes skew every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from lossforge import compile as compile_module  # noqa: E402
from lossforge import gp  # noqa: E402
from lossforge.engine import Search, SearchConfig  # noqa: E402
from lossforge.executor import DaskExecutor, JoblibExecutor  # noqa: E402
from lossforge.expression import LossExpression  # noqa: E402
from lossforge.loss import SymbolicLoss  # noqa: E402
from lossforge.rejection import rejection_reason  # noqa: E402
from lossforge.scoring import load_suite, score_chunk, score_chunk_safe, suite_from_spec  # noqa: E402
from lossforge.space import load_space  # noqa: E402

N_CANDIDATES = 32
CHUNK = 16  # the search's default chunk size
SEED = 20240917
#: Rounds of the batched and executor measurements, interleaved so that other load on the machine hits them
#: alike; each one's shortest time counts. The loop runs once: it is the slowest, so the same disturbance
#: moves its ratios least.
ROUNDS = 3
#: No round starts this long after the benchmark's start (after two rounds), so that a busy machine still
#: sees it finish within ~8 minutes.
ROUNDS_UNTIL_S = 240


def log(text: str) -> None:
    print(text, flush=True)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def machine() -> dict[str, Any]:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    return {"nproc": os.cpu_count(), "cpu": model, "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "load_avg": " ".join(f"{x:.2f}" for x in os.getloadavg())}


def candidates(n: int, seed: int) -> tuple[list[list[Any]], int]:
    """``n`` distinct GP trees of the default space that pass early rejection (regression), and the draws."""
    toolbox, _ = gp.toolbox_for(load_space("survey"))
    random.seed(seed)
    out, seen, draws = [], set(), 0
    while len(out) < n:
        draws += 1
        expr = gp.expression_of(toolbox.individual())
        if expr.key not in seen:
            seen.add(expr.key)
            if rejection_reason(expr, {"regression"}) is None:
                out.append(list(expr.tokens))
    return out, draws


def bench_spec(quick: bool, engine: str | None = None) -> dict[str, Any]:
    """The default regression suite on its first seed (and only its first task with ``--quick``), on the
    tasks' default training engine or on ``engine``."""
    spec = load_suite("regression").spec()
    tasks = spec["tasks"][:1] if quick else spec["tasks"]
    if engine is not None:
        tasks = [{**t, "settings": {**t["settings"], "engine": engine}} for t in tasks]
    return {**spec, "seeds": spec["seeds"][:1], "tasks": tasks}


def agreement(a: list[Any], b: list[Any]) -> tuple[int, int]:
    """How many of two result lists' task scores agree to a relative 1e-3, out of how many."""
    pairs = [(x, y) for ra, rb in zip(a, b) for task in ra.raw
             for x, y in zip(ra.raw[task]["scores"], rb.raw[task]["scores"])]
    close = sum(1 for x, y in pairs if x == y or abs(x - y) <= 1e-3 * max(abs(x), abs(y)))
    return close, len(pairs)


def raw_of(results: list[Any]) -> str:
    return json.dumps([r.raw for r in results], sort_keys=True)


def _warm(spec: dict[str, Any]) -> int:
    score_chunk_safe(["mse"], spec)
    time.sleep(0.5)  # hold this worker, so that the other warm-up chunks go to the others
    return os.getpid()


def score_with(executor: Any, cands: list[list[Any]], spec: dict[str, Any]) -> tuple[float, str]:
    """Warm every worker up (start-up, imports, pool resizing and building the suite excluded, as in a
    search's later generations), then time scoring in chunks of CHUNK; returns the time and the raw results."""
    pids: set[int] = set()
    for _ in range(10):  # a worker still starting up may miss a round
        pids |= {pid for _, pid in executor.map_unordered(_warm, [(spec,)] * executor.n_workers)}
        if len(pids) >= executor.n_workers:
            break
    chunks = [cands[i:i + CHUNK] for i in range(0, len(cands), CHUNK)]
    seconds, results = timed(lambda: dict(executor.map_unordered(
        score_chunk_safe, [(chunk, spec, None, "cpu") for chunk in chunks])))
    return seconds, raw_of([r for i in range(len(chunks)) for r in results[i]])


def mlp_params(settings: dict[str, Any]) -> int:
    sizes = [1] + [settings["hidden"]] * settings["layers"] + [1]
    return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))


def flops_per_candidate(spec: dict[str, Any]) -> float:
    """Matmul FLOPs of training one candidate: forward + backward ~ 3 x 2 x params per sample and step, for
    each run (noisy, and purified when purification changes the data), task and seed."""
    suite = suite_from_spec(spec)
    total = 0.0
    for t in suite.tasks:
        s = t.task.settings()
        for seed in suite.seeds:
            runs = 2 if t.task.make_data(seed).purification_changes else 1
            total += 3 * 2 * mlp_params(s) * s["n_train"] * s["steps"] * runs
    return total


def matmul_rate(threads: int, k: int, n: int, hidden: int, seconds: float = 1.0) -> float:
    """Measured float32 GFLOP/s of the task's hidden-layer batched matmul ``[k, n, h] @ [k, h, h]``."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    x, w = torch.randn(k, n, hidden), torch.randn(k, hidden, hidden)
    for _ in range(3):
        torch.matmul(x, w)
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.matmul(x, w)
        calls += 1
    elapsed = time.perf_counter() - start
    torch.set_num_threads(previous)
    return 2 * k * n * hidden * hidden * calls / elapsed / 1e9


def compile_costs(cands: list[list[Any]]) -> dict[str, float]:
    """Mean seconds per candidate of each step from tokens to a loss module, with cold caches."""
    compile_module._compile_cached.cache_clear()
    compile_module._grad_cached.cache_clear()
    costs = {"sympy": 0.0, "key": 0.0, "compile": 0.0, "kernel": 0.0, "module": 0.0}
    for tokens in cands:
        expr = LossExpression(tokens)
        steps = {
            "sympy": lambda: expr.sympy,
            "key": lambda: expr.key,
            "compile": lambda: compile_module.compile_expr(expr.sympy),
            "kernel": lambda: compile_module.compile_value_and_grad(expr.sympy),
            "module": lambda: SymbolicLoss(expr, reduction="none", problem="regression"),
        }
        for name, step in steps.items():
            costs[name] += timed(step)[0]
    return {name: total / len(cands) for name, total in costs.items()}


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return json.dumps(value) if isinstance(value, str) else repr(value)


def search_stats(spec: dict[str, Any], quick: bool, workdir: Path) -> dict[str, int]:
    """Totals of the generations' stats of a small default search (default space and operators, joblib with
    2 workers, chunks of 16) on the benchmark's tasks, shortened to a few hundred steps."""
    steps = 100 if quick else 200
    toml = "name = 'bench'\nseeds = [0]\n" + "".join(
        f"\n[[tasks]]\nname = {_toml(t['name'])}\ntype = {_toml(t['type'])}\nsettings = {{ "
        + ", ".join(f"{k} = {_toml(steps if k == 'steps' else v)}" for k, v in t["settings"].items()) + " }\n"
        for t in spec["tasks"])
    (workdir / "bench_suite.toml").write_text(toml)
    config = SearchConfig(population=16 if quick else 24, generations=3 if quick else 5, seed=SEED,
                          suite=str(workdir / "bench_suite.toml"), jobs=2, executor="joblib", chunk_size=CHUNK)
    search = Search.create(workdir / "bench_run.db", config)
    try:
        search.run()
        gens = search.store.generations()
    finally:
        search.close()
    for g in gens:
        log("  gen {}: trained {evaluated}, cache hits {cache_hits}, rejected {rejected}".format(g.gen, **g.stats))
    totals = {key: sum(int(g.stats[key]) for g in gens) for key in ("evaluated", "cache_hits", "rejected")}
    totals["generations"] = len(gens)
    return totals


def shutdown_loky_pool() -> None:
    """End the shared loky workers, so that they are reaped and count in RUSAGE_CHILDREN."""
    from joblib.externals.loky import get_reusable_executor

    # Other arguments than the executor's make loky shut its pool down (waiting for the workers) and hand
    # back a fresh one that has started no process yet.
    get_reusable_executor(max_workers=1).shutdown(wait=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the suite's first task only and a smaller search")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    info = machine()
    log("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()))

    seconds, (cands, draws) = timed(lambda: candidates(N_CANDIDATES, SEED))
    log(f"candidates: {len(cands)} passing early rejection out of {draws} draws ({seconds:.1f} s)")
    spec = bench_spec(args.quick)
    log(f"workload: tasks {[t['name'] for t in spec['tasks']]}, seeds {spec['seeds']}, "
        f"{N_CANDIDATES} candidates")

    # In-process: one-by-one loops (autograd engine: the baseline; numpy engine) vs one batched model.
    autograd_spec = bench_spec(args.quick, engine="autograd")
    score_chunk(cands[:1], autograd_spec)  # warm caches and code paths
    score_chunk(cands[:1], spec)
    loop_s, loop_results = timed(lambda: [r for c in cands for r in score_chunk([c], autograd_spec)])
    log(f"loop (one by one, 1 process, autograd engine): {loop_s:7.1f} s  {N_CANDIDATES / loop_s:6.2f} candidates/s"
        f"  (load {os.getloadavg()[0]:.2f})")
    numpy_loop_s, numpy_loop_results = timed(lambda: [r for c in cands for r in score_chunk([c], spec)])
    log(f"loop (one by one, 1 process, numpy engine):    {numpy_loop_s:7.1f} s  "
        f"{N_CANDIDATES / numpy_loop_s:6.2f} candidates/s  (load {os.getloadavg()[0]:.2f})")

    # One batched model in-process, and executors with chunks of 16, in interleaved rounds.
    executors = {"joblib-1": JoblibExecutor(1), "joblib-2": JoblibExecutor(2)}
    best: dict[str, float] = {}
    identical: dict[str, bool] = {}
    try:
        executors["dask-1"] = DaskExecutor(n_workers=1)
        executors["dask-2"] = DaskExecutor(n_workers=2)
        for round_no in range(1, (2 if args.quick else ROUNDS) + 1):
            if round_no > 2 and time.perf_counter() - started > ROUNDS_UNTIL_S:
                log(f"round {round_no} skipped: the benchmark has run for {ROUNDS_UNTIL_S} s")
                break
            seconds, results = timed(lambda: score_chunk(cands, spec))
            figures = {"batched": seconds}
            if round_no == 1:
                reference = raw_of(results)
                identical["numpy-loop"] = raw_of(numpy_loop_results) == reference
                close, total = agreement(loop_results, results)
            for name, executor in executors.items():
                figures[name], raw = score_with(executor, cands, spec)
                identical[name] = identical.get(name, True) and raw == reference
            best = {name: min(t, best.get(name, t)) for name, t in figures.items()}
            log(f"round {round_no} (load {os.getloadavg()[0]:.2f}): "
                + ", ".join(f"{name} {t:.1f} s" for name, t in figures.items()))
    finally:
        # Last started, first closed: each local cluster restores dask's log level as it was at its start.
        for executor in reversed(executors.values()):
            executor.close()
    batched_s = best["batched"]
    for name, seconds in best.items():
        log(f"{name + ':':10s} {seconds:6.1f} s  {N_CANDIDATES / seconds:6.2f} candidates/s  "
            f"({loop_s / seconds:.2f}x the loop)")
    log("results identical to the batched run: " + ", ".join(f"{k}={v}" for k, v in identical.items()))
    log(f"autograd loop vs numpy engine: {close} of {total} task scores agree to a relative 1e-3 (chaotic "
        "losses amplify float32 rounding differences)")

    # Compilation and canonicalisation next to training.
    costs = compile_costs(cands)
    overhead = sum(costs.values())
    train_per_candidate = batched_s / N_CANDIDATES
    log("per candidate: " + ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in costs.items())
        + f"; training (batched) {train_per_candidate * 1e3:.0f} ms")

    # FLOP limit.
    flops = flops_per_candidate(spec)
    task = suite_from_spec(spec).tasks[0].task
    k, n, hidden = 2 * CHUNK, task.n_train, task.hidden  # a chunk's models (noisy + purified runs)
    rate1 = matmul_rate(1, k, n, hidden)
    threads = os.cpu_count() or 1
    rate_threads = matmul_rate(threads, k, n, hidden)
    # The way workers use the cores: one single-threaded process each, all at once (the pool is warm).
    rate_procs = sum(r for _, r in JoblibExecutor(threads).map_unordered(matmul_rate, [(1, k, n, hidden)] * threads))
    limit_s = flops / (rate1 * 1e9)
    log(f"FLOPs per candidate {flops / 1e9:.2f} GFLOP (MLP {mlp_params(task.settings())} params, "
        f"{n} samples); matmul [{k},{n},{hidden}]@[{k},{hidden},{hidden}]: {rate1:.1f} GFLOP/s on 1 thread, "
        f"{rate_threads:.1f} GFLOP/s on {threads} threads of one process, {rate_procs:.1f} GFLOP/s on {threads} "
        f"single-threaded processes; FLOP-limit time {limit_s * 1e3:.1f} ms vs measured "
        f"{train_per_candidate * 1e3:.0f} ms per candidate")

    # Savings of rejection and cache in a small search.
    with tempfile.TemporaryDirectory() as tmp:
        seconds, stats = timed(lambda: search_stats(spec, args.quick, Path(tmp)))
    proposed = stats["evaluated"] + stats["cache_hits"] + stats["rejected"]
    log(f"search ({stats['generations']} generations, {seconds:.0f} s): {proposed} candidates proposed, "
        f"{stats['evaluated']} trained, {stats['cache_hits']} cache hits, {stats['rejected']} rejected")

    shutdown_loky_pool()
    self_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    child_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    log(f"peak memory: this process {self_mb:.0f} MB, largest worker {child_mb:.0f} MB")
    log(f"total {time.perf_counter() - started:.0f} s; load average now {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

    summary = {
        "executor_vs_loop": loop_s / best["joblib-2"],
        "batched_vs_loop": loop_s / batched_s,
        "batched_vs_numpy_loop": numpy_loop_s / batched_s,
        "joblib_2v1": best["joblib-1"] / best["joblib-2"],
        "dask_2v1": best["dask-1"] / best["dask-2"],
        "limit_ratio": train_per_candidate / limit_s,
        "compile_share": overhead / train_per_candidate,
        "rejected_share": stats["rejected"] / proposed,
        "cache_hit_share": stats["cache_hits"] / proposed,
        "peak_mem_mb": self_mb + child_mb,
    }
    log("\n# summary")
    for name, value in summary.items():
        log(f"{name}: {value:.3f}" if name != "peak_mem_mb" else f"{name}: {value:.0f}")


if __name__ == "__main__":
    sys.exit(main())
