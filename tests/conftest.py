"""Shared pytest set-up: the ``gpu`` marker skips its tests unless CUDA is available.

(The repo root is put on sys.path by ``pythonpath`` in pyproject.toml. This file lives in
tests/, not the repo root: the root has the pack's ``__init__.py``, so a root conftest would be
imported as a submodule of the pack.)
"""

import pytest


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in gpu_items:
        item.add_marker(skip)
