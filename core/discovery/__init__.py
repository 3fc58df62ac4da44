"""Discovery and insight over any store: catalog, facets, run timelines,
shared configurations and store telemetry.

Everything here is built on the Store and the backend contract, so it works
the same on every backend. The command-line commands are in
`mltrail.discovery.cli`; OpenTelemetry export is in `mltrail.discovery.otel`.
"""

from mltrail.discovery.catalog import CatalogEntry, catalog, parse_query
from mltrail.discovery.configs import (
    Configuration, ParamComparison, compare_params, configuration_hash,
    configuration_of, forget_configuration, get_configuration,
    rebuild_configuration_index, record_configuration, runs_with_same_configuration,
)
from mltrail.discovery.facets import (
    Facet, FacetedPage, FacetValue, facet_clause, facets, search_with_facets,
)
from mltrail.discovery.telemetry import (
    InstrumentedBackend, Telemetry, instrument, telemetry_of, uninstrument,
)
from mltrail.discovery.timeline import (
    MetricSummary, Timeline, TimelineEntry, render_text, timeline,
)

__all__ = [
    "CatalogEntry", "Configuration", "Facet", "FacetValue", "FacetedPage",
    "InstrumentedBackend", "MetricSummary", "ParamComparison", "Telemetry", "Timeline",
    "TimelineEntry", "catalog", "compare_params", "configuration_hash",
    "configuration_of", "facet_clause", "facets", "forget_configuration",
    "get_configuration", "instrument",
    "parse_query", "rebuild_configuration_index", "record_configuration",
    "render_text", "runs_with_same_configuration", "search_with_facets",
    "telemetry_of", "timeline", "uninstrument",
]
