"""Shared pytest set-up: the fixture modules every layer may use, and the ``gpu`` marker, which skips
its tests unless CUDA is available.

(The repo root, tests/core and tests/train are put on sys.path by ``pythonpath`` in pyproject.toml.
This file lives in tests/, not the repo root: the root has the pack's ``__init__.py``, so a root
conftest would be imported as a submodule of the pack. pytest reads ``pytest_plugins`` only here,
in the top-level conftest.)
"""

import pytest

# Fixture modules, by name: the tiny insightface pack, its analyzers and the dlib backend / encoder.
pytest_plugins = ["conftest_faces"]


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
