"""Run the whole mltrail conformance suite against the jsondir backend."""

from __future__ import annotations

import pytest

from mltrail.conformance.suite import BackendConformance

from mltrail_jsondir import JsonDirBackend


class TestJsonDirConformance(BackendConformance):
    @pytest.fixture(scope="class")
    @classmethod
    def mltrail_harness(cls, tmp_path_factory):
        folder = tmp_path_factory.mktemp("jsondir-conformance")
        return JsonDirBackend.conformance_harness(f"jsondir://{folder}")
