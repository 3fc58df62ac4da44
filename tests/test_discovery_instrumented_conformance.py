"""The whole conformance suite passes through an InstrumentedBackend.

This shows that the telemetry proxy changes no behaviour of the backend it
wraps, raw hooks and capability checks included.
"""

from __future__ import annotations

import pytest

from mltrail.backends.memory import MemoryConformanceHarness
from mltrail.conformance.suite import BackendConformance
from mltrail.discovery import InstrumentedBackend


class InstrumentedMemoryHarness(MemoryConformanceHarness):
    """Memory stores, each wrapped in an InstrumentedBackend."""

    def create(self):
        return InstrumentedBackend(super().create())

    def destroy(self, backend):
        super().destroy(backend.target)


class TestInstrumentedMemoryConformance(BackendConformance):
    @pytest.fixture(scope="class")
    @classmethod
    def mltrail_harness(cls):
        return InstrumentedMemoryHarness()
