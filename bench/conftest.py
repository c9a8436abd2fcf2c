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
    if config.getoption("--full"):
        return
    skip = pytest.mark.skip(reason="large case: run with --full")
    for item in items:
        if "full" in item.keywords:
            item.add_marker(skip)
