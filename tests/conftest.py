"""Fixtures shared by every tests folder live in ``tests/support.py``."""

from __future__ import annotations

from support import pmg_structures, shared_data, skip_gpu_tests_without_cuda

__all__ = ["pmg_structures", "shared_data"]


def pytest_collection_modifyitems(config, items):
    skip_gpu_tests_without_cuda(items)
