"""The suite bound to a store URL; `mltrail conformance URL` runs this module.

Its name does not start with `test_`, so ordinary test runs never collect it.
"""

from __future__ import annotations

from mltrail.conformance.suite import BackendConformance


class TestConformanceAtUrl(BackendConformance):
    """Every case, against fresh stores from the harness of --mltrail-url."""
