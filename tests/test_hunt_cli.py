"""Bad values on the command line and in the API, and the loss's numerics at the protected operators'
guard boundaries: one clear line (exit 2) or a typed error, nothing created or changed; the torch closure,
SymbolicLoss and the exported ``.py`` agree bit for bit, signed zeros included."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import lossforge
from lossforge.cli import main
from lossforge.engine import MAX_GENERATIONS, SearchConfig
from lossforge.errors import ConfigError, RunError
from lossforge.expression import LossExpression
from lossforge.loss import SymbolicLoss
from lossforge.scoring import load_suite
from tests.conftest import TINY_SUITE, exported_class

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")

TINY_SEARCH = ["--suite", TINY_SUITE, "--population", "4", "--generations", "1", "--quiet", "--executor", "serial"]


def _cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str]:
    try:
        code = main(list(args))
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    return code, capsys.readouterr().err


def _one_line(err: str, fragment: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and fragment in lines[0] and "Traceback" not in err, err


def test_an_empty_run_name_is_refused_not_replaced_by_a_fresh_one(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    # Before: --run '' (a script's unset variable) started a search under search-<time>, as if no name was given
    code, err = _cli(capsys, "--runs-dir", str(tmp_path), "search", "--run", "", *TINY_SEARCH)
    assert code == 2
    _one_line(err, "invalid run name ''")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RunError, match="invalid run name"):
        lossforge.search(run="", runs_dir=tmp_path, suite=TINY_SUITE, population=4, generations=1, quiet=True,
                         executor="serial")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, fragment", [
    (["score", "y_pred", "--suite", TINY_SUITE, "--against", ""], "--against names no baseline"),  # was ignored
    (["score", "y_pred", "--suite", TINY_SUITE, "--against", "  "], "--against names no baseline"),
    (["show", "found", "--format", "csv", "--json"], "not allowed with argument --format"),  # --json won silently
    (["export", "found", "--format", "py", "-o", ""], "-o names no file"),  # printed to stdout instead
    (["search", "--device", "meta", *TINY_SEARCH], "'meta' holds no values"),  # a run left, a long reference error
    (["search", "--tensorboard", "", "--run", "tb", *TINY_SEARCH], "--tensorboard names no directory"),  # ignored
    (["diagnose", "(y_pred - y_real)**2", "--plot", ""], "--plot names no file"),  # was silently no plot
    (["diagnose", "my-run"], "no run 'my-run' in"),  # was "unknown name 'my' at column 1" alone
    (["diagnose", "y_pred + x"], "unknown name 'x' at column 10"),  # an expression's error stays as it was
])
def test_empty_or_conflicting_values_get_one_line_and_exit_2(tiny_run: Path, capsys: pytest.CaptureFixture,
                                                             args: list[str], fragment: str) -> None:
    before = {p.name: p.read_bytes() for p in tiny_run.parent.iterdir() if p.suffix == ".db"}
    code, err = _cli(capsys, "--runs-dir", str(tiny_run.parent), *args)
    assert code == 2
    _one_line(err, fragment)
    assert {p.name: p.read_bytes() for p in tiny_run.parent.iterdir() if p.suffix == ".db"} == before


def test_device_meta_is_a_config_error_in_the_api(tiny_suite: str) -> None:
    with pytest.raises(ConfigError, match="meta"):
        SearchConfig(device="meta")
    with pytest.raises(ConfigError, match="meta"):
        lossforge.score(["(y_pred - y_real)**2"], tiny_suite, baselines=[], device="meta", jobs=1)


@pytest.mark.parametrize("budget", [1e300, 1e30])
def test_a_huge_budget_buys_at_most_max_generations(budget: float) -> None:
    # Before: --budget 1e300 stopped with "generations must be at most 9223372036854775807 in size, got
    # 5263...(300 digits)", naming a setting the user never gave; 1e30 was accepted with 1e28 generations
    config = SearchConfig(budget=budget, population=4).resolved(load_suite(TINY_SUITE))
    assert config.generations == MAX_GENERATIONS and config.budget == budget


def test_a_modest_budget_still_buys_its_generations() -> None:
    suite = load_suite(TINY_SUITE)
    config = SearchConfig(budget=50, population=4)
    per_gen = config.generation_cost(4, len(suite.seeds))
    assert config.resolved(suite).generations == max(1, round((50 - per_gen) / per_gen)) < MAX_GENERATIONS


def _boundaries(dtype: torch.dtype) -> torch.Tensor:
    """The guards' epsilons and cap with their neighbours in ``dtype``, signed zeros, subnormals, extremes."""
    finfo = torch.finfo(dtype)
    points = []
    for x in (1e-6, -1e-6, 1e-12, -1e-12, 30.0):
        v = torch.tensor(x, dtype=dtype)
        points += [torch.nextafter(v, torch.tensor(-float("inf"), dtype=dtype)), v,
                   torch.nextafter(v, torch.tensor(float("inf"), dtype=dtype))]
    points = torch.stack(points).tolist()
    return torch.tensor(points + [0.0, -0.0, finfo.smallest_normal / 4, -finfo.smallest_normal / 4, 1.0, -3.5,
                                  1e30, -1e30, float("inf"), -float("inf")], dtype=dtype)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool(torch.equal(torch.isnan(a), torch.isnan(b)) and torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0))
                and torch.equal(torch.signbit(a) | torch.isnan(a), torch.signbit(b) | torch.isnan(b)))


@pytest.mark.parametrize("text", ["y_pred**3", "div(y_pred, 0.0)", "div(y_pred, -1e-6)", "-y_pred*exp(y_real)",
                                  "div(y_real, y_pred)", "sqrt(y_pred)*y_real", "log(y_pred)*y_real",
                                  "exp(y_pred)*y_real", "sin(y_pred)*cos(y_real)", "div(y_pred - y_real, y_pred)"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_export_and_symbolic_loss_agree_bit_for_bit_at_the_guard_boundaries(tmp_path: Path, text: str,
                                                                             dtype: torch.dtype) -> None:
    # Before: the export ended its loss with "out + zeros", which turns a -0.0 into 0.0 (y_pred**3 at -0.0 or
    # at a tiny negative, div(y_pred, 0.0) at -0.0); SymbolicLoss kept the sign
    expression = LossExpression.parse(text)
    exported = exported_class(tmp_path, expression)(reduction="none", problem="regression")
    symbolic = SymbolicLoss(expression, reduction="none", problem="regression")
    x = _boundaries(dtype)
    for real in (0.5, -0.0, 1e-6):
        target = torch.full_like(x, real)
        values, grads = [], []
        for module in (symbolic, exported):
            pred = x.clone().requires_grad_(True)
            value = module(pred, target)
            value.sum().backward()
            values.append(value.detach())
            grads.append(pred.grad)
        assert _same(values[0], values[1]), (real, values)
        assert _same(grads[0], grads[1]), (real, grads)


def test_the_numpy_kernel_cuts_the_gradient_where_torch_does_at_the_guards() -> None:
    """At exactly the epsilons and the cap (and one float32 step either side) the fast trainer's kernel and
    autograd agree on where the gradient is cut (zero) and where it passes."""
    from lossforge.compile import compile_expr, compile_value_and_grad

    x = _boundaries(torch.float32)[:-4]  # finite points (the kernel's inf/nan are numpy's)
    for text in ("div(y_real, y_pred)", "sqrt(y_pred)", "log(y_pred)", "exp(y_pred)"):
        expr = LossExpression.parse(text).sympy
        _, kernel_grad = compile_value_and_grad(expr)(x.numpy().copy(), np.full(len(x), 0.5, dtype=np.float32))
        pred = x.clone().requires_grad_(True)
        compile_expr(expr)(pred, torch.full_like(x, 0.5)).sum().backward()
        assert np.array_equal(kernel_grad == 0, pred.grad.numpy() == 0), text
        np.testing.assert_allclose(kernel_grad, pred.grad.numpy(), rtol=1e-6)


@pytest.mark.parametrize("name", ["loss.py", "exports/Loss.PY"])
def test_score_of_a_py_export_names_the_json_export_instead(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                            name: str) -> None:
    # Before: "unsupported syntax (Attribute) at column 1" or "cannot parse expression", the file read as text
    code, err = _cli(capsys, "score", str(tmp_path / name), "--suite", TINY_SUITE)
    assert code == 2
    _one_line(err, "--format json")


def test_score_reads_a_json_export_whatever_the_suffix_case(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # Before: LOSS.JSON was parsed as an expression: "unknown name 'LOSS'"
    from lossforge.export import render

    expression = LossExpression.parse("div((y_pred - y_real)**2, 0.123456789 + sqrt(y_real*y_real))")
    path = tmp_path / "LOSS.JSON"
    path.write_text(render(expression, "json", {}, None))
    code = main(["score", str(path), "--suite", TINY_SUITE, "--baselines", "", "--json"])
    row = __import__("json").loads(capsys.readouterr().out)["rows"][0]
    assert code == 0 and row["formula"] == expression.formula() and row["status"] == "complete"


@pytest.mark.parametrize("call, error, fragment", [
    (lambda s: lossforge.score(123, s, baselines=[], jobs=1), "ExpressionError", "expressions must be"),
    (lambda s: lossforge.score(None, s, baselines=[], jobs=1), "ExpressionError", "expressions must be"),
    (lambda s: lossforge.score(["y_pred"], s, seeds=3, baselines=[], jobs=1), "ConfigError", "range(3)"),
    (lambda s: lossforge.score(["y_pred"], s, baselines=[1], jobs=1), "ConfigError", "named by a string"),
    (lambda s: lossforge.score(["y_pred"], s, baselines=[], jobs="2"), "ConfigError", "jobs must be"),
    (lambda s: lossforge.score(["y_pred"], s, baselines=[], jobs=0), "ConfigError", "jobs must be"),
    (lambda s: lossforge.score(["y_pred"], 3, baselines=[], jobs=1), "ConfigError", "a suite is"),
    (lambda s: lossforge.score(["y_pred"], None, baselines=[], jobs=1), "ConfigError", "a suite is"),
    (lambda s: lossforge.resume(None), "RunError", "a run is a name or a path"),
    (lambda s: lossforge.resume(3), "RunError", "a run is a name or a path"),
    (lambda s: LossExpression.parse("y_pred*y_real + 0.5").with_constants([]), "ExpressionError", "1 constant"),
    (lambda s: LossExpression.parse("y_pred*y_real + 0.5").with_constants([1.0, 2.0]), "ExpressionError",
     "1 constant"),
    (lambda s: LossExpression.parse("y_pred*y_real + 0.5").with_constants(["x"]), "ExpressionError",
     "not a number"),
])
def test_api_bad_values_are_typed_errors(tiny_suite: str, call, error: str, fragment: str) -> None:
    # Before: TypeError ('int' object is not iterable, expected str ... not NoneType, '<' not supported),
    # AttributeError (no attribute 'strip'), StopIteration and ValueError (could not convert string to float)
    with pytest.raises(getattr(lossforge, error)) as caught:
        call(tiny_suite)
    assert fragment in str(caught.value)


@pytest.mark.parametrize("seeds", [[-1], [2**63], [0, 1.0]])
def test_api_score_refuses_seeds_a_suite_file_refuses(tiny_suite: str, seeds: list) -> None:
    # Before: accepted; -1 trains as 2**63 - 1 (one training counted under two names), 1.0 as 1
    with pytest.raises(ConfigError, match="from 0 to"):
        lossforge.score(["(y_pred - y_real)**2"], tiny_suite, seeds=seeds, baselines=[], jobs=1)


def test_with_constants_takes_numpy_numbers() -> None:
    tuned = LossExpression.parse("y_pred*y_real + 0.5").with_constants([np.float32(0.25)])
    assert tuned.constants == [0.25]


@pytest.mark.parametrize("options, fragment", [
    (dict(callbacks=[3]), "callbacks must be callables"),  # was a TypeError after generation 0
    (dict(callbacks=3), "callbacks must be a list"),
    (dict(stream=3, quiet=False), "stream must be a text stream"),  # was an AttributeError
])
def test_bad_hooks_are_refused_before_a_run_is_left_behind(tmp_path: Path, options: dict, fragment: str) -> None:
    # Before: the run file stayed, so the corrected call was refused with "a run already exists"
    with pytest.raises(ConfigError, match=fragment):
        lossforge.search(run=tmp_path / "hooks.db", suite=TINY_SUITE, population=4, generations=1, executor="serial",
                         **{"quiet": True, **options})
    assert not (tmp_path / "hooks.db").exists()


def test_api_cache_from_takes_one_run_name(tmp_path: Path, tiny_run: Path) -> None:
    # Before: cache_from="found" was read as the runs f, o, u, n, d ("no run at runs/f.db")
    shutil.copy(tiny_run, tmp_path / "found.db")
    seen = []
    lossforge.search(run="again", runs_dir=tmp_path, suite=TINY_SUITE, population=4, generations=1, quiet=True,
                     executor="serial", cache_from="found", validate_top=0, confirm_top=0,
                     callbacks=lambda stats, hof: seen.append(stats) and False)
    assert (tmp_path / "again.db").exists() and seen  # one callable alone is one callback
    with pytest.raises(RunError, match="no run at .*nosuch.db"):
        lossforge.search(run="third", runs_dir=tmp_path, suite=TINY_SUITE, population=4, generations=1, quiet=True,
                         executor="serial", cache_from="nosuch")


def test_an_empty_dashboard_host_is_refused_not_every_interface(tiny_run: Path) -> None:
    # Before: --host '' (an unset variable) bound 0.0.0.0, serving the login-less page to the whole network
    from lossforge.dashboard import make_server

    try:
        server = make_server(tiny_run, port=0, host="")
    except ConfigError as exc:
        assert "every network interface" in str(exc)
    else:
        server.server_close()
        pytest.fail(f"listening on {server.server_address}")


@pytest.mark.parametrize("text", ["-y_real*log(y_pred)", "sqrt(y_pred)*y_real", "exp(y_pred)*y_real",
                                  "div(y_real, y_pred)"])
def test_half_precision_keeps_the_guards_and_matches_float32(tmp_path: Path, text: str) -> None:
    # Before: in float16 LOG_EPS and SQRT_EPS round to 0 and exp(30) overflows: the protected log gave -inf,
    # sqrt a NaN gradient, exp and div inf; now computed in float32 as torch's autocast computes losses
    expression = LossExpression.parse(text)
    modules = [SymbolicLoss(expression, reduction="none", problem="regression"),
               exported_class(tmp_path, expression)(reduction="none", problem="regression")]
    x32 = torch.tensor([0.0, -0.0, 1e-9, 40.0, 1.0, -2.5])
    target = torch.tensor([1.0, 0.5, 1.0, 1.0, -1.0, 2.0])
    for module in modules:
        for dtype in (torch.float16, torch.bfloat16):
            reference = module(x32.to(dtype).float(), target.to(dtype).float())  # the inputs as rounded
            pred = x32.to(dtype).requires_grad_(True)
            value = module(pred, target.to(dtype))
            value.sum().backward()
            assert torch.isfinite(value).all() and torch.isfinite(pred.grad).all(), (dtype, value, pred.grad)
            assert pred.grad.dtype == dtype
            assert torch.equal(value, reference), (value, reference)
    logits = torch.tensor([[0.0, 30.0, -30.0]], dtype=torch.float16)
    values = [module(logits, torch.tensor([2])) for module in
              (SymbolicLoss(expression), exported_class(tmp_path, expression)())]
    assert torch.isfinite(values[0]) and torch.equal(values[0], values[1])
    # the softmax too runs in float32 (as autocast's): in float16 a probability below ~6e-8 was 0
    half = torch.tensor([[0.0, -20.0, 3.0], [1.0, 2.0, -25.0]], dtype=torch.float16, requires_grad=True)
    labels = torch.tensor([1, 2])
    for module in (SymbolicLoss(expression), exported_class(tmp_path, expression)()):
        value = module(half, labels)
        assert torch.equal(value, module(half.detach().float(), labels)), (text, value)
        value.backward()
        assert torch.isfinite(half.grad).all() and half.grad.dtype == torch.float16
        half.grad = None


def test_diagnose_plot_keeps_an_existing_file_unless_forced(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # Before: --plot replaced an existing file silently, where export, report and suite init ask for --force
    out = tmp_path / "figure.png"
    out.write_bytes(b"someone's figure")
    code, err = _cli(capsys, "diagnose", "(y_pred - y_real)**2", "--plot", str(out))
    assert code == 2
    _one_line(err, "pass --force")
    assert out.read_bytes() == b"someone's figure"
    code, _ = _cli(capsys, "diagnose", "(y_pred - y_real)**2", "--plot", str(out), "--force")
    assert code == 0 and out.read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("text", ["1if y_pred else y_real", "y_pred is 1"])
def test_python_syntax_warnings_never_make_a_second_line(capsys: pytest.CaptureFixture, text: str) -> None:
    # Before: "<unknown>:1: SyntaxWarning: invalid decimal literal" (or "is" with a literal) came first
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # a fresh interpreter prints each on stderr
        code, err = _cli(capsys, "diagnose", text)
    assert code == 2
    _one_line(err, "unsupported syntax")
    assert [str(w.message) for w in caught if issubclass(w.category, SyntaxWarning)] == []


def test_score_table_says_a_task_failed_rather_than_minus_inf_plus_minus_nan() -> None:
    # Before: a loss whose training failed on every seed showed "-inf ± nan" in its task's column
    from lossforge.api import ScoreRow
    from lossforge.cli import _score_table

    tasks = {"outliers": {"scores": [float("-inf"), float("-inf")], "normalized": 0.0}}
    good = {"outliers": {"scores": [-0.5, -0.7], "normalized": 1.0}}
    table = _score_table([ScoreRow("loss 1", "y_real*exp(y_pred)", 0.0, tasks, "failed", "x", [0.0, 0.0]),
                          ScoreRow("mse", "mse", 1.0, good, "complete", None, [1.0, 1.0])], None)
    assert "failed (2 of 2 seed(s))" in table and "nan" not in table
    assert "-0.6000 ± " in table


def test_cache_from_a_run_on_another_suite_says_it_reused_nothing(tmp_path: Path, tiny_run: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    # Before: "reusing 0 evaluation(s) from 1 earlier run(s) on the same suite", and nothing more
    other = tmp_path / "other.toml"
    other.write_text(Path(TINY_SUITE).read_text().replace("seeds = [0]", "seeds = [3]"))
    base = ["search", "--population", "4", "--generations", "1", "--executor", "serial", "--validate-top", "0",
            "--confirm-top", "0", "--cache-from", str(tiny_run)]
    assert main(base + ["--suite", str(other), "--run", str(tmp_path / "a.db")]) == 0
    out = capsys.readouterr().out
    assert f"note: {tiny_run} has no evaluations on this suite" in out
    assert main(base + ["--suite", TINY_SUITE, "--run", str(tmp_path / "b.db")]) == 0
    out = capsys.readouterr().out
    assert "note:" not in out and "reusing 0 " not in out


def test_api_cache_from_a_run_on_another_suite_warns(tmp_path: Path, tiny_run: Path) -> None:
    import lossforge

    other = tmp_path / "other.toml"
    other.write_text(Path(TINY_SUITE).read_text().replace("seeds = [0]", "seeds = [3]"))
    with pytest.warns(UserWarning, match="has no evaluations on this suite"):
        lossforge.search(run=tmp_path / "a.db", suite=other, population=4, generations=1, jobs=1,
                         executor="serial", cache_from=tiny_run, validate_top=0, confirm_top=0, quiet=True)


def test_a_torch_baseline_of_another_problem_is_refused_before_training(capsys: pytest.CaptureFixture) -> None:
    # Before: anl_ce on a regression suite trained and failed on every seed ("failed (2 of 2 seed(s))",
    # fitness 0.0, the reason only in --json)
    import lossforge

    for args in (["score", "(y_pred - y_real)**2", "--suite", TINY_SUITE, "--baselines", "anl_ce"],
                 ["baselines", "--suite", TINY_SUITE, "--baselines", "mae,nce_rce(alpha=2)", "--tune"]):
        code, err = _cli(capsys, *args)
        assert code == 2
        _one_line(err, "is a classification loss and suite 'tiny' has regression tasks only; choose from")
    with pytest.raises(ConfigError, match="choose from .*mae"):
        lossforge.score(["(y_pred - y_real)**2"], TINY_SUITE, baselines=["anl_ce"])


def test_features_pick_columns_of_npy_and_npz_files_as_of_a_csv(tmp_path: Path) -> None:
    # Before: features=[...] was ignored for .npy and .npz data: every column was an input
    import numpy as np

    from lossforge.data_sources import read_table

    rng = np.random.default_rng(0)
    x = rng.random((30, 4))
    y = np.arange(30) % 3
    np.save(tmp_path / "d.npy", np.column_stack([x, y]))
    np.savez(tmp_path / "d.npz", x=x, y=y, features=np.array(["a", "b", "c", "d"]))
    npy = read_table(tmp_path / "d.npy", "", features=["2", "0"])
    assert npy.features == ("2", "0") and npy.x.shape == (30, 2)
    np.testing.assert_allclose(npy.x, read_table(tmp_path / "d.npy", "").x[:, [2, 0]])
    npz = read_table(tmp_path / "d.npz", "y", features=["d", "b"])
    assert npz.features == ("d", "b") and npz.x.shape == (30, 2)
    np.testing.assert_allclose(npz.x, read_table(tmp_path / "d.npz", "y").x[:, [3, 1]])
    with pytest.raises(ConfigError, match="are the target"):  # the label column as an input
        read_table(tmp_path / "d.npy", "", features=["0", "4"])
    with pytest.raises(ConfigError, match=r"no feature column\(s\) \['e'\]"):
        read_table(tmp_path / "d.npz", "y", features=["a", "e"])


def test_a_space_without_description_prints_its_name_alone(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # Before: "small: " with nothing after the colon
    path = tmp_path / "small.toml"
    path.write_text('name = "small"\noperators = ["plus", "multiply"]\n[terminals]\nvariables = ["y_pred", "y_real"]\n'
                    "constants = false\n[limits]\ninit_min_depth = 1\ninit_max_depth = 2\nmax_depth = 4\n"
                    "max_nodes = 20\n")
    assert main(["space", str(path)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "small"
