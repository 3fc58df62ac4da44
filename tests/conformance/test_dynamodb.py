"""Run the conformance suite against the DynamoDB backend.

The store URL comes from $MLTRAIL_TEST_DYNAMODB_URL; moto's server gives one:
`python -m mltrail.conformance.emulators up dynamodb` prints it.
"""

from __future__ import annotations

import os

import pytest

from mltrail.conformance.suite import BackendConformance

URL_ENV = "MLTRAIL_TEST_DYNAMODB_URL"

pytestmark = pytest.mark.emulator("dynamodb")


@pytest.mark.skipif(
    not os.environ.get(URL_ENV),
    reason=f"no DynamoDB store: set ${URL_ENV}, for example to the URL printed by "
           "`python -m mltrail.conformance.emulators up dynamodb`")
class TestDynamoDBConformance(BackendConformance):
    @pytest.fixture(scope="class")
    @classmethod
    def mltrail_harness(cls):
        from mltrail.backends.dynamodb import DynamoDBBackend

        return DynamoDBBackend.conformance_harness(os.environ[URL_ENV])
