"""Shared fixtures (tiny and named after what they are) and the `gpu` marker's skip rule."""

from __future__ import annotations

import numpy as np
import pytest


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config, items):
    """Skip tests marked `gpu` when no CUDA device is present (CI has none)."""
    if _cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded numpy Generator."""
    return np.random.default_rng(1234)
