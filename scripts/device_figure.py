#!/usr/bin/env python
"""How many losses per second does a search evaluate on a device? One search, one figure.

Runs a default search (``lossforge.search``, suite ``robust`` unless told) on ``--device`` with a large
``--chunk-size`` (the models of a chunk train as one batched model, so a GPU wants hundreds), then reads
the run file back and reports the losses it screened and trained in full per second of the run's own
elapsed time (baselines, confirmation and validation included, as a user waits for them). ``--compare``
reads other run files, e.g. the 2-core CPU searches of ``scripts/search_quality.py``, and reports the same
figures for them, so the ratio is of one definition on both sides. Writes ``device_figure.json`` to
``--out``.

    python scripts/device_figure.py --device cuda --chunk-size 256 --population 256 --out runs/gpu \\
        --compare runs/search_quality/gp-seed0.db
    python scripts/device_figure.py --device cpu --suite quick --time 1m --out /tmp/fig   # a smoke test
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

import lossforge
from lossforge.atomic import write_atomic
from lossforge.cli import parse_duration
from lossforge.errors import LossforgeError


def figure(run: Path) -> dict[str, Any]:
    """Screened and fully trained losses of a run file, its elapsed seconds and both rates per second."""
    result = lossforge.open_run(run)
    counts = result.counts()
    elapsed = result.elapsed_s
    settings = {k: result.config.get(k) for k in ("device", "chunk_size", "jobs", "population", "generations")}
    return {"run": str(run), "status": result.status, "suite": result.suite, "elapsed_s": elapsed,
            "screened": counts["screened"], "trained": counts["trained"], **settings,
            "screened_per_s": counts["screened"] / elapsed if elapsed > 0 else None,
            "trained_per_s": counts["trained"] / elapsed if elapsed > 0 else None}


def device_name(device: str) -> str:
    """What the device is, in words (the GPU's name for CUDA, the processor for the CPU)."""
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(torch.device(device))
    return platform.processor() or platform.machine()


def line(label: str, fig: dict[str, Any]) -> str:
    rate = f"{fig['screened_per_s']:.2f} screened/s, {fig['trained_per_s']:.2f} full/s" \
        if fig["screened_per_s"] is not None else "no elapsed time recorded"
    return (f"{label}: {fig['screened']} screened, {fig['trained']} in full in {fig['elapsed_s']:.0f} s "
            f"({rate}; device {fig['device']}, chunks of {fig['chunk_size']}, "
            f"{'all cores' if fig['jobs'] == -1 else fig['jobs']} workers)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="torch device to search on (default: cuda where available, else cpu)")
    parser.add_argument("--chunk-size", type=int, default=256, help="models per batched training (default 256)")
    parser.add_argument("--population", type=int, default=None,
                        help="population (default: derived from the suite's budget, as in a plain search)")
    parser.add_argument("--generations", type=int, default=None,
                        help="generations (default: derived from the suite's budget, as in a plain search)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="worker processes (default 1: one process keeps one GPU busy with large chunks)")
    parser.add_argument("--suite", default="robust", help="suite (default robust)")
    parser.add_argument("--seed", type=int, default=0, help="search seed (default 0)")
    parser.add_argument("--time", type=parse_duration, default=None,
                        help="stop before a generation that would end past this (e.g. 5m)")
    parser.add_argument("--compare", nargs="*", default=[], help="run files whose figures to report beside")
    parser.add_argument("--out", required=True, help="output directory (the run file and device_figure.json)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    run = out / f"device-{torch.device(args.device).type}-seed{args.seed}.db"
    try:
        compared = [figure(Path(p)) for p in args.compare]  # bad paths fail before the search, not after
        if run.exists():  # an unfinished run is resumed; a finished one is only read again
            if lossforge.open_run(run).status != "finished":
                lossforge.resume(run, quiet=True)
        else:
            out.mkdir(parents=True, exist_ok=True)
            lossforge.search(run=run, quiet=True, suite=args.suite, seed=args.seed, device=args.device,
                             chunk_size=args.chunk_size, jobs=args.jobs, population=args.population,
                             generations=args.generations, time_s=args.time)
    except LossforgeError as exc:
        print(f"device_figure: {exc}", file=sys.stderr)
        return 2
    here = {**figure(run), "device_name": device_name(args.device), "torch": torch.__version__}
    print(line(f"{args.device} ({here['device_name']})", here))
    for fig in compared:
        print(line(fig["run"], fig))
        if here["screened_per_s"] and fig["screened_per_s"]:
            print(f"  ratio: {here['screened_per_s'] / fig['screened_per_s']:.2f}x screened/s, "
                  f"{here['trained_per_s'] / fig['trained_per_s']:.2f}x full/s")
    write_atomic(out / "device_figure.json", json.dumps({"device": here, "compared": compared}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
