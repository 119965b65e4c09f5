"""Odd data files a user may hand to ``--data``: each is read as meant or refused in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lossforge.data_sources import file_hash, read_table
from lossforge.data_suite import data_suite_spec
from lossforge.errors import ConfigError


def test_a_fifo_or_device_as_data_is_refused_instead_of_blocking(tmp_path: Path) -> None:
    # Before: hashing the data opened a FIFO for reading and waited for a writer forever
    fifo = tmp_path / "data.csv"
    os.mkfifo(fifo)
    code = ("import sys\nfrom lossforge.data_suite import data_suite_spec\nfrom lossforge.errors import ConfigError\n"
            "try:\n    data_suite_spec(sys.argv[1], noise='symmetric:0.2')\n"
            "except ConfigError as exc:\n    print(exc)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(fifo)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    assert "a FIFO" in proc.stdout and "not a data file" in proc.stdout, proc.stdout + proc.stderr
    with pytest.raises(ConfigError, match="a device"):
        file_hash("/dev/zero")
    with pytest.raises(ConfigError, match="a directory"):
        file_hash(tmp_path)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_missing_or_infinite_label_in_an_array_file_is_refused_as_in_a_csv(tmp_path: Path, bad: float) -> None:
    # Before: an .npz label of nan (or inf) became a class "nan"; a CSV's empty label cell was refused
    y = (np.arange(40) % 2).astype(float)
    y[3] = bad
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).random((40, 3)), y=y)
    with pytest.raises(ConfigError, match="missing or non-finite"):
        data_suite_spec(tmp_path / "d.npz", noise="symmetric:0.2")
    np.save(tmp_path / "d.npy", np.column_stack([np.random.default_rng(0).random((40, 3)), y]))
    with pytest.raises(ConfigError, match="missing or non-finite"):
        read_table(tmp_path / "d.npy", "")
    (tmp_path / "d.csv").write_text("a,y\n" + "\n".join(f"{i},{v}" for i, v in enumerate(y)) + "\n")
    with pytest.raises(ConfigError, match="missing|non-finite"):
        read_table(tmp_path / "d.csv", "y")


def test_complex_features_are_refused_not_cut_to_their_real_part(tmp_path: Path) -> None:
    # Before: the imaginary part was dropped with a numpy ComplexWarning, and the search ran on the rest
    x = np.random.default_rng(0).random((40, 3)) * (1 + 1j)
    np.savez(tmp_path / "c.npz", x=x, y=np.arange(40) % 2)
    with pytest.raises(ConfigError, match="complex"):
        read_table(tmp_path / "c.npz", "y")


def test_classes_of_one_row_each_are_refused_as_leaving_nothing_to_test_on(tmp_path: Path) -> None:
    # Before: accepted; the held-out split was empty and every loss, the reference too, scored 0
    rng = np.random.default_rng(0)
    path = tmp_path / "ids.csv"
    path.write_text("a,b,y\n" + "\n".join(f"{rng.random()},{rng.random()},{i}" for i in range(30)) + "\n")
    with pytest.raises(ConfigError, match="single row, so no row is held out"):
        data_suite_spec(path, noise="symmetric:0.2")
    test = tmp_path / "test.csv"  # other rows of the same classes
    test.write_text("a,b,y\n" + "\n".join(f"{rng.random()},{rng.random()},{i}" for i in range(30)) + "\n")
    assert data_suite_spec(path, noise="symmetric:0.2", test_data=str(test))["tasks"]


def test_symmetric_noise_that_makes_a_wrong_label_the_majority_is_refused(tmp_path: Path) -> None:
    # Before: two classes at symmetric:0.6 were accepted: 60 % of the training labels wrong, so the labels
    # said the opposite of the truth (class-dependent noise was already capped below 0.5 for this reason)
    rng = np.random.default_rng(0)
    path = tmp_path / "two.csv"
    path.write_text("a,b,y\n" + "\n".join(f"{rng.random()},{rng.random()},{i % 2}" for i in range(40)) + "\n")
    for rate in (0.5, 0.6):
        with pytest.raises(ConfigError, match="wrong label as likely as the right one"):
            data_suite_spec(path, noise=f"symmetric:{rate}")
    assert data_suite_spec(path, noise="symmetric:0.45")["tasks"]
    three = tmp_path / "three.csv"
    three.write_text("a,b,y\n" + "\n".join(f"{rng.random()},{rng.random()},{i % 3}" for i in range(60)) + "\n")
    assert data_suite_spec(three, noise="symmetric:0.6")["tasks"]  # each wrong class gets 0.3 < 0.4


def test_a_header_with_spaces_after_the_commas_says_so(tmp_path: Path) -> None:
    # Before: "no target column 'y'; columns are a,  b,  y": the column ' y' read as y in the message
    path = tmp_path / "spaced.csv"
    path.write_text("a, b, y\n" + "\n".join(f"{i}, {i * 2}, {i % 2}" for i in range(20)) + "\n")
    with pytest.raises(ConfigError, match=r"column names \[' y'\] have spaces around them"):
        read_table(path, "y")
    assert read_table(path, " y").features == ("a", " b")


@pytest.mark.parametrize("options, fragment", [
    ({"features": ["a", "y"], "noise": "symmetric:0.2"}, "are the target or trusted column"),
    ({"features": ["a", "ok"], "trusted": "ok"}, "are the target or trusted column"),
    ({"trusted": "y"}, "is the target"),
    ({"features": ["a", "a"], "noise": "symmetric:0.2"}, "name a column twice"),
    ({"features": ["a", "y"], "noise": "gaussian:0.5", "problem": "regression"}, "are the target or trusted"),
])
def test_the_target_or_trusted_column_cannot_also_be_an_input(tmp_path: Path, options: dict, fragment: str) -> None:
    # Before: accepted; with the label among the inputs every loss scored as if the task were solved
    rng = np.random.default_rng(0)
    path = tmp_path / "d.csv"
    path.write_text("a,b,ok,y\n" + "\n".join(f"{rng.random()},{rng.random()},{int(i < 5)},{i % 2}"
                                            for i in range(40)) + "\n")
    with pytest.raises(ConfigError, match=fragment):
        data_suite_spec(path, **options)


def test_the_result_views_of_an_own_data_run_need_not_its_data_file(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture) -> None:
    # Before: once the data file moved (or changed), `show`, `show --json`, `runs` and open_run() all failed:
    # rebuilding the stored suite read and hashed the data, though the views read only the stored scores
    import lossforge
    from lossforge.cli import main

    rng = np.random.default_rng(0)
    data = tmp_path / "mine.csv"
    data.write_text("a,b,y\n" + "\n".join(f"{rng.random()},{rng.random()},{i % 2}" for i in range(40)) + "\n")
    runs = tmp_path / "runs"
    assert main(["--runs-dir", str(runs), "search", "--data", str(data), "--noise", "symmetric:0.2", "--epochs", "1",
                 "--population", "4", "--generations", "1", "--executor", "serial", "--jobs", "1", "--run", "own",
                 "--quiet"]) == 0
    before = lossforge.open_run(runs / "own.db").to_dict()
    data.rename(tmp_path / "moved.csv")
    capsys.readouterr()
    assert main(["--runs-dir", str(runs), "show", "own"]) == 0
    assert "cross_entropy" in capsys.readouterr().out
    assert main(["--runs-dir", str(runs), "runs"]) == 0
    out, err = capsys.readouterr()
    assert "own" in out and "skipped" not in err
    assert lossforge.open_run(runs / "own.db").to_dict() == before
    # resuming trains, so it still needs the data and says so in one line
    assert main(["--runs-dir", str(runs), "resume", "own", "--quiet"]) == 2
    assert "mine.csv" in capsys.readouterr().err


def test_a_class_name_with_control_characters_is_shown_escaped_and_the_suite_file_stays_valid(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # Before: the noise report printed the class name's escape sequence raw to the terminal and wrote it into
    # the suite file's header comment, which TOML then refused to read
    from lossforge.cli import main
    from lossforge.scoring import load_suite

    rng = np.random.default_rng(0)
    path = tmp_path / "d.csv"
    names = ["ok", "bad\x1b[2J"]
    path.write_text("a,b,clean,y\n" + "\n".join(f"{rng.random()},{rng.random()},{int(i % 3 == 0)},{names[i % 2]}"
                                                for i in range(60)) + "\n")
    out = tmp_path / "s.toml"
    assert main(["suite", "init", "--data", str(path), "--trusted", "clean", "--epochs", "1", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "\x1b" not in printed and "bad\\x1b[2J" in printed
    suite = load_suite(out)
    assert suite.tasks[0].task.classes == ("bad\x1b[2J", "ok")
