"""Run the conformance suite against a store URL, as `mltrail conformance URL` does."""

from __future__ import annotations

import json
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
    """Run (or list) the cases; return pytest's exit code, 0 when all passed.

    After a run, the last line printed is `N passed, N failed, N skipped`.
    """
    import pytest

    from mltrail.conformance import url_suite

    with tempfile.TemporaryDirectory(prefix="mltrail-conformance-") as folder:
        report_path = str(Path(folder) / "summary.json")
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
        if not list_only:
            args += ["--mltrail-summary-file", os.path.abspath(report_path)]
        if select:
            args += ["-k", select]
        args += list(extra_args)
        code = int(pytest.main(args))
        if not list_only and Path(report_path).exists():
            report = json.loads(Path(report_path).read_text(encoding="utf-8"))
            print(f"{report['passed']} passed, {report['failed']} failed, "
                  f"{report['skipped']} skipped", flush=True)
        return code
