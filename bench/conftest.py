"""pytest configuration of the microbenchmarks: `--full` adds the cases marked `full`."""
import os
import sys

import pytest

_here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _here)                   # harness
sys.path.insert(1, os.path.dirname(_here))  # the source tree (in-place build), ahead of site-packages


def pytest_addoption(parser):
    parser.addoption("--full", action="store_true", default=False, help="also run the large cases")


def pytest_configure(config):
    config.addinivalue_line("markers", "full: large case, run only with --full")


def pytest_collection_modifyitems(config, items):
    if os.environ.get("SHUFFLEKERN_BENCH_REVERSE") == "1":
        items.reverse()  # alternate passes of `python -m shufflekern bench` run the providers the other way
    if config.getoption("--full"):
        return
    skip = pytest.mark.skip(reason="large case: run with --full")
    for item in items:
        if "full" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _warm_machine():
    """~1 s of multi-threaded work before the first case: the first case of a session otherwise pays for
    the thread pool's start and the cores' clock ramp (16x116x28x28 NCHW fwd measured 0.251 ms in the first
    pass and 0.127 ms in the next)."""
    import time

    import torch
    a = torch.randn(512, 512)
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < 1.0:
        (a @ a).add_(a.clone())
    yield
    import harness
    harness.flush()  # the last case's providers (the others are timed when the next case begins)
