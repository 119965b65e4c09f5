"""Model factories for the own-data tests, named by import path (``tests.user_models:NAME``)."""

from __future__ import annotations

from torch import nn


def norm_mlp(n_features: int, n_classes: int) -> nn.Module:
    """Linear - LayerNorm - GELU - Linear: vmap takes it."""
    return nn.Sequential(nn.Linear(n_features, 32), nn.LayerNorm(32), nn.GELU(), nn.Linear(32, n_classes))


def batch_norm_mlp(n_features: int, n_classes: int) -> nn.Module:
    """BatchNorm updates its running statistics in place: vmap refuses it, the loop takes it."""
    return nn.Sequential(nn.Linear(n_features, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, n_classes))


def broken(n_features: int, n_classes: int) -> nn.Module:
    raise ValueError("this factory always fails")


def not_a_module(n_features: int, n_classes: int) -> object:
    return object()


class _Gate(nn.Module):
    """Python control flow on a tensor's value: vmap cannot trace it, the loop can."""

    def forward(self, x):
        return x if float(x.detach().abs().max()) < 1e6 else x.clamp(-1e6, 1e6)


def gated_mlp(n_features: int, n_classes: int) -> nn.Module:
    return nn.Sequential(nn.Linear(n_features, 16), _Gate(), nn.Tanh(), nn.Linear(16, n_classes))


def wrong_width(n_features: int, n_classes: int) -> nn.Module:
    """Ignores n_classes: two outputs more than asked (a regression model must give [N, 1])."""
    return nn.Linear(n_features, n_classes + 2)


def dropout_mlp(n_features: int, n_classes: int) -> nn.Module:
    """A random layer: its masks come from the generator the own-data tasks seed per evaluation."""
    return nn.Sequential(nn.Linear(n_features, 16), nn.GELU(), nn.Dropout(0.2), nn.Linear(16, n_classes))
