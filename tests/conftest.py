"""Shared fixtures: one torch thread (as in workers) and a tiny suite for fast end-to-end tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

TINY_SUITE = str(Path(__file__).parent / "data" / "tiny_suite.toml")


@pytest.fixture
def tiny_suite() -> str:
    return TINY_SUITE
