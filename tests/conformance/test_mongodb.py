"""Run the conformance suite against a MongoDB server named by MLTRAIL_TEST_MONGODB_URL.

Start the test server with `python -m mltrail.conformance.emulators up mongodb`,
which prints the URL to export.
"""

from __future__ import annotations

import os

import pytest
from mltrail.conformance.suite import BackendConformance

URL_ENV = "MLTRAIL_TEST_MONGODB_URL"

pytestmark = pytest.mark.emulator("mongodb")


@pytest.mark.skipif(not os.environ.get(URL_ENV),
                    reason=f"set {URL_ENV} to a MongoDB URL, e.g. the one printed by "
                           "`python -m mltrail.conformance.emulators up mongodb`")
class TestMongoConformance(BackendConformance):
    @pytest.fixture(scope="class")
    @classmethod
    def mltrail_harness(cls):
        pytest.importorskip("pymongo", reason="the mongodb extra is not installed")
        from mltrail.backends.mongodb import MongoBackend

        harness = MongoBackend.conformance_harness(os.environ[URL_ENV])
        yield harness
        harness.close()
