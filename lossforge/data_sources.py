"""The user's data: tables from CSV, Parquet, NPZ and NPY files, and arrays, DataFrames and torch Datasets
from the Python API, read into one plain form (:class:`Table`).

Workers and later processes (``show``, ``resume``) rebuild tasks from settings, so a task refers to its data by
a file path plus the file's content hash, never by an object: in-memory data is first written to a
content-addressed ``.npz`` file (:func:`materialize`). A file that changed since the run was made is refused.
Nothing is unpickled: NPZ/NPY files are read with ``allow_pickle=False``.

Inputs are min-max scaled per feature to [0, 1] over all rows (features only, never labels), the range the
built-in procedures assume (attacks and input noise clamp to it). Class labels (numbers or strings) map to
indices in sorted order; the mapping (``classes``) is stored in the task's settings, hence in the run.
"""

from __future__ import annotations

import functools
import hashlib
import io
import math
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lossforge.errors import ConfigError

#: File formats by suffix.
FORMATS = (".csv", ".parquet", ".npz", ".npy")
_TRUE = {"1", "true", "yes", "y", "t", "1.0"}
#: Flags of an unchecked row (an empty cell, read as nan, is one too).
_FALSE = {"0", "false", "no", "n", "f", "0.0", "", "nan", "none"}


@dataclass(frozen=True)
class Table:
    """Rows of one data file: features ``x`` float32 ``[N, D]``, raw labels ``y`` ``[N]`` (numbers or strings),
    ``trusted`` flags ``[N]`` (None: no trusted column) and the feature names."""

    x: np.ndarray
    y: np.ndarray
    trusted: np.ndarray | None
    features: tuple[str, ...]


def file_hash(path: str | Path) -> str:
    """Content hash of a data file (16 hex digits): part of the task settings, so the cache key changes with it."""
    from lossforge.atomic import special_kind

    digest = hashlib.sha256()
    try:
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):  # a FIFO was opened and waited on forever, a device read without end
            kind = "a directory" if stat.S_ISDIR(mode) else special_kind(mode) or "not a regular file"
            raise ConfigError(f"data file {str(path)!r} is {kind}, not a data file; give a .csv, .parquet, .npz "
                              "or .npy file")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise ConfigError(f"data file {str(path)!r}: cannot read it ({exc.strerror or exc}); check the path") from None
    return digest.hexdigest()[:16]


def files_digest(files: Sequence[str]) -> str:
    """One hash of a data file and its second file (test or trusted rows), refusing a second file with the data
    file's own bytes (the file itself or a copy): every loss would be scored on the rows it trained on."""
    hashes = [file_hash(f) for f in files]
    if len(hashes) == 2 and hashes[0] == hashes[1]:
        raise ConfigError(f"{files[1]}: it holds the same rows as the data file {files[0]}, so every loss would be "
                          "scored on the rows it trained on; give a file of other rows")
    return hashlib.sha256("+".join(hashes).encode()).hexdigest()[:16]


def is_data_path(value: str) -> bool:
    """Whether ``value`` names a data file by its suffix (a trusted *file* rather than a column)."""
    return Path(value).suffix.lower() in FORMATS


def _frame(path: Path) -> Any:
    """A CSV or Parquet file as a pandas DataFrame (pandas, and pyarrow for Parquet, are optional extras)."""
    try:
        import pandas as pd
    except ImportError:
        raise ConfigError(f"{path}: reading CSV/Parquet needs pandas: pip install 'lossforge[data]'") from None
    try:
        if path.suffix.lower() != ".csv":
            return pd.read_parquet(path)
        frame = pd.read_csv(path)
        # pandas renames a repeated name ("y", "y.1"): the header's own names, so _select can refuse them
        header = pd.read_csv(path, header=None, nrows=1, dtype=str, keep_default_na=False).iloc[0].tolist()
        if len(header) == len(frame.columns) and len(set(header)) < len(header):
            frame.columns = header
        return frame
    except ImportError:
        raise ConfigError(f"{path}: reading Parquet needs pyarrow: pip install 'lossforge[parquet]'") from None
    except UnicodeDecodeError as exc:  # pandas' "'utf-8' codec can't decode byte 0xe9" named no fix
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} is no UTF-8; Latin-1 or "
                          "Windows-1252, perhaps); save it as UTF-8 (a spreadsheet's \"CSV UTF-8\")") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read it as {path.suffix[1:]}: {str(exc).splitlines()[0]}") from None


def _truthy(values: np.ndarray, where: str, name: str) -> np.ndarray:
    """Trusted flags: 1/true/yes (a checked row) or 0/false/no/empty (unchecked); any other value is refused
    (a 1/2 coding or "maybe" read as unchecked without a word)."""
    words = [str(v).strip().lower() for v in values]
    odd = sorted({str(v).strip() for v, w in zip(values, words) if w not in _TRUE and w not in _FALSE})
    if odd:
        raise ConfigError(f"{where}: the trusted column {name!r} holds {odd[:5]}; mark checked rows 1/true/yes and "
                          "the others 0/false/no")
    return np.array([w in _TRUE for w in words], dtype=bool)


def _select(columns: Sequence[str], where: str, target: str, features: Sequence[str], trusted: str | None
            ) -> list[str]:
    columns = [str(c) for c in columns]
    used = {target, trusted, *features} if features else set(columns)
    repeated = sorted({c for c in columns if columns.count(c) > 1 and c in used})
    if repeated:  # a CSV's second "y" became the input "y.1": the label leaked into the features
        raise ConfigError(f"{where}: column name(s) {repeated} appear more than once; give each column its own name")
    padded = [c for c in columns if c != c.strip() and c.strip() in (target, trusted, *features)]
    if padded:  # "a, b, y" names its columns " b" and " y": the message showed them as b and y
        raise ConfigError(f"{where}: the column names {padded} have spaces around them (a separator such as ', '); "
                          "write the header without them or name the columns with the spaces")
    if target not in columns:
        raise ConfigError(f"{where}: no target column {target!r}; columns are {', '.join(columns)}")
    if trusted is not None and trusted not in columns:
        raise ConfigError(f"{where}: no trusted column {trusted!r}; columns are {', '.join(columns)}")
    if trusted == target:  # the labels were read as the trusted flags too
        raise ConfigError(f"{where}: the trusted column {trusted!r} is the target; name a column of clean-row flags")
    leaked = [f for f in features if f in (target, trusted)]
    if leaked:  # the label (or which rows are clean) as an input: every loss scored as if the task were solved
        raise ConfigError(f"{where}: feature column(s) {leaked} are the target or trusted column; leave them out of "
                          "features")
    _check_features(columns, features, where)
    return list(features) or [c for c in columns if c not in (target, trusted)]


def _check_separator(columns: Sequence[str], where: str, target: str) -> None:
    """ConfigError when a CSV header read as one column holds ';', a tab or the target among other text: the
    file is separated by something else than commas, and was read as one column named "a;b;y"."""
    name = str(columns[0]) if len(columns) == 1 else ""
    word = bool(target) and re.search(rf"(^|\W){re.escape(target)}(\W|$)", name) is not None
    if name == target or not (";" in name or "\t" in name or word):
        return
    sep = "';'" if ";" in name else "tabs" if "\t" in name else "something other than commas"
    raise ConfigError(f"{where}: no target column {target!r}; the header is the single column {name!r}: the file "
                      f"seems to be separated by {sep}, and lossforge reads comma-separated CSV; save it with "
                      "commas (or as .npz or .parquet)")


def _check_features(columns: Sequence[str], features: Sequence[str], where: str) -> None:
    """ConfigError when ``features`` names a column twice or one ``columns`` lacks."""
    if len(set(features)) != len(features):
        raise ConfigError(f"{where}: features name a column twice ({list(features)}); list each once")
    missing = [f for f in features if f not in columns]
    if missing:
        shown = ", ".join(columns[:20]) + (" ..." if len(columns) > 20 else "")
        raise ConfigError(f"{where}: no feature column(s) {missing}; columns are {shown}")


def _features(values: Any, names: Sequence[str], where: str) -> np.ndarray:
    if np.iscomplexobj(values):  # float64 of it dropped the imaginary part with a mere numpy warning
        raise ConfigError(f"{where}: the features are complex numbers; give real ones (e.g. the real and "
                          "imaginary parts as two columns)")
    try:
        x = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        bad = next((n for n, col in zip(names, np.asarray(values, dtype=object).T) if not _numeric(col)), "?")
        raise ConfigError(
            f"{where}: feature column {bad!r} is not numeric; encode it as numbers or leave it out with features=[...]"
        ) from None
    if x.ndim != 2 or x.shape[1] == 0:
        raise ConfigError(f"{where}: no feature columns left; name them with features=[...]")
    if x.shape[0] == 0:  # a header alone (was reported as "a single class []")
        raise ConfigError(f"{where}: no rows of data; the file holds only its column names")
    if not np.isfinite(x).all():
        col = names[int(np.nonzero(~np.isfinite(x).all(axis=0))[0][0])] if len(names) == x.shape[1] else "?"
        raise ConfigError(f"{where}: feature column {col!r} has missing or non-finite values; fill or drop them")
    too_big = np.abs(x) > np.finfo(np.float32).max  # rows are kept as float32: these would become inf
    if too_big.any():
        col = names[int(np.nonzero(too_big.any(axis=0))[0][0])] if len(names) == x.shape[1] else "?"
        raise ConfigError(f"{where}: feature column {col!r} has values beyond float32's range (about ±3.4e38), "
                          "which training uses; rescale it")
    return x


def _labels(y: np.ndarray, where: str, target: str) -> np.ndarray:
    """``y``, refused when a label is missing or infinite (in an array file nan became a class "nan", as in a
    CSV ``inf`` did, and a None among text labels a class "None"; an empty CSV cell was refused already)."""
    if y.dtype.kind in "fc":
        missing = not np.isfinite(y).all()
    else:
        missing = y.dtype == object and any(v is None or (isinstance(v, float) and not math.isfinite(v))
                                            for v in y.tolist())
    if missing:
        raise ConfigError(f"{where}: target {target!r} has missing or non-finite values; drop those rows")
    return y


def _frame_labels(frame: Any, target: str, where: str) -> np.ndarray:
    """The target column of a DataFrame (read from a file or given), refused with a missing value."""
    if frame[target].isna().any():
        raise ConfigError(f"{where}: target column {target!r} has missing values; drop those rows")
    return _labels(frame[target].to_numpy(), where, target)


def _numeric(column: np.ndarray) -> bool:
    try:
        np.asarray(column, dtype=np.float64)
        return True
    except (TypeError, ValueError):
        return False


def read_table(path: str | Path, target: str, features: Sequence[str] = (), trusted: str | None = None) -> Table:
    """Read one data file. CSV/Parquet: ``target`` and ``trusted`` are column names, ``features`` the columns
    to use (default: all others). NPZ: arrays ``x`` (``[N, D]`` or images ``[N, H, W]``/``[N, 1, H, W]``,
    flattened) and ``target`` (default key ``y``), optional flags under ``trusted``. NPY: a 2-D numeric array
    whose column ``target`` (an index, default the last) holds the labels."""
    path = Path(path)
    where = str(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ConfigError(f"{where}: unknown data format {suffix or '(none)'!r}; use one of {', '.join(FORMATS)}")
    if not path.is_file():
        raise ConfigError(f"{where}: no such data file")
    if suffix in (".csv", ".parquet"):
        frame = _frame(path)
        if suffix == ".csv":
            _check_separator(frame.columns, where, target)
        names = _select(frame.columns, where, target, features, trusted)
        x = _features(frame[names].to_numpy(), names, where)
        y = _frame_labels(frame, target, where)
        flags = _truthy(frame[trusted].to_numpy(), where, trusted) if trusted is not None else None
        return Table(x.astype(np.float32), y, flags, tuple(names))
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                arrays = {k: archive[k] for k in archive.files}
        else:
            arrays = {"array": np.load(path, allow_pickle=False)}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{where}: cannot read it as {suffix[1:]} without pickle: {str(exc).splitlines()[0]}") from None
    if suffix == ".npy":
        if trusted is not None:  # was a TypeError traceback when the task split rows on flags it never got
            raise ConfigError(f"{where}: an .npy file holds feature columns and a label column, no trusted flags "
                              f"(got trusted {trusted!r}); give the checked rows as a second file (--trusted FILE), "
                              "or use an .npz with a flags array or a CSV with a flags column")
        array = arrays["array"]
        if array.ndim != 2 or array.shape[1] < 2:
            raise ConfigError(f"{where}: an .npy file must be a 2-D array of feature columns and a label column")
        column = (-1 if target in ("", "y") else _index(target, array.shape[1], where)) % array.shape[1]
        # columns are named by index; features=[...] picks some of them, as for a CSV (they were ignored)
        names = _select([str(i) for i in range(array.shape[1])], where, str(column), features, None)
        keep = [int(n) for n in names]
        return Table(_features(array[:, keep], names, where).astype(np.float32),
                     _labels(array[:, column], where, target or "y"), None, tuple(names))
    target = target or "y"
    for key in ("x", target):
        if key not in arrays:
            raise ConfigError(f"{where}: no array {key!r}; arrays are {', '.join(arrays)}")
    x, y = arrays["x"], arrays[target]
    if x.ndim == 0:  # was a TypeError traceback (as no rows was a ValueError)
        raise ConfigError(f"{where}: array 'x' is a single number; it needs one row per example, [N, D] or "
                          "images [N, H, W]")
    if x.shape[0] == 0:
        raise ConfigError(f"{where}: array 'x' has no rows")
    x = x.reshape(len(x), -1)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:  # a [N, C] array was read as N labels that are lists
        raise ConfigError(f"{where}: array {target!r} has shape {y.shape}; it needs one label per row, [N]")
    names = [str(n) for n in arrays["features"].ravel()] if "features" in arrays else [str(i) for i in range(x.shape[1])]
    if len(names) != x.shape[1]:
        raise ConfigError(f"{where}: array 'features' names {len(names)} column(s) but 'x' has {x.shape[1]}; they "
                          "must match")
    if features:  # the columns of x that features=[...] names (they were ignored)
        _check_features(names, features, where)
        x, names = x[:, [names.index(f) for f in features]], list(features)
    flags = None
    if trusted is not None:
        if trusted not in arrays:
            raise ConfigError(f"{where}: no trusted array {trusted!r}; arrays are {', '.join(arrays)}")
        flags = _truthy(arrays[trusted].ravel(), where, trusted)
        if len(flags) != len(x):  # was a ValueError traceback later, splitting the rows
            raise ConfigError(f"{where}: {len(x)} inputs but {len(flags)} trusted flags in {trusted!r}; they must match")
    if len(y) != len(x):
        raise ConfigError(f"{where}: {len(x)} inputs but {len(y)} labels; they must match")
    return Table(_features(x, names, where).astype(np.float32), _labels(y, where, target), flags, tuple(names))


def _index(value: str, width: int, where: str) -> int:
    try:
        index = int(value)
    except ValueError:
        raise ConfigError(f"{where}: in an .npy file the target is a column index; got {value!r}") from None
    if not -width <= index < width:
        raise ConfigError(f"{where}: target column {index} is out of range for {width} columns")
    return index


def _label_key(value: Any) -> str:
    """A label as text: integral numbers without a fractional part (``3.0`` -> ``"3"``)."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def infer_classes(labels: np.ndarray) -> tuple[str, ...]:
    """Class names in index order: numeric labels sorted by value, others sorted as text."""
    keys = {_label_key(v) for v in labels.tolist()}
    try:
        return tuple(sorted(keys, key=float))
    except ValueError:
        return tuple(sorted(keys))


def encode_labels(labels: np.ndarray, classes: Sequence[str], where: str) -> np.ndarray:
    """Class indices of ``labels`` under the stored mapping ``classes`` (index -> name)."""
    index = {name: i for i, name in enumerate(classes)}
    keys = [_label_key(v) for v in labels.tolist()]
    unknown = sorted({k for k in keys if k not in index})
    if unknown:
        raise ConfigError(f"{where}: label(s) {unknown[:5]} are not among the classes {list(classes)}")
    return np.array([index[k] for k in keys], dtype=np.int64)


@functools.lru_cache(maxsize=16)
def cached_table(path: str, digest: str, target: str, features: tuple[str, ...], trusted: str | None) -> Table:
    """:func:`read_table`, once per process, refusing a file whose content changed since ``digest`` was taken."""
    now = file_hash(path)
    if digest and now != digest:
        raise ConfigError(f"data file {path!r} changed since this task was set up (hash {now}, expected {digest});"
                          " restore it or start a new run")
    return read_table(path, target, features, trusted)


def scale_unit(x: np.ndarray) -> np.ndarray:
    """Features min-max scaled per column to [0, 1] (constant columns become 0)."""
    low, high = x.min(axis=0), x.max(axis=0)
    span = np.where(high > low, high - low, 1.0)
    return ((x - low) / span).astype(np.float32)


# --- in-memory data: written once to a content-addressed file ------------------------------------------------


def _to_arrays(data: Any, target: str | None, trusted: str | None) -> dict[str, np.ndarray]:
    if isinstance(data, tuple) and len(data) in (2, 3):
        arrays = {"x": np.asarray(data[0]), "y": np.asarray(data[1])}
        if len(data) == 3:  # read as a file's flags: bool() made "no", "false" and nan trusted
            arrays["trusted"] = _truthy(np.asarray(data[2]).ravel(), "data", "trusted")
        return arrays
    if hasattr(data, "columns") and hasattr(data, "to_numpy"):  # a pandas DataFrame
        if target is None:
            raise ConfigError("a DataFrame needs target='COLUMN' naming its label column")
        # columns are named as text, as in a file (pd.DataFrame(x) has 0, 1, ...: looking up "0" was a KeyError)
        data = data.set_axis([str(c) for c in data.columns], axis=1)
        target, trusted = str(target), None if trusted is None else str(trusted)
        names = _select(list(data.columns), "DataFrame", target, (), trusted)
        arrays = {"x": _features(data[names].to_numpy(), names, "DataFrame"),
                  "y": _frame_labels(data, target, "DataFrame"), "features": np.array(names, dtype=str)}
        if trusted is not None:
            arrays["trusted"] = _truthy(data[trusted].to_numpy(), "DataFrame", trusted)
        return arrays
    if isinstance(data, Mapping):  # it has __getitem__ and __len__ too: data[0] was a KeyError
        raise ConfigError(f"data must be a file path, (x, y) arrays, a DataFrame or a torch Dataset; got "
                          f"{type(data).__name__} (for arrays under keys pass data=(d['x'], d['y']))")
    if hasattr(data, "__getitem__") and hasattr(data, "__len__"):  # a map-style torch Dataset of (x, y)
        xs, ys = [], []
        for i in range(len(data)):
            item = data[i]
            if not (isinstance(item, (tuple, list)) and len(item) >= 2):
                raise ConfigError("a Dataset must yield (input, label) pairs")
            try:
                xs.append(np.asarray(item[0], dtype=np.float32))
            except (TypeError, ValueError):
                raise ConfigError(f"the Dataset's item {i} has an input that is not numeric") from None
            if xs[-1].shape != xs[0].shape:
                raise ConfigError(f"the Dataset has inputs of different shapes ({xs[0].shape} at item 0, "
                                  f"{xs[-1].shape} at item {i}); give every input one shape")
            label = np.asarray(item[1])
            if label.size != 1:  # was a ValueError from .item()
                raise ConfigError(f"the Dataset's item {i} has a label of shape {label.shape}; give one class index "
                                  "or target per item (for one-hot rows, their argmax)")
            ys.append(label.item())
        if not xs:
            raise ConfigError("the Dataset is empty")
        return {"x": np.stack(xs), "y": np.asarray(ys)}
    raise ConfigError(f"data must be a file path, (x, y) arrays, a DataFrame or a torch Dataset; got {type(data).__name__}")


def materialize(data: Any, directory: str | Path, target: str | None = None, trusted: str | None = None
                ) -> tuple[Path, str, str | None]:
    """Write in-memory ``data`` to ``directory/<hash>.npz`` (atomically; an existing equal file is reused) and
    return ``(path, target key, trusted key)`` for the task settings. Labels are stored as numbers or text
    (never objects), so reading them back needs no pickle."""
    arrays = _to_arrays(data, target, trusted)
    y = _labels(arrays["y"], "data", "y")
    if y.dtype == object or y.dtype.kind in "SU":
        arrays["y"] = np.array([_label_key(v) for v in y.tolist()], dtype=str)
    if arrays["x"].dtype == object:
        raise ConfigError("inputs must be numeric arrays")
    digest = hashlib.sha256()
    for key in sorted(arrays):
        digest.update(key.encode() + str(arrays[key].dtype).encode() + str(arrays[key].shape).encode())
        digest.update(np.ascontiguousarray(arrays[key]).tobytes())
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create {directory} for the data: {exc.strerror or exc}; "
                          "choose a writable runs directory") from None
    path = (directory / f"{digest.hexdigest()[:16]}.npz").resolve()
    if not path.exists():
        # fsynced before it takes its name (write_atomic): the name is reused as proof of the content, so a
        # crash must never leave a short file there; a full disk is one line, not a traceback
        from lossforge.atomic import write_atomic

        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        write_atomic(path, buffer.getvalue())
    return path, "y", ("trusted" if "trusted" in arrays else None)
