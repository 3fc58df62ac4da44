"""Run the conformance suite against the Firestore backend on a live emulator.

Start the emulator with `python -m mltrail.conformance.emulators up firestore`
and put the URL it prints in MLTRAIL_TEST_FIRESTORE_URL.
"""

from __future__ import annotations

import os

import pytest
from mltrail.conformance.suite import BackendConformance

URL_ENV = "MLTRAIL_TEST_FIRESTORE_URL"


@pytest.mark.emulator("firestore")
@pytest.mark.skipif(
    not os.environ.get(URL_ENV),
    reason=f"set {URL_ENV} to a firestore:// URL of a running emulator",
)
class TestFirestoreConformance(BackendConformance):
    @pytest.fixture(scope="class")
    @classmethod
    def mltrail_harness(cls):
        from mltrail.backends.firestore import FirestoreBackend

        harness = FirestoreBackend.conformance_harness(os.environ[URL_ENV])
        yield harness
        harness.close()
