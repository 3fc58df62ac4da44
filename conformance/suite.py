"""The whole conformance suite as one class to subclass in a pytest module.

    from mltrail.conformance.suite import BackendConformance

    class TestMyStore(BackendConformance):
        @pytest.fixture(scope="class")
        @classmethod
        def mltrail_harness(cls):
            return MyHarness()

The base classes are never collected on their own: their names do not start
with `Test`, and pytest only collects the subclass.
"""

from __future__ import annotations

from mltrail.conformance.cases.capabilities import BlobCases, CapabilityCases, ListingCases
from mltrail.conformance.cases.concurrency import ConcurrencyCases
from mltrail.conformance.cases.differential import DifferentialCases
from mltrail.conformance.cases.discovery import DiscoveryCases
from mltrail.conformance.cases.entities import EntityCases, RawHookCases
from mltrail.conformance.cases.graph import AuditCases, LineageCases, ModelCases
from mltrail.conformance.cases.lifecycle import (
    DeletionCases, ParamCases, RetryCases, StatusCases,
)
from mltrail.conformance.cases.metrics import MetricCases
from mltrail.conformance.cases.operations import OperationCases
from mltrail.conformance.cases.queries import FilterCases, OrderCases, PaginationCases
from mltrail.conformance.cases.telemetry import TelemetryCases
from mltrail.conformance.cases.templates import TemplateCases
from mltrail.conformance.cases.values import LimitCases, TimeCases, ValueCases

CASE_CLASSES = (
    EntityCases, RawHookCases, ValueCases, LimitCases, TimeCases, MetricCases,
    FilterCases, OrderCases, PaginationCases, TemplateCases, StatusCases, ParamCases,
    RetryCases, DeletionCases, ModelCases, LineageCases, AuditCases, ConcurrencyCases,
    DifferentialCases, CapabilityCases, BlobCases, ListingCases, OperationCases,
    DiscoveryCases, TelemetryCases,
)


class BackendConformance(*CASE_CLASSES):
    """Every conformance case; subclass it and provide `mltrail_harness`."""


def area_of(cls: type, name: str) -> str | None:
    """Return the area of the case class in `cls`'s MRO that defines `name`."""
    for klass in cls.__mro__:
        if name in vars(klass) and hasattr(klass, "area"):
            return klass.area
    return None


__all__ = ["BackendConformance", "CASE_CLASSES", "area_of"]
