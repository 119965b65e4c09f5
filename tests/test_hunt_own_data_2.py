"""Own data handed over the way users do by accident: odd headers, odd flags, hand-edited suite files and
in-memory data of the wrong kind. Each is read as meant or refused in one line (a ConfigError), never a
traceback, and no column or label is changed on the way."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import lossforge
from lossforge.cli import main
from lossforge.data_sources import read_table
from lossforge.data_suite import data_suite_spec, suite_for_data, suite_toml
from lossforge.errors import ConfigError
from lossforge.scoring import load_suite

X = np.random.default_rng(0).random((40, 3))
Y = np.arange(40) % 2


def _csv(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


def test_unchecked_rows_of_a_single_class_are_refused_in_one_line(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    # Before: accepted by the task, then the noise estimate of `suite init`/`search --trusted` died in a
    # scikit-learn ValueError traceback ("needs samples of at least 2 classes"); every loss trained on one class
    rng = np.random.default_rng(0)
    path = _csv(tmp_path / "d.csv", "a,b,y,ok", [f"{rng.random()},{rng.random()},{i % 2},{i % 2}" for i in range(40)])
    with pytest.raises(ConfigError, match="rows trained on all have class '0'"):
        data_suite_spec(path, trusted="ok")
    assert main(["suite", "init", "--data", str(path), "--trusted", "ok", "-o", str(tmp_path / "s.toml")]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "Traceback" not in err and not (tmp_path / "s.toml").exists()


def test_a_repeated_column_name_is_refused_not_renamed(tmp_path: Path) -> None:
    # Before: pandas renamed the second 'label' to 'label.1', which became an input: the label leaked into the
    # features; a DataFrame with a repeated name got a message about an internal .npz file
    rng = np.random.default_rng(0)
    path = _csv(tmp_path / "d.csv", "a,label,label", [f"{rng.random()},{i % 2},{i % 2}" for i in range(40)])
    with pytest.raises(ConfigError, match=r"column name\(s\) \['label'\] appear more than once"):
        read_table(path, "label")
    import pandas as pd

    frame = pd.DataFrame(np.column_stack([X, Y]), columns=["a", "a", "b", "y"])
    with pytest.raises(ConfigError, match=r"column name\(s\) \['a'\] appear more than once"):
        suite_for_data(frame, tmp_path, target="y", noise="symmetric:0.2")
    # a header with a byte-order mark still reads as its names
    bom = tmp_path / "bom.csv"
    bom.write_text("\ufeff" + path.read_text().replace("a,label,label", "a,b,label"), encoding="utf-8")
    assert read_table(bom, "label").features == ("a", "b")


def test_a_dataframe_with_number_column_names_is_read(tmp_path: Path) -> None:
    # Before: pd.DataFrame(x) (columns 0, 1, 2) was a KeyError traceback: the names were compared as text and
    # looked up as text
    import pandas as pd

    frame = pd.DataFrame(X).assign(y=Y)
    suite = load_suite(suite_for_data(frame, tmp_path, target="y", noise="symmetric:0.2", epochs=1))
    assert suite.tasks[0].task.features == ("0", "1", "2")


@pytest.mark.parametrize("data, fragment", [
    ({"x": X, "y": Y}, "got dict"),
    ([(X[i], np.eye(2)[Y[i]]) for i in range(40)], "a label of shape (2,)"),
    ([(np.ones(3 + i % 2), Y[i]) for i in range(40)], "inputs of different shapes"),
    ([("abc", Y[i]) for i in range(40)], "not numeric"),
])
def test_in_memory_data_of_the_wrong_kind_is_a_config_error(tmp_path: Path, data, fragment: str) -> None:
    # Before: a dict was a KeyError, a Dataset of one-hot labels or of inputs of two shapes a ValueError
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        suite_for_data(data, tmp_path, noise="symmetric:0.2")


@pytest.mark.parametrize("options, fragment", [
    ({"noise": 3}, "noise must be text such as 'symmetric:0.4' or a dict"),
    ({"noise": 0.3, "problem": "regression"}, "noise must be text such as 'symmetric:0.4' or a dict"),
    ({"noise": "symmetric:0.2", "features": "0,1"}, "features must be a list of column names"),
])
def test_api_data_options_of_the_wrong_type_are_config_errors(tmp_path: Path, options: dict, fragment: str) -> None:
    # Before: noise=3 was a TypeError traceback ('int' object is not iterable); features="0,1" was read as the
    # columns '0', ',' and '1'
    with pytest.raises(ConfigError, match=fragment):
        suite_for_data((X, X[:, 0] if options.get("problem") else Y), tmp_path, **options)


def test_trusted_flags_read_alike_from_a_file_and_from_arrays(tmp_path: Path) -> None:
    # Before: (x, y, flags) went through bool(), so "no" and "false" (any non-empty text) and nan marked rows
    # trusted, while the same column in a CSV read them as unchecked; a flag such as 2 or "maybe" counted as
    # unchecked without a word
    words = np.array(["yes", "no", "no", "no"] * 10)
    suite = load_suite(suite_for_data((X, Y, words), tmp_path, epochs=1))
    assert int(suite.tasks[0].task.prepared().trusted.sum()) == 10
    nan_flags = np.where(np.arange(40) % 4 == 0, 1.0, np.nan)
    suite = load_suite(suite_for_data((X, Y, nan_flags), tmp_path, epochs=1))
    assert int(suite.tasks[0].task.prepared().trusted.sum()) == 10
    rng = np.random.default_rng(0)
    path = _csv(tmp_path / "d.csv", "a,y,ok", [f"{rng.random()},{i % 2},{[1, 2, 2, 2][i % 4]}" for i in range(40)])
    with pytest.raises(ConfigError, match=r"trusted column 'ok' holds \['2'\]"):
        read_table(path, "y", trusted="ok")


@pytest.mark.parametrize("labels", [["a", None] * 20, ["a", np.nan] * 20])
def test_a_missing_label_in_memory_is_refused_not_made_a_class(tmp_path: Path, labels: list) -> None:
    # Before: a None (or nan) among text labels became a class "None" ("nan"); in a CSV it was refused
    import pandas as pd

    frame = pd.DataFrame(X, columns=["a", "b", "c"]).assign(y=labels)
    with pytest.raises(ConfigError, match="missing"):
        suite_for_data(frame, tmp_path, target="y", noise="symmetric:0.2")
    with pytest.raises(ConfigError, match="missing"):
        suite_for_data((X, np.array(labels, dtype=object)), tmp_path, noise="symmetric:0.2")


@pytest.mark.parametrize("noise, fragment", [
    ("asymmetric:0.3:0>1,0>2", r"flips class '0' to \['1', '2'\]"),
    ("asymmetric:0.3:1>1", "flips class '1' to itself"),
])
def test_an_asymmetric_class_map_that_would_be_cut_is_refused(tmp_path: Path, noise: str, fragment: str) -> None:
    # Before: 0>1,0>2 kept only 0>2 without a word; 1>1 changed no label, so the run trained noise-free
    path = tmp_path / "d.npz"
    np.savez(path, x=np.random.default_rng(0).random((60, 3)), y=np.arange(60) % 3)
    with pytest.raises(ConfigError, match=fragment):
        data_suite_spec(path, noise=noise)


@pytest.mark.parametrize("old, new, fragment", [
    ("flips = []", 'flips = [["0"]]', "flips must be"),
    ("flips = []", 'flips = "0>1"', "flips must be"),
    ('classes = ["0", "1"]', 'classes = ["0", "0", "1"]', "classes must be a list of distinct"),
    ('classes = ["0", "1"]', 'classes = "01"', "classes must be a list of distinct"),
])
def test_hand_edited_flips_and_classes_of_the_wrong_shape_are_refused(tmp_path: Path, old: str, new: str,
                                                                       fragment: str) -> None:
    # Before: flips = [["0"]] was a ValueError traceback (unpacking); a repeated class left an index no label
    # had (one output never trained), and classes = "01" was read as its characters
    path = tmp_path / "d.npz"
    np.savez(path, x=X, y=Y)
    text = suite_toml(data_suite_spec(path, noise="symmetric:0.2", epochs=1))
    assert old in text
    edited = tmp_path / "s.toml"
    edited.write_text(text.replace(old, new))
    with pytest.raises(ConfigError, match=fragment):
        load_suite(edited)


def test_a_test_or_trusted_file_with_the_data_files_rows_is_refused(tmp_path: Path) -> None:
    # Before: --test-data (or --trusted FILE) naming the data file itself, or a copy, was accepted: every loss
    # was scored on the rows it trained on
    rng = np.random.default_rng(0)
    path = _csv(tmp_path / "d.csv", "a,b,y", [f"{rng.random()},{rng.random()},{i % 2}" for i in range(40)])
    copy = tmp_path / "copy.csv"
    copy.write_text(path.read_text())
    for other in (path, copy):
        with pytest.raises(ConfigError, match="holds the same rows as the data file"):
            data_suite_spec(path, noise="symmetric:0.2", test_data=str(other))
        with pytest.raises(ConfigError, match="holds the same rows as the data file"):
            data_suite_spec(path, trusted=str(other))
        with pytest.raises(ConfigError, match="holds the same rows as the data file"):
            data_suite_spec(path, "a", problem="regression", trusted=str(other), features=["b"])


def test_score_refuses_a_misspelt_data_option_before_training(tmp_path: Path) -> None:
    # Before: score(data=..., epoch=50) dropped `epoch` without a word and trained with the default epochs
    with pytest.raises(TypeError, match="did you mean 'epochs'"):
        lossforge.score(["(y_pred - y_real)**2"], data=(X, Y), noise="symmetric:0.2", epoch=50,
                        runs_dir=tmp_path)
    assert not (tmp_path / "suites").exists()
