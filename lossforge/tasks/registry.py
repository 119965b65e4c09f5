"""Task types and presets by name, as suite files refer to them: the one place that knows every task class.

A suite entry's ``type`` is resolved in this order:

1. a built-in name (``regression``, ``label_noise``, ``augment``, ``adversarial``, ``regularize`` and the
   own-data types ``user``, ``user_augment``, ``user_adversarial``, ``user_regularize``, ``user_regression``);
2. a name given to :func:`register_task` in this process;
3. a name published by an installed package in the entry-point group ``lossforge.tasks``
   (``[project.entry-points."lossforge.tasks"] mytask = "mypkg.tasks:MyTask"``);
4. an import path ``"package.module:ClassName"``, imported on first use.

Built-ins are named by import path too and imported lazily, so no task module imports its own subclasses
and importing the registry is cheap. A run stores each task's type as :func:`type_name` gives it, so a class
registered in-process is stored by its import path: a fresh process (a worker, ``show``, ``resume``) imports
it again from that path without any registration.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
from importlib import metadata
from typing import Any

from lossforge.errors import ConfigError, did_you_mean
from lossforge.tasks.base import Task

#: Entry-point group through which installed packages publish task types.
ENTRY_POINT_GROUP = "lossforge.tasks"

#: Built-in type name -> import path of its class.
BUILTIN: dict[str, str] = {
    "regression": "lossforge.tasks.regression:RegressionTask",
    "label_noise": "lossforge.tasks.classification:ClassificationTask",
    "augment": "lossforge.tasks.augment:AugmentTask",
    "adversarial": "lossforge.tasks.adversarial:AdversarialTask",
    "regularize": "lossforge.tasks.regularize:RegularizeTask",
    "user": "lossforge.tasks.user:UserClassificationTask",
    "user_augment": "lossforge.tasks.user:UserAugmentTask",
    "user_adversarial": "lossforge.tasks.user:UserAdversarialTask",
    "user_regularize": "lossforge.tasks.user:UserRegularizeTask",
    "user_regression": "lossforge.tasks.user:UserRegressionTask",
}
#: The classification types over the bundled data sets.
BUNDLED_CLASSIFICATION = ("label_noise", "augment", "adversarial", "regularize")

#: Named settings of each built-in classification type: ``PRESETS_BY_TYPE[type][preset] -> settings`` (a suite
#: entry names ``type`` and ``preset``; its own ``settings`` override the preset's).
PRESETS_BY_TYPE: dict[str, dict[str, dict[str, Any]]] = {
    "label_noise": {
        "symmetric40": {},
        "asymmetric40": {"noise": "asymmetric", "noise_rate": 0.4},
        "pair30": {"noise": "pair", "noise_rate": 0.3},
        "cnn_symmetric40": {"model": "cnn", "hidden": []},
        "mnist_symmetric40": {"dataset": "mnist", "epochs": 10},
        "mnist1d_symmetric40": {"dataset": "mnist1d", "hidden": [128, 128]},
    },
    "augment": {
        "affine_noise_cutout": {},
        "mixup": {"augmentations": ["mixup"]},
        "cutmix_cnn": {"augmentations": ["cutmix"], "model": "cnn", "hidden": []},
    },
    "adversarial": {
        "pgd": {},
        "fgsm": {"attack": "fgsm"},
        "mim": {"attack": "mim"},
        "free": {"attack": "free"},
    },
    "regularize": {
        "dropout_smoothing": {},
        "entropy": {"dropout": 0.0, "label_smoothing": 0.0, "entropy_weight": 0.5},
        "batch_norm": {"dropout": 0.0, "label_smoothing": 0.0, "batch_norm": True},
        "dropblock_cnn": {"model": "cnn", "hidden": [], "dropout": 0.0, "label_smoothing": 0.0, "dropblock": 0.2},
    },
}
#: Every classification preset by its (unique) name, whatever its type.
PRESETS: dict[str, dict[str, Any]] = {
    name: settings for presets in PRESETS_BY_TYPE.values() for name, settings in presets.items()
}

_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")
_registered: dict[str, type[Task]] = {}
_loaded: dict[str, type[Task]] = {}


def class_path(cls: type) -> str:
    """``"module:ClassName"`` of a class (the form a run stores for a type it cannot name otherwise)."""
    return f"{cls.__module__}:{cls.__qualname__}"


def _check_task_class(cls: Any, where: str) -> type[Task]:
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise ConfigError(f"{where} is not a lossforge Task subclass; subclass lossforge.tasks.base.Task")
    if not dataclasses.is_dataclass(cls):
        raise ConfigError(f"{where} must be a @dataclass (its fields are the task's settings)")
    return cls


def register_task(cls: type[Task], name: str | None = None) -> type[Task]:
    """Make task class ``cls`` available to suites as ``type = name`` (default: its ``kind_name``).

    Usable as a decorator. Runs store the class by import path (:func:`type_name`), so workers and later
    processes find it without registering again, as long as its module is importable there.
    """
    _check_task_class(cls, f"register_task: {cls!r}")
    name = name or cls.kind_name
    if not name or ":" in name:
        raise ConfigError(f"register_task: {class_path(cls)} needs a name (set kind_name or pass name=...)")
    if name in BUILTIN or (name in _registered and _registered[name] is not cls):
        raise ConfigError(f"register_task: type name {name!r} is already taken; pass another name=")
    _registered[name] = cls
    return cls


def _entry_points() -> dict[str, metadata.EntryPoint]:
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def _import_path(path: str) -> type[Task]:
    if path in _loaded:
        return _loaded[path]
    if not _PATH.match(path):
        raise ConfigError(f"task type {path!r} is not a known name nor an import path 'package.module:ClassName'")
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"task type {path!r}: cannot import module {exc.name!r}; install it or add its folder to PYTHONPATH"
        ) from None
    except ImportError as exc:
        raise ConfigError(f"task type {path!r}: importing {module_name!r} failed: {exc}") from None
    if not hasattr(module, attr):
        raise ConfigError(f"task type {path!r}: module {module_name!r} has no attribute {attr!r}")
    cls = _check_task_class(getattr(module, attr), f"task type {path!r}")
    _loaded[path] = cls
    return cls


def resolve(name: str) -> type[Task]:
    """The task class of suite ``type`` ``name`` (see the module docstring for the order); ConfigError if none."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"task type must be a name or 'package.module:ClassName'; got {name!r}")
    if name in BUILTIN:
        return _import_path(BUILTIN[name])
    if name in _registered:
        return _registered[name]
    if ":" in name:
        return _import_path(name)
    points = _entry_points()
    if name in points:
        try:
            cls = points[name].load()
        except ImportError as exc:
            raise ConfigError(f"task type {name!r} (entry point {points[name].value!r}) cannot be imported: {exc}") from None
        return _check_task_class(cls, f"task type {name!r} (entry point {points[name].value!r})")
    known = sorted({*BUILTIN, *_registered, *points})
    raise ConfigError(f"unknown task type {name!r}; known: {', '.join(known)}, or 'package.module:ClassName'")


def type_name(cls: type[Task]) -> str:
    """The ``type`` a run stores for ``cls``: its built-in or entry-point name, else its import path."""
    name = cls.kind_name
    if name in BUILTIN and BUILTIN[name] == class_path(cls):
        return name
    return class_path(cls)


def task_types() -> dict[str, type[Task]]:
    """Every task type known by name (built-in, registered, entry points) -> class. Imports them all."""
    types = {name: resolve(name) for name in BUILTIN}
    types.update(_registered)
    for name in _entry_points():
        types.setdefault(name, resolve(name))
    return types


def bundled_classification_types() -> dict[str, type[Task]]:
    """The classification types over the bundled data sets, by name."""
    return {name: resolve(name) for name in BUNDLED_CLASSIFICATION}


def presets(kind: str) -> dict[str, dict[str, Any]]:
    """Named settings of task type ``kind`` (a plug-in class may carry its own in a ``PRESETS`` class attribute)."""
    if kind == "regression":
        from lossforge.tasks.regression import PRESETS as REGRESSION_PRESETS

        return REGRESSION_PRESETS
    if kind in PRESETS_BY_TYPE:
        return PRESETS_BY_TYPE[kind]
    if kind in BUILTIN:
        return {}
    return dict(getattr(resolve(kind), "PRESETS", {}) or {})


def make_task(type_name: str, **settings: Any) -> Task:
    """The task of type ``type_name`` with ``settings`` (unknown names raise :class:`ConfigError`)."""
    cls = resolve(type_name)
    check_settings(cls, type_name, settings)
    return cls(**settings)


def check_settings(cls: type, type_name: str, settings: Any) -> None:
    """ConfigError naming the settings ``cls`` (a task class) does not take, with the closest known name (a
    class whose constructor takes ``**kwargs`` accepts any)."""
    parameters = inspect.signature(cls).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return
    known = sorted(p.name for p in parameters if p.kind is not inspect.Parameter.VAR_POSITIONAL)
    unknown = sorted(set(settings) - set(known))
    if unknown:
        raise ConfigError(f"unknown setting(s) {unknown} for task type {type_name!r}"
                          f"{did_you_mean(unknown[0], known)} (known: {', '.join(known)})")


def preset_task(name: str, **overrides: Any) -> Task:
    """The task of preset ``name`` (see :data:`PRESETS_BY_TYPE`), with ``overrides`` applied to its settings."""
    for kind, named in PRESETS_BY_TYPE.items():
        if name in named:
            return make_task(kind, **{**named[name], **overrides})
    raise ConfigError(f"preset must be one of {sorted(PRESETS)}; got {name!r}")
