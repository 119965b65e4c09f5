"""The user's own ``nn.Module``, trained K copies at once with ``torch.func``.

A model factory ``factory(n_features=..., n_classes=...) -> nn.Module`` is named by import path
(``"package.module:factory"``, stored in the run like a plug-in task type). :class:`StackedModule` builds one
module under a seeded generator, copies it K times (every copy starts from the same weights: common random
numbers) and stacks the copies' parameters and buffers with ``torch.func.stack_module_state``: each parameter
gets a leading K dimension, the layout :class:`~lossforge.training.BatchedTrainer` and its element-wise optimisers
expect, so failure isolation and per-model gradient checks work unchanged.

The forward pass maps ``torch.func.functional_call`` over the K copies with ``torch.func.vmap``. Where vmap
cannot take a module (e.g. batch norm updating its running statistics in place, data-dependent Python control
flow, ``.item()``), the copies run one after another on slices of the same stacked tensors, after a one-line
warning; the results follow the same contract, only slower. Random layers (dropout) draw from torch's global
generator, which the own-data tasks seed per evaluation; under vmap all K copies share one mask.
"""

from __future__ import annotations

import copy
import importlib
import re
import warnings
from typing import Any, Callable

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from lossforge.errors import ConfigError

_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")


def is_factory_path(model: str) -> bool:
    """Whether ``model`` names a factory (``package.module:function``) rather than a built-in model."""
    return isinstance(model, str) and ":" in model


def load_factory(path: str) -> Callable[..., nn.Module]:
    """The factory at ``path``; one ConfigError line naming what is missing."""
    if not _PATH.match(path):
        raise ConfigError(f"model {path!r} must be mlp, cnn or an import path 'package.module:factory'")
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ConfigError(f"model factory {path!r}: cannot import module {exc.name!r}; install it or add its "
                          "folder to PYTHONPATH") from None
    except ImportError as exc:
        raise ConfigError(f"model factory {path!r}: importing {module_name!r} failed: {exc}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConfigError(f"model factory {path!r}: module {module_name!r} has no callable {attr!r}")
    return factory


def build_one(path: str, n_features: int, n_classes: int, seed: int) -> nn.Module:
    """One module from the factory, its initial weights drawn from torch's generator seeded with ``seed``
    (the caller's global generator state is restored)."""
    factory = load_factory(path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            module = factory(n_features=n_features, n_classes=n_classes)
        except Exception as exc:  # user code: any failure becomes one line naming it
            raise ConfigError(f"model factory {path!r} raised {type(exc).__name__}: {exc}") from None
    if not isinstance(module, nn.Module):
        raise ConfigError(f"model factory {path!r} returned {type(module).__name__}, not a torch nn.Module")
    return module.float()


class StackedModule(nn.Module):
    """K copies of ``module`` as stacked parameters ``[K, ...]``; ``forward(x) -> [K, N, ...]`` for inputs
    shared by all copies ``[N, *sample_shape]`` or one batch per copy ``[K, N, *sample_shape]`` (adversarial
    examples are crafted per model)."""

    def __init__(self, module: nn.Module, n_models: int, sample_dims: int, name: str = "model") -> None:
        super().__init__()
        copies = [copy.deepcopy(module) for _ in range(n_models)]
        if not any(True for _ in module.parameters()):
            raise ConfigError(f"model factory {name!r} returned a module without parameters; nothing to train")
        params, buffers = stack_module_state(copies)
        self.names = list(params)
        self.buffer_names = list(buffers)
        self.stacked = nn.ParameterList([nn.Parameter(params[n].detach().clone()) for n in self.names])
        for i, n in enumerate(self.buffer_names):
            self.register_buffer(f"buffer_{i}", buffers[n].clone())
        # the structure functional_call runs; kept out of the registered submodules so that parameters()
        # holds the stacked weights only (the trainer reads a leading K dimension from each)
        object.__setattr__(self, "base", copy.deepcopy(module))
        self.name = name
        self.sample_dims = sample_dims
        self.use_vmap = True

    def _state(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        params = dict(zip(self.names, self.stacked))
        buffers = {n: getattr(self, f"buffer_{i}") for i, n in enumerate(self.buffer_names)}
        return params, buffers

    def _one(self, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.base, (params, buffers), (x,))

    def _loop(self, x: torch.Tensor, per_model: bool) -> torch.Tensor:
        params, buffers = self._state()
        k = len(self.stacked[0])
        return torch.stack([self._one({n: p[i] for n, p in params.items()}, {n: b[i] for n, b in buffers.items()},
                                      x[i] if per_model else x) for i in range(k)])

    def forward(self, x: torch.Tensor, generator: Any = None) -> torch.Tensor:
        self.base.train(self.training)
        per_model = x.dim() == self.sample_dims + 2
        if self.use_vmap:
            params, buffers = self._state()
            try:
                in_dims = (0, 0, 0 if per_model else None)
                return vmap(self._one, in_dims=in_dims, randomness="same")(params, buffers, x)
            except Exception as exc:  # noqa: BLE001 - vmap refuses some modules; the loop takes any
                self.use_vmap = False
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                warnings.warn(f"lossforge: vmap cannot batch {self.name} ({first[:160]}); training its K copies "
                              "one after another instead", RuntimeWarning, stacklevel=2)
        return self._loop(x, per_model)
