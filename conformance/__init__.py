"""The conformance suite that every mltrail backend must pass.

Backend authors subclass `mltrail.conformance.suite.BackendConformance` in a
test module and supply a `mltrail_harness` fixture (see
`mltrail.conformance.harness.Harness`), or run `mltrail conformance URL`
against a store whose backend class provides `conformance_harness(url)`.
Reports name `SUITE_VERSION`, so a backend can state which version it passes.
"""

SUITE_VERSION = "1.1.0"

__all__ = ["SUITE_VERSION"]
