"""Conformance cases, grouped by area; combined in mltrail.conformance.suite."""
