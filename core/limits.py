"""Documented limits, checked by the core before any backend call.

They keep every record inside the smallest item limit of the supported stores
(DynamoDB's 400 KB item, Firestore's 1 MiB document), so a write valid on one
backend is valid on all of them: a run at every limit at once is about 250 KB
as canonical JSON.
"""

MAX_NAME_LENGTH = 256
"""Characters in an experiment, run, dataset, model or alias name."""

MAX_KEY_LENGTH = 250
"""Characters in one param, tag, metric or attribute key segment."""

MAX_TAG_VALUE_LENGTH = 5_000
"""Characters in one tag value."""

MAX_STRING_LENGTH = 8_192
"""Characters in a free-text field such as a description, URI or error message."""

MAX_PARAMS_BYTES = 131_072
"""UTF-8 bytes of a run's whole parameter set as canonical JSON."""

MAX_ATTRIBUTES_BYTES = 16_384
"""UTF-8 bytes of each other free-form field (tags, environment, resources, ...)."""

MAX_PARAMS_PER_CALL = 1_000
"""Leaf params in one `log_params` call."""

MAX_METRIC_BATCH = 10_000
"""Metric points in one backend append; the Python API splits larger batches."""

MAX_STEP = 2**63 - 1
"""Largest metric step; steps are non-negative integers."""

MAX_PAGE_SIZE = 10_000
"""Items in one page of a search."""

MAX_LINEAGE_DEPTH = 100
"""Hops in one lineage traversal."""
