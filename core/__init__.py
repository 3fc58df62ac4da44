"""mltrail: record ML model metadata, evaluation histories and lineage in NoSQL stores.

    import mltrail

    store = mltrail.connect("local:///tmp/store.db")
    with mltrail.start_run(store, "digits", params={"lr": 0.01}) as run:
        run.log_metric("val_acc", 0.93, step=1)
"""

from mltrail.api import ActiveRun, connect, start_run
from mltrail.domain import (
    AuditEvent, Dataset, EdgeType, Experiment, LineageEdge, LineageNode, MetricPoint,
    Model, ModelVersion, NodeKind, Run, RunStatus,
)
from mltrail.errors import (
    AlreadyExistsError, BackendUnavailableError, ConflictError, InvalidInputError,
    MltrailError, NotFoundError, PermissionDeniedError, QuerySyntaxError,
    UnsupportedCapabilityError,
)
from mltrail.store import Store

__version__ = "0.1.0"

__all__ = [
    "ActiveRun", "AlreadyExistsError", "AuditEvent", "BackendUnavailableError",
    "ConflictError", "Dataset", "EdgeType", "Experiment", "InvalidInputError",
    "LineageEdge", "LineageNode", "MetricPoint", "MltrailError", "Model", "ModelVersion",
    "NodeKind", "NotFoundError", "PermissionDeniedError", "QuerySyntaxError", "Run",
    "RunStatus", "Store", "UnsupportedCapabilityError", "__version__", "connect",
    "start_run",
]
