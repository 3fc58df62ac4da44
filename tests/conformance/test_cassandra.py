"""Run the conformance suite against a Cassandra server.

Start one with `python -m mltrail.conformance.emulators up cassandra` and export
the URL it prints as $MLTRAIL_TEST_CASSANDRA_URL.
"""

from __future__ import annotations

import os

import pytest

from mltrail.conformance.suite import BackendConformance

URL_ENV = "MLTRAIL_TEST_CASSANDRA_URL"


def cassandra_url() -> str | None:
    # The variable name spelled with the scheme in lowercase works too.
    return os.environ.get(URL_ENV) or os.environ.get("MLTRAIL_TEST_cassandra_URL")


@pytest.mark.emulator("cassandra")
@pytest.mark.skipif(cassandra_url() is None,
                    reason=f"no Cassandra server: set ${URL_ENV} to the URL printed by "
                           "`python -m mltrail.conformance.emulators up cassandra`")
class TestCassandraConformance(BackendConformance):
    @pytest.fixture(scope="class")
    @classmethod
    def mltrail_harness(cls):
        pytest.importorskip("cassandra", reason="cassandra-driver is not installed; "
                                                "pip install 'mltrail[cassandra]'")
        from mltrail.backends.cassandra import CassandraBackend

        return CassandraBackend.conformance_harness(cassandra_url())
