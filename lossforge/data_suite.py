"""A suite for the user's data, built from a few choices (``lossforge search --data``, ``suite init``,
``lossforge.search(data=...)``) and written as an ordinary suite TOML file that the user may edit.

The written file names the data by absolute path and content hash (in-memory data is first written to a
content-addressed ``.npz``, :func:`lossforge.data_sources.materialize`), so every process that reads the suite,
or the run that stores it, sees the same rows.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Sequence

from lossforge.errors import ConfigError

#: Procedures a data suite can contain, in the order written.
PROCEDURES = ("plain", "augment", "adversarial", "regularize")
NOISE_KINDS = ("symmetric", "asymmetric", "pair")


def parse_noise(text: str | None) -> dict[str, Any]:
    """``KIND:RATE`` (``symmetric:0.4``, ``pair:0.3``, ``asymmetric:0.3:cat>dog,dog>cat``) -> task settings."""
    if text is None or text == "":
        return {}
    parts = text.split(":", 2)
    kind = parts[0]
    if kind not in NOISE_KINDS or len(parts) < 2:
        raise ConfigError(f"--noise must be KIND:RATE with KIND one of {', '.join(NOISE_KINDS)} "
                          f"(e.g. symmetric:0.4, asymmetric:0.3:cat>dog); got {text!r}")
    try:
        rate = float(parts[1])
    except ValueError:
        raise ConfigError(f"--noise {text!r}: the rate {parts[1]!r} is not a number") from None
    settings: dict[str, Any] = {"noise": kind, "noise_rate": rate}
    if kind == "asymmetric":
        if len(parts) < 3 or not parts[2]:
            raise ConfigError("asymmetric noise needs its class map: --noise asymmetric:RATE:SRC>DST,SRC>DST")
        flips = []
        for pair in parts[2].split(","):
            source, sep, dest = pair.partition(">")
            if not sep or not source or not dest:
                raise ConfigError(f"--noise class map entry {pair!r} must be SOURCE>DESTINATION")
            flips.append([source.strip(), dest.strip()])
        settings["flips"] = flips
    elif len(parts) == 3:
        raise ConfigError(f"--noise {text!r}: only asymmetric noise takes a class map")
    return settings


def parse_model(text: str | None) -> dict[str, Any]:
    """``mlp`` | ``mlp:128,128`` | ``cnn`` | ``package.module:factory`` -> task settings."""
    if text is None or text == "" or text == "mlp":
        return {}
    if text == "cnn":
        return {"model": "cnn", "hidden": []}
    if text.startswith("mlp:"):
        try:
            hidden = [int(v) for v in text[4:].split(",") if v.strip()]
        except ValueError:
            raise ConfigError(f"--model {text!r}: mlp takes hidden sizes, e.g. mlp:128,128") from None
        return {"model": "mlp", "hidden": hidden}
    if ":" in text:
        return {"model": text}
    raise ConfigError(f"--model must be mlp, mlp:SIZES, cnn or package.module:factory; got {text!r}")


def parse_image_shape(value: str | Sequence[int] | None) -> list[int] | None:
    """``H,W`` | ``C,H,W`` | ``HxW`` | ``CxHxW`` (or a sequence of ints, kept) -> ``[H, W]`` / ``[C, H, W]``; the
    task checks the numbers (:func:`lossforge.tasks.user.check_image_shape`)."""
    if value is None:
        return None
    if not isinstance(value, str):
        return list(value)
    parts = value.lower().replace("x", ",").split(",")
    try:
        return [int(v) for v in parts]
    except ValueError:
        raise ConfigError(f"--image-shape must be H,W or C,H,W integers (e.g. 28,28 or 3x32x32); got {value!r}"
                          ) from None


def parse_procedures(text: str | Sequence[str] | None) -> list[str]:
    """Comma-separated procedure names (default ``plain``), checked."""
    names = ["plain"] if not text else ([p.strip() for p in text.split(",") if p.strip()] if isinstance(text, str)
                                         else list(text))
    bad = [p for p in names if p not in PROCEDURES]
    if bad or not names or len(set(names)) != len(names):
        raise ConfigError(f"procedures must be distinct names from {', '.join(PROCEDURES)}; got {names}")
    return names


def data_suite_spec(data: str | Path, target: str = "y", *, problem: str = "classification",
                    noise: str | dict[str, Any] | None = None, trusted: str | None = None,
                    test_data: str | None = None, features: Sequence[str] = (),
                    image_shape: str | Sequence[int] | None = None, model: str | None = None,
                    procedures: str | Sequence[str] | None = None, seeds: Sequence[int] = (0, 1),
                    validation_seeds: Sequence[int] = (1000, 1001), epochs: int | None = None,
                    name: str | None = None) -> dict[str, Any]:
    """The suite (plain data) scoring losses on data file ``data`` with the chosen noise, model and procedures.

    Every task is constructed (so every setting and the data are checked, and the inferred classes and the
    data hash are filled in) before anything is written."""
    from lossforge.tasks.user import PROCEDURES as TYPES
    from lossforge.tasks.registry import make_task

    if isinstance(features, str):  # list("a,b") named the columns "a", ",", "b"
        raise ConfigError(f"features must be a list of column names, e.g. ['a', 'b']; got {features!r}")
    if problem == "regression":
        return _regression_spec(data, target, noise, trusted, test_data, features, model, procedures, seeds,
                                validation_seeds, epochs, name)
    if problem != "classification":
        raise ConfigError(f"problem must be 'classification' or 'regression'; got {problem!r}")
    base: dict[str, Any] = {"dataset": str(Path(data).expanduser().resolve()), "target": target}
    base.update(_noise_settings(noise, parse_noise))
    base.update(parse_model(model))
    image_shape = parse_image_shape(image_shape)
    for key, value in (("trusted", trusted), ("test_data", test_data), ("image_shape", image_shape)):
        if value is not None:
            base[key] = value
    if features:
        base["features"] = list(features)
    if epochs is not None:
        base["epochs"] = epochs
    tasks = []
    for procedure in parse_procedures(procedures):
        settings = dict(base)
        if procedure == "augment" and image_shape is not None:
            settings["augmentations"] = ["affine", "noise", "cutout"]
        task = make_task(TYPES[procedure], **settings)
        stored = {k: v for k, v in task.settings().items() if v is not None}
        tasks.append({"name": procedure, "type": TYPES[procedure], "settings": stored})
    stem = name or Path(data).stem
    return {"name": f"data-{stem}", "description": f"your data {Path(data).name}: {', '.join(t['name'] for t in tasks)}",
            "seeds": list(seeds), "validation_seeds": list(validation_seeds), "tasks": tasks}


def _noise_settings(noise: Any, parse: Callable[[str | None], dict[str, Any]]) -> dict[str, Any]:
    """Task settings of ``noise``: text for ``parse`` (``symmetric:0.4``, ``gaussian:0.5``), or settings as a dict."""
    if noise is None or isinstance(noise, str):
        return parse(noise)
    if isinstance(noise, Mapping):
        return dict(noise)
    # noise=3 was a TypeError traceback ("'int' object is not iterable")
    raise ConfigError(f"noise must be text such as 'symmetric:0.4' or a dict of task settings; got {noise!r}")


def parse_regression_noise(text: str | None) -> dict[str, Any]:
    """``gaussian:STD[:MEAN]`` or ``outliers:FRACTION`` (target standard deviations / a fraction; MEAN is a
    constant offset, a biased sensor) -> task settings."""
    if not text:
        return {}
    kind, sep, value = text.partition(":")
    if kind not in ("gaussian", "outliers") or not sep:
        raise ConfigError(f"--noise for regression must be gaussian:STD[:MEAN] or outliers:FRACTION; got {text!r}")
    values = value.split(":") if kind == "gaussian" else [value]
    try:
        numbers = [float(v) for v in values]
    except ValueError:
        raise ConfigError(f"--noise {text!r}: {value!r} is not a number (gaussian:STD[:MEAN], outliers:FRACTION)"
                          ) from None
    if len(numbers) > 2:
        raise ConfigError(f"--noise {text!r}: gaussian takes STD and an optional MEAN, e.g. gaussian:0.5:1.0")
    names = ("noise_std", "noise_mean") if kind == "gaussian" else ("outlier_fraction",)
    return {"noise": kind, **dict(zip(names, numbers))}


def _regression_spec(data: str | Path, target: str, noise: Any, trusted: str | None, test_data: str | None,
                     features: Sequence[str], model: str | None, procedures: Any, seeds: Sequence[int],
                     validation_seeds: Sequence[int], epochs: int | None, name: str | None) -> dict[str, Any]:
    from lossforge.tasks.registry import make_task

    if parse_procedures(procedures) != ["plain"]:
        raise ConfigError("regression on your data has the plain procedure only; drop --procedures")
    settings: dict[str, Any] = {"dataset": str(Path(data).expanduser().resolve()), "target": target}
    settings.update(_noise_settings(noise, parse_regression_noise))
    model_settings = parse_model(model)
    if model_settings.get("model", "mlp") == "cnn":
        raise ConfigError("regression on your data takes the built-in MLP or your factory: --model mlp, "
                          "mlp:SIZES or package.module:factory")
    settings.update(model_settings)
    for key, value in (("trusted", trusted), ("test_data", test_data)):
        if value is not None:
            settings[key] = value
    if features:
        settings["features"] = list(features)
    if epochs is not None:
        settings["steps"] = epochs  # full-batch training: one step per epoch
    task = make_task("user_regression", **settings)
    stored = {k: v for k, v in task.settings().items() if v is not None}
    return {"name": f"data-{name or Path(data).stem}", "description": f"your data {Path(data).name}: regression",
            "seeds": list(seeds), "validation_seeds": list(validation_seeds),
            "tasks": [{"name": "plain", "type": "user_regression", "settings": stored}]}


# --- a small TOML writer for suite specs (strings, numbers, booleans, lists; nothing executable) --------------


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # JSON string escapes are valid TOML basic strings
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise ConfigError(f"cannot write {type(value).__name__} {value!r} to a suite file")


def _key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() and key.isascii() else json.dumps(key)


def suite_toml(spec: dict[str, Any], header: str = "") -> str:
    """``spec`` (a suite as plain data) as TOML text; ``header`` becomes leading comment lines."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    for key in ("name", "description", "seeds", "validation_seeds", "confirm_seeds", "budget"):
        if key in spec:
            lines.append(f"{key} = {_value(spec[key])}")
    for task in spec["tasks"]:
        lines += ["", "[[tasks]]"]
        for key in ("name", "type", "preset", "weight"):
            if key in task:
                lines.append(f"{key} = {_value(task[key])}")
        if task.get("settings"):
            lines.append("[tasks.settings]")
            lines += [f"{_key(k)} = {_value(v)}" for k, v in task["settings"].items() if v is not None]
    return "\n".join(lines) + "\n"


def write_text_atomic(path: str | Path, text: str, overwrite: bool = False) -> Path:
    """Write ``text`` to ``path`` with :func:`lossforge.atomic.write_atomic` (temporary file, fsync, rename);
    refuse to replace a file unless asked."""
    from lossforge.atomic import write_atomic

    path = Path(path)
    if path.exists() and not overwrite:
        raise ConfigError(f"{path} exists; choose another -o or remove it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create {path.parent} for {path.name}: {exc.strerror or exc}; "
                          "choose a writable directory") from None
    return write_atomic(path, text)


def suite_file_for(spec: dict[str, Any], directory: str | Path) -> Path:
    """Write ``spec`` to a content-addressed ``directory/<name>-<hash>.toml`` (reused when equal) and return it."""
    import hashlib

    text = suite_toml(spec, "written by lossforge for a search on your data")
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    path = Path(directory) / f"{spec['name']}-{digest}.toml"
    if not path.exists():
        # another search on the same data may write it between the check and the write: same name, same
        # text, so replacing it is harmless, and refusing would fail that search
        write_text_atomic(path, text, overwrite=True)
    return path.resolve()


def resolve_data(data: Any, directory: str | Path, target: str | None, trusted: str | None
                 ) -> tuple[str, str, str | None]:
    """``(path, target, trusted)`` for ``data``: a path as given, in-memory data written to ``directory``."""
    from lossforge.data_sources import materialize

    if isinstance(data, (str, os.PathLike)):
        return str(data), target or "y", trusted
    if trusted is not None and isinstance(data, tuple):
        raise ConfigError("with (x, y) arrays pass the trusted flags as a third array: data=(x, y, trusted)")
    path, key, flags = materialize(data, directory, target, trusted)
    return str(path), key, flags


#: Keyword arguments of ``lossforge.search``/``lossforge.score`` that describe own data (with ``data=``).
DATA_OPTIONS = ("target", "problem", "noise", "trusted", "test_data", "features", "image_shape", "model",
                "procedures", "epochs")


def suite_for_data(data: Any, directory: str | Path, **options: Any) -> Path:
    """The suite file for ``data`` (a path, ``(x, y)`` or ``(x, y, trusted)`` arrays, a DataFrame with
    ``target=``, a torch Dataset) with :data:`DATA_OPTIONS`; in-memory data and the suite go under
    ``directory``."""
    unknown = sorted(set(options) - set(DATA_OPTIONS))
    if unknown:
        raise ConfigError(f"unknown data option(s) {unknown}; use {', '.join(DATA_OPTIONS)}")
    path, target, trusted = resolve_data(data, Path(directory) / "data", options.pop("target", None),
                                         options.pop("trusted", None))
    spec = data_suite_spec(path, target, trusted=trusted, **options)
    return suite_file_for(spec, Path(directory) / "suites")


def split_data_options(settings: dict[str, Any]) -> dict[str, Any]:
    """Remove and return the :data:`DATA_OPTIONS` from a keyword-argument dict."""
    return {key: settings.pop(key) for key in DATA_OPTIONS if key in settings}
