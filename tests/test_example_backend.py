"""Run the conformance suite against the example backend in examples/jsondir-backend.

The example is a distribution of its own, as a third-party backend would be.
`make test` installs it with `pip install -e examples/jsondir-backend`; without
that install these tests are skipped.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mltrail.conformance.suite import BackendConformance
from mltrail.registry import available_backends, load_backend_class

INSTALL_HINT = ("the example backend is not installed; run: "
                "pip install -e examples/jsondir-backend")

jsondir = pytest.importorskip("mltrail_jsondir", reason=INSTALL_HINT)
if "jsondir" not in available_backends():
    # Importable from a source tree, but without package metadata the core cannot
    # find it, and the suite's worker processes open stores by URL.
    pytest.skip(f"the jsondir:// scheme is not registered; {INSTALL_HINT}",
                allow_module_level=True)

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "jsondir-backend"


class TestJsonDirExampleConformance(BackendConformance):
    @pytest.fixture(scope="class")
    @classmethod
    def mltrail_harness(cls, tmp_path_factory):
        folder = tmp_path_factory.mktemp("jsondir-example")
        return jsondir.JsonDirBackend.conformance_harness(f"jsondir://{folder}")


def test_scheme_loads_example_class():
    assert load_backend_class("jsondir") is jsondir.JsonDirBackend


def test_example_unit_tests_pass():
    """Run the example's own tests, which cover what the suite does not."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         str(EXAMPLE / "tests" / "test_jsondir.py")],
        cwd=EXAMPLE, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
