"""Run the conformance suite against a store URL, as `mltrail conformance URL` does."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from mltrail.conformance import SUITE_VERSION


def run(
    url: str | None,
    *,
    junit_xml: str | None = None,
    json_report: str | None = None,
    list_only: bool = False,
    select: str | None = None,
    quiet: bool = False,
    extra_args: tuple[str, ...] = (),
) -> int:
    """Run (or list) the cases; return pytest's exit code, 0 when all passed."""
    import pytest

    from mltrail.conformance import url_suite

    with tempfile.TemporaryDirectory(prefix="mltrail-conformance-") as folder:
        # An empty ini file keeps the caller's pytest configuration out of the run.
        ini = Path(folder) / "pytest.ini"
        ini.write_text("[pytest]\n")
        args = [url_suite.__file__, "-c", str(ini), "--rootdir", folder,
                "-p", "no:cacheprovider", "-W", "ignore::DeprecationWarning"]
        if url:
            args += ["--mltrail-url", url]
        if list_only:
            args += ["--collect-only", "-q"]
        else:
            args += ["-q" if quiet else "-rfE", "--tb=short"]
        if junit_xml:
            args += ["--junitxml", os.path.abspath(junit_xml),
                     "-o", "junit_suite_name=mltrail-conformance-" + SUITE_VERSION]
        if json_report:
            args += ["--mltrail-json", os.path.abspath(json_report)]
        if select:
            args += ["-k", select]
        args += list(extra_args)
        return int(pytest.main(args))
