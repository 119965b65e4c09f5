"""Own data and suite files as other programs save them: a CSV separated by semicolons or tabs, a file in
Latin-1, a suite or space file with a byte-order mark, a misspelt task setting, and a test file with classes
the training data never has. Each is read as meant or refused in one line naming the fix (a typed lossforge
error from the API, exit code 2 from the CLI), never a traceback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lossforge.cli import main
from lossforge.data_sources import read_table
from lossforge.data_suite import data_suite_spec, suite_toml
from lossforge.errors import ConfigError, SpaceError
from lossforge.scoring import load_suite
from lossforge.space import SPACES_DIR, load_space


def _rows(n: int = 40, classes: int = 2) -> list[tuple[float, float, int]]:
    rng = np.random.default_rng(0)
    return [(float(rng.random()), float(rng.random()), i % classes) for i in range(n)]


def _csv(path: Path, rows: list[tuple[float, float, object]], sep: str = ",", encoding: str = "utf-8") -> Path:
    lines = [sep.join(["a", "b", "label"])] + [sep.join(str(v) for v in row) for row in rows]
    path.write_bytes(("\n".join(lines) + "\n").encode(encoding))
    return path


def _one_error_line(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("sep, named", [(";", "separated by ';'"), ("\t", "separated by tabs"),
                                        ("|", "separated by something other than commas")])
def test_a_csv_with_another_separator_says_so(tmp_path: Path, capsys: pytest.CaptureFixture, sep: str,
                                               named: str) -> None:
    """Before: `no target column 'label'; columns are a;b;label` with no hint that the file was read as one
    column because its separator is not a comma."""
    path = _csv(tmp_path / "d.csv", _rows(), sep)
    with pytest.raises(ConfigError, match=f"{named}.*reads comma-separated CSV.*save it with commas"):
        read_table(path, "label")
    assert main(["suite", "init", "--data", str(path), "--target", "label", "--noise", "symmetric:0.2",
                 "-o", str(tmp_path / "s.toml")]) == 2
    assert named in _one_error_line(capsys) and not (tmp_path / "s.toml").exists()


def test_a_missing_target_in_a_comma_separated_csv_gets_no_separator_hint(tmp_path: Path) -> None:
    """The hint is for a header read as one column; a misspelt target in a comma-separated file keeps the
    plain message listing the columns."""
    path = _csv(tmp_path / "d.csv", _rows())
    with pytest.raises(ConfigError, match=r"no target column 'labl'; columns are a, b, label$"):
        read_table(path, "labl")


def test_a_latin1_csv_is_refused_as_not_utf8(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Before: pandas' decode error (`'utf-8' codec can't decode byte 0xe9 in position 2: unexpected end of
    data`), which did not say that the file is not UTF-8 or what to do."""
    rows = [(a, b, "café" if y else "thé") for a, b, y in _rows()]
    path = _csv(tmp_path / "d.csv", rows, encoding="latin-1")
    with pytest.raises(ConfigError, match="not UTF-8 text.*save it as UTF-8"):
        read_table(path, "label")
    assert main(["suite", "init", "--data", str(path), "--target", "label", "--noise", "symmetric:0.2",
                 "-o", str(tmp_path / "s.toml")]) == 2
    assert "not UTF-8" in _one_error_line(capsys)
    # the same file saved as UTF-8 reads, labels unchanged
    assert sorted(set(read_table(_csv(tmp_path / "u.csv", rows), "label").y)) == ["café", "thé"]


def _suite_text(tmp_path: Path) -> str:
    data = _csv(tmp_path / "d.csv", _rows())
    return suite_toml(data_suite_spec(data, "label", noise="symmetric:0.2", epochs=1))


def test_a_suite_or_space_file_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    """Before: a suite or space file saved with a UTF-8 byte-order mark (as Notepad writes it) was `not valid
    TOML: Invalid statement (at line 1, column 1)`."""
    plain, bom = tmp_path / "plain.toml", tmp_path / "bom.toml"
    plain.write_text(_suite_text(tmp_path), encoding="utf-8")
    bom.write_text(plain.read_text(), encoding="utf-8-sig")
    assert bom.read_bytes().startswith(b"\xef\xbb\xbf")
    assert load_suite(bom).spec()["tasks"] == load_suite(plain).spec()["tasks"]
    space = tmp_path / "space.toml"
    space.write_text((SPACES_DIR / "survey.toml").read_text(encoding="utf-8"), encoding="utf-8-sig")
    assert load_space(space).operators == load_space("survey").operators


def test_a_suite_or_space_file_not_in_utf8_says_so(tmp_path: Path) -> None:
    """Before: `cannot read suite: 'utf-8' codec can't decode byte ...` without saying to save it as UTF-8."""
    suite = tmp_path / "s.toml"
    suite.write_bytes(_suite_text(tmp_path).replace("your data", "données").encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8 text.*save it as UTF-8"):
        load_suite(suite)
    space = tmp_path / "space.toml"
    space.write_bytes(b"# espace \xe9\n" + (SPACES_DIR / "survey.toml").read_bytes())
    with pytest.raises(SpaceError, match="not UTF-8 text.*save it as UTF-8"):
        load_space(space)


def test_a_misspelt_task_setting_in_a_suite_file_suggests_the_name(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture) -> None:
    """Before: `got an unexpected keyword argument 'noise_rat'` with no suggestion of `noise_rate`."""
    suite = tmp_path / "s.toml"
    suite.write_text(_suite_text(tmp_path).replace("noise_rate =", "noise_rat ="))
    with pytest.raises(ConfigError, match=r"tasks\[0\].*'noise_rat'.*did you mean 'noise_rate'"):
        load_suite(suite)
    assert main(["baselines", "--suite", str(suite), "--seeds", "1", "--baselines", "cross_entropy"]) == 2
    assert "did you mean 'noise_rate'" in _one_error_line(capsys)


def test_a_test_file_with_classes_the_training_data_lacks_is_refused(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture) -> None:
    """Before: classes were the union of both files, so test rows of a class no training row has were
    scored, though no model can predict a class it never saw labelled."""
    train = _csv(tmp_path / "train.csv", _rows())
    test = _csv(tmp_path / "test.csv", [(a, b, 7 if i % 3 == 0 else y) for i, (a, b, y) in enumerate(_rows(30))])
    with pytest.raises(ConfigError, match=r"test.csv: label\(s\) \['7'\] of 'label' never occur in the training"):
        data_suite_spec(train, "label", noise="symmetric:0.2", test_data=str(test))
    assert main(["suite", "init", "--data", str(train), "--target", "label", "--noise", "symmetric:0.2",
                 "--test-data", str(test), "-o", str(tmp_path / "s.toml")]) == 2
    assert "['7']" in _one_error_line(capsys) and not (tmp_path / "s.toml").exists()
    # a trusted file of clean rows is scored the same way: refused alike
    with pytest.raises(ConfigError, match=r"test.csv: label\(s\) \['7'\] of 'label' never occur"):
        data_suite_spec(train, "label", trusted=str(test))


def test_a_test_file_lacking_some_training_classes_is_accepted(tmp_path: Path) -> None:
    """A test file need not hold every class: the classes are those of the training data."""
    train = _csv(tmp_path / "train.csv", _rows(classes=3))
    test = _csv(tmp_path / "test.csv", [(a, b, y % 2) for a, b, y in _rows(30, classes=3)])
    spec = data_suite_spec(train, "label", noise="symmetric:0.2", test_data=str(test))
    assert list(spec["tasks"][0]["settings"]["classes"]) == ["0", "1", "2"]
