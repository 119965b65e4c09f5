#!/usr/bin/env python
"""A small mutation test of lossforge's core modules: does the test suite notice a change of behaviour?

Each mutant is one small, realistic change (a file, exact original snippets, their replacements, the tests
that should notice). For each mutant the package and tests are copied to a scratch directory, the change
is applied there (the source tree is never touched), and the mutant's test files run with ``pytest -x -q``
against the copy. A failing run kills the mutant; a passing one lets it survive.

    python scripts/mutate.py --list                 # the mutants, and whether each snippet is found once
    python scripts/mutate.py --check                # only verify every snippet (fast; tests/test_mutate_script.py)
    python scripts/mutate.py --only 3 --only 7      # run some
    python scripts/mutate.py --jobs 2 --json /tmp/mut.json

Test file names may be glob patterns; a name that matches no file is dropped, so the same list measures
the suite before and after the pinning test files (``PIN_FILES``) exist. A mutant whose snippet is not
found exactly once in its file (the code moved on) is refused with one line, never silently skipped.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COPIED = ("lossforge", "tests", "search_spaces", "scripts", "pyproject.toml")


@dataclass(frozen=True)
class Mutant:
    file: str
    edits: tuple[tuple[str, str], ...]  # (exact original snippet, replacement), each found exactly once
    description: str
    tests: tuple[str, ...]
    #: why the mutant cannot change behaviour, when it was judged equivalent
    equivalent: str | None = None


#: The test files that pin each module's rules (run first, so that ``-x`` stops a killed mutant early).
PIN_FILES = {
    "lossforge/loss.py": ("tests/test_pins_loss.py",),
    "lossforge/scoring.py": ("tests/test_pins_fitness.py",),
    "lossforge/tasks/base.py": ("tests/test_pins_fitness.py",),
    "lossforge/rejection.py": ("tests/test_pins_rejection.py",),
    "lossforge/engine.py": ("tests/test_pins_engine.py", "tests/test_pins_more.py"),
    "lossforge/evaluator.py": ("tests/test_pins_engine.py", "tests/test_evaluator.py"),
    "lossforge/selection.py": ("tests/test_pins_engine.py", "tests/test_pins_more.py"),
    "lossforge/lowering.py": ("tests/test_lowering.py",),
    "lossforge/backends/python_source.py": ("tests/test_pins_export.py", "tests/test_lowering_exports.py"),
    "lossforge/backends/torch_closure.py": ("tests/test_lowering.py",),
    "lossforge/backends/numpy_kernel.py": ("tests/test_lowering.py",),
    "lossforge/backends/sympy_plain.py": ("tests/test_pins_export.py",),
    "lossforge/atomic.py": ("tests/test_trust_atomic.py",),
    "lossforge/runfile/store.py": ("tests/test_pins_storage.py", "tests/test_runfile_contract.py"),
    "lossforge/runfile/lease.py": ("tests/test_runfile_lease.py",),
    "lossforge/export.py": ("tests/test_pins_export.py",),
    "lossforge/numpy_mlp.py": ("tests/test_pins_trainers.py",),
    "lossforge/models.py": ("tests/test_pins_tasks.py", "tests/test_pins_trainers.py"),
    "lossforge/training.py": ("tests/test_pins_trainers.py", "tests/test_training.py"),
}


def m(file: str, old: str, new: str, description: str, *tests: str, more: tuple = (), equivalent: str | None = None):
    pins = PIN_FILES.get(file, ("tests/test_pins_tasks.py",) if file.startswith("lossforge/tasks/") else ())
    return Mutant(file, ((old, new), *more), description, (*pins, *tests), equivalent)


SYM, SEARCH, CACHE, STORE = "tests/test_symbolic.py", "tests/test_search.py", "tests/test_cache_rejection.py", "tests/test_storage.py"
REG, CLS, PROC, NPMLP = "tests/test_regression.py", "tests/test_classification.py", "tests/test_procedures.py", "tests/test_numpy_mlp.py"
BATCH, BASE = "tests/test_batch_independence.py", "tests/test_baselines.py"
EVAL = "tests/test_evaluator.py"

MUTANTS: list[Mutant] = [
    # --- operators -----------------------------------------------------------------------------------
    m("lossforge/operators.py", "torch.where(b < 0, -eps, eps)", "torch.where(b <= 0, -eps, eps)",
      "protected divide by exactly 0 uses -eps instead of +eps", SYM),
    m("lossforge/operators.py", "return torch.sqrt(torch.clamp(torch.as_tensor(a).abs(), min=SQRT_EPS))",
      "return torch.sqrt(torch.clamp(torch.as_tensor(a), min=SQRT_EPS))",
      "protected sqrt of a negative clamps instead of taking |a|", SYM),
    m("lossforge/operators.py", "return torch.log(torch.clamp(torch.as_tensor(a).abs(), min=LOG_EPS))",
      "return torch.log(torch.clamp(torch.as_tensor(a), min=LOG_EPS))",
      "protected log of a negative clamps instead of taking |a|", SYM),
    m("lossforge/operators.py", "da * np.where(a <= _EXP_MAX32, value, np.float32(0))", "da * value",
      "numpy exp derivative not cut above the clamp", SYM, NPMLP),
    # --- expression / canonical forms -------------------------------------------------------------------
    m("lossforge/expression.py", "e.exp.is_Integer and e.exp.is_even and", "e.exp.is_Integer and",
      "canonical sign rule applied to odd powers ((a-b)**3 and (b-a)**3 share a key)", SYM),
    m("lossforge/expression.py", "_KEY_DIGITS = 6", "_KEY_DIGITS = 3",
      "key rounding at 3 instead of 6 significant digits", SYM),
    m("lossforge/expression.py", "floats = {f: c for f in self.canonical.atoms(sympy.Float)}",
      "floats = {}", "structure key keeps the constants", SYM, SEARCH),
    # --- loss ---------------------------------------------------------------------------------------------
    m("lossforge/loss.py", "        return per_sample.mean()\n", "        return per_sample.mean(dim=0)\n",
      "reduction='mean' over dimension 0 only", SYM, CLS),
    m("lossforge/loss.py", "per_sample = terms.sum(dim=1)", "per_sample = terms.mean(dim=1)",
      "classification loss averaged over classes instead of summed", SYM, CLS),
    m("lossforge/loss.py", "        y_pred = torch.softmax(input, dim=1)\n        log_p = torch.log_softmax(input, dim=1)",
      "        y_pred = torch.softmax(input, dim=-1)\n        log_p = torch.log_softmax(input, dim=-1)",
      "softmax over the last dimension instead of the class dimension", SYM, CLS),
    # --- scoring / fitness ---------------------------------------------------------------------------------
    m("lossforge/scoring.py", "log_total += t.weight * (math.log(norm) if norm > 0 else -math.inf)",
      "log_total += t.weight * norm", "fitness: arithmetic instead of geometric mean of task scores", SEARCH,
      more=(("return (math.exp(log_total / weights) if weights else 0.0), summary",
             "return (log_total / weights if weights else 0.0), summary"),)),
    m("lossforge/scoring.py", "t.task.normalize(s, r) if st == \"complete\" else 0.0",
      "t.task.normalize(s, sum(ref[\"scores\"]) / len(ref[\"scores\"])) if st == \"complete\" else 0.0",
      "reference normalisation not paired by seed (mean reference score)", SEARCH),
    m("lossforge/scoring.py", "(math.log(norm) if norm > 0 else -math.inf)", "(math.log(norm) if norm > 0 else 0.0)",
      "a failed task is ignored instead of zeroing the fitness", SEARCH),
    m("lossforge/scoring.py", "log_total += t.weight * (", "log_total += 1.0 * (",
      "task weights ignored in the fitness", SEARCH),
    m("lossforge/scoring.py", "scores = [s for s, st in zip(mine[\"scores\"], mine[\"statuses\"]) if st == \"complete\"]",
      "scores = list(mine[\"scores\"])", "a task's summary score averages failed seeds too", SEARCH),
    m("lossforge/tasks/base.py", "return reference_score / score if score < 0 else 0.0",
      "return score / reference_score if score < 0 else 0.0", "error scores normalised upside down", SEARCH, REG),
    # --- rejection -------------------------------------------------------------------------------------------
    m("lossforge/rejection.py", "if not after > before + 0.05 * abs(before) + 1e-3:", "if not after > before:",
      "descent check accepts any improvement", CACHE),
    m("lossforge/rejection.py", "text = \",\".join(f\"{v:.6g}\"", "text = \",\".join(f\"{v:.2g}\"",
      "gradient fingerprint at 2 significant digits (different losses merge)", CACHE),
    m("lossforge/rejection.py", "if len(reasons) == len(problems):", "if reasons:",
      "mixed suite rejects when one problem type rejects", CACHE),
    m("lossforge/rejection.py", "if grad.norm().item() > EXPLODING_GRAD_NORM:", "if grad.norm().item() > EXPLODING_GRAD_NORM * 1e6:",
      "exploding probe gradients not rejected", CACHE),
    # --- engine ------------------------------------------------------------------------------------------------
    m("lossforge/engine.py", "), fingerprint if rec.generation <= done else None, finished=",
      "), None, finished=", "resume without the gradient fingerprints (a twin is trained again)", SEARCH, CACHE),
    m("lossforge/selection.py", "elite = tools.selBest(population, min(self.elite, len(population) - 1))",
      "elite = []", "tournament elitism removed", SEARCH),
    m("lossforge/evaluator.py", "twin = self.fingerprints.get(fingerprint)", "twin = None",
      "gradient twins trained instead of aliased", CACHE),
    m("lossforge/evaluator.py", "                if res.failed:  # a loss that cannot train", "                if False:  # a loss that cannot train",
      "a candidate whose every task failed is recorded complete", SEARCH, CACHE),
    m("lossforge/engine.py", "random.seed(gp.derive_seed(\"generation\", self.config.seed, generation))",
      "random.seed(gp.derive_seed(\"generation\", self.config.seed, 0))", "every generation seeded alike", SEARCH),
    m("lossforge/selection.py", "return tools.selNSGA2(population + offspring, len(population))",
      "return tools.selNSGA2(offspring, len(population))", "NSGA-II drops the parents from survival", SEARCH),
    m("lossforge/engine.py", "int(budget // (n_workers * bytes_per_model))", "int(budget // bytes_per_model)",
      "memory chunk cap ignores the number of workers", "tests/test_executor.py", SEARCH),
    # --- storage -------------------------------------------------------------------------------------------------
    m("lossforge/runfile/store.py", "e.origin or origin", "origin", "a re-imported cache entry loses its first origin",
      STORE, CACHE),
    m("lossforge/runfile/store.py", "\"fitness\": \"fitness DESC, complexity IS NULL, complexity ASC, id ASC\"",
      "\"fitness\": \"fitness DESC, id ASC\"", "best(): fitness ties no longer go to the simpler loss", STORE, SEARCH),
    # --- export --------------------------------------------------------------------------------------------------
    m("lossforge/export.py", "        return expression.latex() + \"\\n\"", "        return expression.formula() + \"\\n\"",
      "LaTeX export writes the plain formula", SEARCH),
    m("lossforge/export.py", "return sympy.srepr(plain_sympy(expression.sympy))", "return str(plain_sympy(expression.sympy))",
      "sympy export writes str instead of srepr", SEARCH),
    m("lossforge/backends/python_source.py", "texts.append(repr(float(program.constants[ins.param])))",
      "texts.append(repr(round(float(program.constants[ins.param]), 4)))",
      "exported .py rounds constants to 4 decimals", SEARCH, "tests/test_integrations.py"),
    # --- tasks -------------------------------------------------------------------------------------------------------
    m("lossforge/tasks/regression.py", "return gaussian + np.where(is_outlier, offset, 0.0)",
      "return gaussian + np.where(is_outlier, -offset, 0.0)", "outliers drawn on the other side", REG),
    m("lossforge/tasks/regression.py", "score = finite_or_worst(-0.5 * (noisy + purified), worst)",
      "score = finite_or_worst(-noisy, worst)", "regression score ignores the purified run", REG),
    m("lossforge/tasks/regression.py", "values += [loc, scale, loc if abs(loc) > z * std_error else 0.0]",
      "values += [loc, scale, loc]", "purification subtracts insignificant medians too", REG),
    m("lossforge/tasks/regression.py", "return 0.5 * self.lr * (1.0 + math.cos(math.pi * step / steps))",
      "return 0.5 * self.lr * (1.0 + math.cos(math.pi * (step + 1) / steps))",
      "cosine schedule shifted by one step", REG, NPMLP),
    m("lossforge/tasks/classification.py", "self.noise_rate, generator(seed, \"noise\"))",
      "self.noise_rate, generator(seed, \"order\"))", "label noise drawn from another random stream", CLS, BATCH),
    m("lossforge/tasks/data.py", "offset = torch.randint(1, n_classes, (n_flip,), generator=generator)",
      "offset = torch.randint(0, n_classes, (n_flip,), generator=generator)",
      "symmetric noise may 'flip' a label to its own class", CLS),
    m("lossforge/tasks/classification.py", "            elif not finite[k]:\n", "            elif False:\n",
      "non-finite test outputs not failed", CLS),
    m("lossforge/tasks/adversarial.py", "part = (part + self.epsilon * grad.sign()).clamp(-self.epsilon, self.epsilon)",
      "part = part + self.epsilon * grad.sign()", "free adversarial perturbation not clamped to the eps-ball", PROC),
    m("lossforge/tasks/adversarial.py", "torch.minimum(torch.maximum(x_adv, x - epsilon), x + epsilon).clamp(0.0, 1.0)",
      "torch.minimum(torch.maximum(x_adv, x - epsilon), x + epsilon)", "PGD projection leaves [0, 1]", PROC),
    m("lossforge/tasks/adversarial.py", "self.robust_weight * metrics[\"acc_pgd\"]", "self.robust_weight * metrics[\"acc_fgsm\"]",
      "adversarial score weighs FGSM instead of PGD accuracy", PROC),
    m("lossforge/tasks/augment.py", "(metrics[\"acc_clean\"] + metrics[\"acc_noise\"] + metrics[\"acc_rotate\"]) / 3.0",
      "(metrics[\"acc_clean\"] + metrics[\"acc_noise\"] + metrics[\"acc_noise\"]) / 3.0",
      "augment score counts noise accuracy twice, rotation never", PROC),
    m("lossforge/tasks/regularize.py", "return one_hot * (1.0 - smoothing) + smoothing / n_classes",
      "return one_hot * (1.0 - smoothing) + smoothing / (n_classes - 1)", "label smoothing rows no longer sum to 1", PROC),
    m("lossforge/tasks/regularize.py", "penalty=-self.entropy_weight * entropy(outputs).mean(dim=1)",
      "penalty=self.entropy_weight * entropy(outputs).mean(dim=1)", "entropy penalty rewards confidence", PROC),
    # --- trainers and models ---------------------------------------------------------------------------------------------
    m("lossforge/training.py", "(norms > self.max_grad_norm)", "(norms > 10 * self.max_grad_norm)",
      "exploding-gradient threshold raised tenfold", NPMLP, REG),
    m("lossforge/training.py", "                    p.grad[self.ledger.dead_tensor.to(p.grad.device)] = 0.0\n",
      "                    pass\n", "failed models keep training on their gradients (autograd)", NPMLP, REG, BATCH),
    m("lossforge/models.py", "keep = (torch.rand(x.shape[1:], generator=generator) >= p)",
      "keep = (torch.rand(x.shape, generator=generator) >= p)", "dropout masks drawn per model (no common random numbers)",
      PROC, BATCH),
    m("lossforge/models.py", "self.running_var.lerp_(var.detach() * count / max(count - 1, 1), self.momentum)",
      "self.running_var.lerp_(var.detach(), self.momentum)", "batch norm running variance biased", PROC),
    m("lossforge/models.py", "return x * keep * (keep.numel() / keep.sum().clamp_min(1.0))", "return x * keep",
      "DropBlock survivors not rescaled", PROC),
    m("lossforge/numpy_mlp.py", "self.exp_avg_sq *= np.float32(beta2)", "self.exp_avg_sq *= np.float32(0.99)",
      "numpy Adam with another beta2", NPMLP),
    m("lossforge/numpy_mlp.py", "summed = kernel is not None and loss.reduction == \"sum\"", "summed = False",
      "numpy trainer averages a reduction='sum' loss", NPMLP),
    m("lossforge/training.py", "self.fail(int(k), f\"non-finite loss value at step {step}\")",
      "self.fail(int(k), f\"non-finite loss value at step {step + 1}\")",
      "the ledger reports another step for a non-finite loss", NPMLP),
    m("lossforge/numpy_mlp.py", "            self.grad[self.dead] = 0.0\n", "            pass\n",
      "failed models keep training on their gradients (numpy)", NPMLP, REG),
    m("lossforge/training.py", "retain_graph=penalty is not None)\n        self.check_gradients()\n        if penalty is not None:",
      "retain_graph=penalty is not None)\n        if penalty is not None:",
      "the penalty's gradient reaches the gradient check (and failed models)", "tests/test_training.py", PROC,
      more=(("            torch.where(alive, penalty, torch.zeros_like(penalty)).sum().backward()\n",
             "            torch.where(alive, penalty, torch.zeros_like(penalty)).sum().backward()\n        self.check_gradients()\n"),)),
    # --- evaluator, selection (the search loop's strategies) ----------------------------------------------------------
    m("lossforge/engine.py", "promoted = set(sorted(ranked, key=lambda k: -ranked[k])[:n_promote])",
      "promoted = set(sorted(ranked, key=lambda k: ranked[k])[:n_promote])",
      "racing promotes the worst screened losses instead of the best", EVAL, SEARCH),
    m("lossforge/engine.py", "cap = min(full) if full else math.inf", "cap = math.inf",
      "a loss left at the screening rung may outrank a promoted loss (no cap)", EVAL, SEARCH),
    m("lossforge/evaluator.py", "return \"twin\" if fingerprint in self.fingerprints else None", "return None",
      "novelty filter lets a gradient twin of a scored loss through (no redraw)", CACHE, SEARCH),
    m("lossforge/engine.py", "                if why is None and fingerprint in fingerprints:\n",
      "                if False:\n", "novelty filter lets two twins into one generation", CACHE, SEARCH),
    m("lossforge/evaluator.py", "return seeds * fidelity.steps_fraction", "return seeds",
      "a screening's cost ignores its share of the training (budget overcharged)", EVAL),
    m("lossforge/selection.py", "return (fitness, float(expr.complexity))", "return (fitness, -float(expr.complexity))",
      "NSGA-II prefers complex losses", "tests/test_quality.py"),
    # --- run file store --------------------------------------------------------------------------------------------------
    m("lossforge/runfile/lease.py", "if self.lost or row is None or row[0] != self.token:", "if self.lost:",
      "a store whose lease was taken over keeps writing", "tests/test_runfile_contract.py"),
    m("lossforge/runfile/store.py", "if (row[\"status\"], row[\"fitness\"]) != (state.value, fitness):", "if False:",
      "a different result for a stored key is silently accepted (results not immutable)", STORE),
    m("lossforge/runfile/store.py", "            return int(row[\"id\"])\n        cursor = conn.execute(",
      "        cursor = conn.execute(", "recording an equal result again is not idempotent", STORE, SEARCH),
    # --- lowering, export, atomic writes ---------------------------------------------------------------------------------
    m("lossforge/lowering.py", "            constants.append(float(e))\n", "            constants.insert(0, float(e))\n",
      "lowering's constant list in reverse order of use", "tests/test_lowering_exports.py", SYM, "tests/test_quality.py"),
    m("lossforge/export.py", "return repr(\"\\n\".join(lines) + \"\\n\")", "return '\"\"\"' + \"\\n\".join(lines) + '\\n\"\"\"'",
      "exported .py docstring written raw instead of through repr", "tests/test_trust_codegen.py"),
    m("lossforge/atomic.py", "                os.link(tmp, path)  # atomic", "                os.replace(tmp, path)  # atomic",
      "no-clobber write replaces a file that appeared meanwhile", "tests/test_trust_cli.py"),
    m("lossforge/atomic.py", "            os.unlink(tmp)\n        except FileNotFoundError:", "            pass\n        except FileNotFoundError:",
      "the temporary file is left behind", "tests/test_trust_cli.py"),
    m("lossforge/loss.py", "y_pred = torch.softmax(input, dim=1) if", "y_pred = torch.softmax(input, dim=-1) if",
      "the baselines' class probabilities softmax over the last dimension", "tests/test_pins_more.py", BASE),
]


@dataclass
class Outcome:
    n: int
    file: str
    description: str
    status: str  # killed | survived | timeout | error (snippet not found)
    seconds: float
    tests: list[str] = field(default_factory=list)
    tail: str = ""
    equivalent: str | None = None


def resolve_tests(root: Path, patterns: tuple[str, ...]) -> list[str]:
    out: list[str] = []
    for pattern in patterns:
        for path in sorted(glob.glob(str(root / pattern))):
            rel = str(Path(path).relative_to(root))
            if rel not in out:
                out.append(rel)
    return out


def check(mutant: Mutant, root: Path = ROOT) -> str | None:
    """None if every snippet of ``mutant`` occurs exactly once in its file, else what is wrong."""
    if not (root / mutant.file).is_file():
        return f"{mutant.file} does not exist"
    text = (root / mutant.file).read_text(encoding="utf-8")
    if not resolve_tests(root, mutant.tests):
        return "none of its test files exists"
    for old, new in mutant.edits:
        count = text.count(old)
        if count != 1:
            return f"snippet found {count} times: {old[:60]!r}"
        text = text.replace(old, new, 1)
    if mutant.file.endswith(".py"):
        try:  # a mutant that does not parse is killed by any import: it would measure nothing
            compile(text, mutant.file, "exec")
        except SyntaxError as exc:
            return f"the mutated file does not parse (line {exc.lineno}: {exc.msg})"
    return None


def apply(mutant: Mutant, root: Path) -> None:
    path = root / mutant.file
    text = path.read_text(encoding="utf-8")
    for old, new in mutant.edits:
        text = text.replace(old, new, 1)
    path.write_text(text, encoding="utf-8")


def run_one(n: int, mutant: Mutant | None, timeout: float, scratch: Path, tests: list[str] | None = None) -> Outcome:
    """Run ``mutant``'s tests on a mutated copy (``mutant=None``: the unmutated baseline, on ``tests``)."""
    if mutant is None:
        mutant = Mutant("(none)", (), "baseline: the tests on the unmutated code", ())
    else:
        tests = resolve_tests(ROOT, mutant.tests)
        problem = check(mutant)
        if problem is not None:
            return Outcome(n, mutant.file, mutant.description, "error", 0.0, tests, problem, mutant.equivalent)
    work = scratch / str(n)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    for name in COPIED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, work / name, ignore=ignore)
        elif source.exists():
            shutil.copy2(source, work / name)
    if mutant.edits:
        apply(mutant, work)
    env = {**os.environ, "PYTHONPATH": str(work), "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    start = time.perf_counter()
    try:
        proc = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=timeout)
        status = "survived" if proc.returncode == 0 else "killed"
        if proc.returncode not in (0, 1):  # collection errors, interrupted runs: still a noticed change
            status = "killed"
        tail = (proc.stdout + proc.stderr)[-600:]
    except subprocess.TimeoutExpired:
        status, tail = "timeout", f"no result within {timeout:.0f} s"
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return Outcome(n, mutant.file, mutant.description, status, time.perf_counter() - start, tests, tail,
                   mutant.equivalent)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="list the mutants and check their snippets")
    parser.add_argument("--check", action="store_true", help="only check that every snippet is found exactly once")
    parser.add_argument("--only", type=int, action="append", help="run mutant N (repeatable)")
    parser.add_argument("--jobs", type=int, default=1, help="mutants run at once (default 1)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per mutant (a timeout is reported apart, not as a kill)")
    parser.add_argument("--json", type=Path, help="write the outcomes to this JSON file")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the first run of every chosen test file on the unmutated code")
    parser.add_argument("--scratch", type=Path, default=None, help="scratch directory (default: a new temp dir)")
    args = parser.parse_args(argv)

    if args.list:
        bad = 0
        for n, mutant in enumerate(MUTANTS):
            problem = check(mutant)
            bad += problem is not None
            tests = ", ".join(Path(t).name for t in resolve_tests(ROOT, mutant.tests))
            print(f"{n:3d}  {mutant.file:34s} {mutant.description}  [{tests}]" + (f"  !! {problem}" if problem else ""))
        return 1 if bad else 0

    if args.check:
        stale = [(n, problem) for n, mutant in enumerate(MUTANTS) if (problem := check(mutant)) is not None]
        for n, problem in stale:
            print(f"mutant {n} ({MUTANTS[n].file}: {MUTANTS[n].description}): {problem}", file=sys.stderr)
        if not stale:
            print(f"all {len(MUTANTS)} mutants apply: every snippet found exactly once")
        return 1 if stale else 0

    chosen = args.only if args.only else range(len(MUTANTS))
    for n in chosen:
        if not 0 <= n < len(MUTANTS):
            parser.error(f"--only {n}: there are mutants 0..{len(MUTANTS) - 1}")
    for n in chosen:  # refuse a stale mutant before running anything: it would measure nothing
        problem = check(MUTANTS[n])
        if problem is not None:
            print(f"mutate.py: mutant {n} ({MUTANTS[n].file}: {MUTANTS[n].description}): {problem}; "
                  "update it to the code (see --check)", file=sys.stderr)
            return 2
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="lossforge-mut-"))
    if not args.no_baseline:  # a test that fails without any mutant would "kill" every mutant it runs for
        union = resolve_tests(ROOT, tuple(t for n in chosen for t in MUTANTS[n].tests))
        base = run_one(-1, None, args.timeout * 4, scratch, union)
        print(f"baseline {base.status:8s} {base.seconds:6.1f}s  {len(union)} test files on the unmutated code", flush=True)
        if base.status != "survived":
            lines = [ln for ln in base.tail.splitlines() if ln.startswith(("FAILED", "ERROR"))] or [base.tail.strip()[-200:]]
            print(f"mutate.py: the tests fail without any mutant ({lines[0]}); fix them first", file=sys.stderr)
            return 2
    outcomes: list[Outcome] = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = [pool.submit(run_one, n, MUTANTS[n], args.timeout, scratch) for n in chosen]
        for future in concurrent.futures.as_completed(futures):
            o = future.result()
            outcomes.append(o)
            print(f"{o.n:3d} {o.status:8s} {o.seconds:6.1f}s  {o.file}: {o.description}", flush=True)
    outcomes.sort(key=lambda o: o.n)
    # A timeout is reported apart and not counted as a kill: on a loaded machine it proves nothing.
    killed = sum(o.status == "killed" for o in outcomes)
    timeouts = sum(o.status == "timeout" for o in outcomes)
    errors = sum(o.status == "error" for o in outcomes)
    equivalent = sum(o.status == "survived" and o.equivalent is not None for o in outcomes)
    counted = len(outcomes) - errors
    rate = killed / counted if counted else 0.0
    rate_ne = killed / (counted - equivalent) if counted - equivalent else 0.0
    print(f"killed {killed} of {counted} ({rate:.0%}); of the non-equivalent: {rate_ne:.0%}"
          + (f"; {timeouts} timed out (not counted as killed)" if timeouts else "")
          + (f"; {errors} mutant(s) not applicable" if errors else ""))
    for o in outcomes:
        if o.status in ("survived", "timeout"):
            print(f"  {o.status} {o.n}: {o.description}" + (f"  (equivalent: {o.equivalent})" if o.equivalent else ""))
    if args.json:
        args.json.write_text(json.dumps({"killed": killed, "counted": counted, "rate": rate,
                                         "rate_non_equivalent": rate_ne,
                                         "outcomes": [asdict(o) for o in outcomes]}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
