"""Run the conformance suite against the built-in memory and local backends."""

from __future__ import annotations

import pytest

from mltrail.backends.local import LocalConformanceHarness
from mltrail.backends.memory import MemoryConformanceHarness
from mltrail.conformance.suite import BackendConformance


class TestMemoryConformance(BackendConformance):
    @pytest.fixture(scope="class")
    @classmethod
    def mltrail_harness(cls):
        return MemoryConformanceHarness()


class TestLocalConformance(BackendConformance):
    @pytest.fixture(scope="class")
    @classmethod
    def mltrail_harness(cls, tmp_path_factory):
        folder = tmp_path_factory.mktemp("local-conformance")
        return LocalConformanceHarness(f"local://{folder}/store.db")
