"""Find backends by URL scheme through the `mltrail.backends` entry point group.

Built-in backends are listed in `BUILTIN_BACKENDS` too, so an unknown scheme or
a missing driver gets a message with the install command even when the
package metadata is unavailable (for example when running from a source tree).
"""

from __future__ import annotations

import importlib
import os
from functools import lru_cache
from importlib.metadata import entry_points
from urllib.parse import urlsplit

from mltrail.backend import Backend
from mltrail.errors import BackendUnavailableError, InvalidInputError

ENTRY_POINT_GROUP = "mltrail.backends"
STORE_ENV = "MLTRAIL_STORE"

# scheme -> (import target, extra that installs its driver), sorted by scheme.
BUILTIN_BACKENDS: dict[str, tuple[str, str | None]] = {
    "cassandra": ("mltrail.backends.cassandra:CassandraBackend", "cassandra"),
    "dynamodb": ("mltrail.backends.dynamodb:DynamoDBBackend", "dynamodb"),
    "firestore": ("mltrail.backends.firestore:FirestoreBackend", "firestore"),
    "local": ("mltrail.backends.local:LocalBackend", None),
    "memory": ("mltrail.backends.memory:MemoryBackend", None),
    "mongodb": ("mltrail.backends.mongodb:MongoBackend", "mongodb"),
    "mongodb+srv": ("mltrail.backends.mongodb:MongoBackend", "mongodb"),
}


class BackendConflictError(InvalidInputError):
    """Two installed distributions register the same scheme for different classes."""


@lru_cache(maxsize=1)
def available_backends() -> dict[str, str]:
    """Return scheme -> import target for every registered backend, sorted by scheme."""
    found = {scheme: target for scheme, (target, _) in BUILTIN_BACKENDS.items()}
    builtin = set(found)
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        known = found.get(entry.name)
        if known is not None and known != entry.value:
            origin = "built in" if entry.name in builtin else "registered"
            raise BackendConflictError(
                f"backend scheme {entry.name!r} is {origin} as {known!r} but a "
                f"distribution registers {entry.value!r}; uninstall one of them or "
                "pick another scheme",
                entry.name,
            )
        found[entry.name] = entry.value
    return dict(sorted(found.items()))


def default_store_url() -> str:
    """Return the local store in the user's data directory."""
    from platformdirs import user_data_dir

    return f"local://{os.path.join(user_data_dir('mltrail'), 'store.db')}"


def resolve_url(url: str | None) -> str:
    """Return `url`, else $MLTRAIL_STORE, else the default local store."""
    return url or os.environ.get(STORE_ENV) or default_store_url()


def load_backend_class(scheme: str) -> type[Backend]:
    backends = available_backends()
    target = backends.get(scheme)
    if target is None:
        known = ", ".join(f"{s}://" for s in backends)
        raise InvalidInputError(
            f"unknown store scheme {scheme!r}; known schemes: {known}", scheme
        )
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        extra = BUILTIN_BACKENDS.get(scheme, (None, None))[1]
        hint = f"; install it with: pip install 'mltrail[{extra}]'" if extra else ""
        raise BackendUnavailableError(
            f"the {scheme!r} backend could not be imported ({error}){hint}", scheme
        ) from error
    return getattr(module, class_name)


def open_backend(url: str | None = None) -> Backend:
    """Build the backend for `url` (see `resolve_url`) and initialise its store."""
    url = resolve_url(url)
    scheme = urlsplit(url).scheme
    if not scheme:
        raise InvalidInputError(
            f"store URL {url!r} has no scheme; expected e.g. local:///path/store.db", url
        )
    backend = load_backend_class(scheme).from_url(url)
    backend.initialize()
    return backend
