"""Test configuration.

TRITON_INTERPRET=1 is set before shufflekern (and so any Triton kernel) is imported, so that the Triton
kernels run on CPU tensors: no GPU is available in CI.  With a GPU present the Triton kernels run on it.
"""
import os

import pytest

try:
    import torch
    _has_gpu = torch.cuda.is_available()
except ImportError:  # pragma: no cover
    _has_gpu = False
if not _has_gpu:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import shufflekern  # noqa: E402,F401

slow_enabled = os.environ.get("SHUFFLEKERN_SLOW_TESTS") == "1"


def pytest_collection_modifyitems(config, items):
    if slow_enabled or "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="slow test: run with -m slow or SHUFFLEKERN_SLOW_TESTS=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def pytest_runtest_setup(item):
    if "cuda" in item.keywords and not _has_gpu:
        pytest.skip("needs a CUDA GPU (none present)")
