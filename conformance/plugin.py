"""pytest plugin of the conformance suite, registered with the `pytest11` entry point.

It stays inert until a conformance case runs. It provides:

- the fixtures `mltrail_harness` (from `--mltrail-url` or $MLTRAIL_CONFORMANCE_URL;
  override it to supply your own harness), `backend` (a fresh store per case)
  and `store` (a `mltrail.Store` over it);
- the marker `mltrail_requires(capability, ...)`: a case whose capability the
  backend does not declare is skipped with the capability named; each case's
  area is the `area` attribute of the case class that defines it;
- a summary grouped by area at the end of the run, and `--mltrail-json PATH`
  for a JSON report naming the suite version.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections import Counter, defaultdict
from typing import Any, Iterator

import pytest

from mltrail.conformance import SUITE_VERSION

URL_ENV = "MLTRAIL_CONFORMANCE_URL"

# Capability names a case can require, and how to read each from Capabilities.
CAPABILITY_CHECKS = {
    "multi_process": lambda caps: caps.multi_process,
    "persistent": lambda caps: caps.persistent,
    "transactions": lambda caps: caps.transactions,
    "conditional_writes": lambda caps: caps.conditional_writes or caps.transactions,
}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("mltrail", "mltrail conformance suite")
    group.addoption("--mltrail-url", default=None,
                    help="store URL whose backend the conformance suite tests "
                         f"(default: ${URL_ENV})")
    group.addoption("--mltrail-json", default=None, metavar="PATH",
                    help="write a JSON report of the conformance cases to PATH")
    group.addoption("--mltrail-summary-file", default=None, help=argparse.SUPPRESS)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "mltrail_requires(*capabilities): capabilities a conformance case needs; "
        f"one of {', '.join(sorted(CAPABILITY_CHECKS))}")
    config._mltrail_report = _Report(config)  # type: ignore[attr-defined]
    config.pluginmanager.register(config._mltrail_report, "mltrail-report")


@pytest.fixture(scope="session")
def mltrail_harness(pytestconfig: pytest.Config):
    """The harness under test, built from the backend registered for the URL."""
    from mltrail.conformance.harness import harness_for_url

    url = pytestconfig.getoption("--mltrail-url") or os.environ.get(URL_ENV)
    if not url:
        pytest.skip(f"no store URL: pass --mltrail-url or set ${URL_ENV}")
    return harness_for_url(url)


@pytest.fixture
def backend(mltrail_harness, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh, empty store for one case, removed afterwards."""
    instance = mltrail_harness.create()
    _skip_missing_capabilities(request, instance)
    request.config._mltrail_report.backend_name = instance.capabilities.name
    try:
        yield instance
    finally:
        mltrail_harness.destroy(instance)


@pytest.fixture
def store(backend):
    from mltrail.store import Store

    return Store(backend, actor="conformance")


def _skip_missing_capabilities(request: pytest.FixtureRequest, instance: Any) -> None:
    for marker in request.node.iter_markers("mltrail_requires"):
        for capability in marker.args:
            check = CAPABILITY_CHECKS.get(capability)
            if check is None:
                raise pytest.UsageError(f"unknown capability {capability!r} in "
                                        f"{request.node.nodeid}")
            if not check(instance.capabilities):
                pytest.skip(f"requires capability {capability!r}, which backend "
                            f"{instance.capabilities.name!r} declares missing")


class _Report:
    """Collects outcomes of conformance cases and prints them grouped by area."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        # One entry per case, keyed by node id: a failing setup or teardown
        # turns a case into a failure without counting it twice.
        self.results_by_case: dict[str, dict[str, Any]] = {}
        self.started = time.time()
        self.backend_name: str | None = None

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        area = report.user_properties and dict(report.user_properties).get("mltrail_area")
        if not area:
            return
        if report.when != "call" and report.outcome == "passed":
            return
        known = self.results_by_case.get(report.nodeid)
        if known is not None and known["outcome"] == "failed":
            return
        reason = None
        if report.skipped and isinstance(report.longrepr, tuple):
            reason = report.longrepr[2].removeprefix("Skipped: ")
        self.results_by_case[report.nodeid] = {
            "case": report.nodeid, "area": area, "outcome": report.outcome,
            "phase": report.when, "reason": reason, "seconds": round(report.duration, 4)}

    @property
    def results(self) -> list[dict[str, Any]]:
        return list(self.results_by_case.values())

    def counts(self) -> Counter:
        return Counter(result["outcome"] for result in self.results)

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if not self.results:
            return
        write = terminalreporter.write_line
        write("")
        write(f"mltrail conformance suite {SUITE_VERSION} -- backend "
              f"{self.backend_name or '?'}")
        by_area: dict[str, Counter] = defaultdict(Counter)
        for result in self.results:
            by_area[result["area"]][result["outcome"]] += 1
        for area in sorted(by_area):
            counts = by_area[area]
            write(f"  {area:<22} {counts['passed']:>4} passed {counts['failed']:>3} failed "
                  f"{counts['skipped']:>3} skipped")
        reasons = Counter(r["reason"] for r in self.results if r["outcome"] == "skipped")
        for reason, count in sorted(reasons.items()):
            write(f"  skipped {count}: {reason}")
        counts = self.counts()
        path = self.config.getoption("--mltrail-json", default=None)
        if path:
            self.write_json(path)
            write(f"JSON report written to {path}")
        internal = self.config.getoption("--mltrail-summary-file", default=None)
        if internal:
            self.write_json(internal)
        write(f"{counts['passed']} passed, {counts['failed']} failed, "
              f"{counts['skipped']} skipped")

    def write_json(self, path: str) -> None:
        counts = self.counts()
        payload = {
            "suite": "mltrail-conformance",
            "suite_version": SUITE_VERSION,
            "backend": self.backend_name,
            "python": platform.python_version(),
            "started_at": self.started,
            "duration_seconds": round(time.time() - self.started, 3),
            "passed": counts["passed"],
            "failed": counts["failed"],
            "skipped": counts["skipped"],
            "cases": self.results,
        }
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=2)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tag each conformance case with its area, also as a `-k` keyword."""
    for item in items:
        cls = getattr(item, "cls", None)
        if cls is None or not any(hasattr(k, "area") for k in cls.__mro__):
            continue
        from mltrail.conformance.suite import area_of

        area = area_of(cls, getattr(item, "originalname", item.name))
        if area is not None:
            item.user_properties.append(("mltrail_area", area))
            item.extra_keyword_matches.add(f"area_{area.replace('-', '_')}")
