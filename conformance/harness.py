"""The interface a backend author supplies to run the conformance suite.

A harness builds a fresh, empty store for each case and offers raw read and
write hooks that bypass the repositories, so the suite can check stored data
against data written independently of the code under test.

Records exchanged with the raw hooks are in the core's portable form: the dict
of `Entity.to_record()` for `experiment`, `run`, `dataset`, `model` and
`model_version` (keyed by id), and of `AuditEvent.to_record()` for `audit`
(keyed by seq). The harness converts between that form and the store's own
layout with code that does not call the backend's repositories.

A backend makes `mltrail conformance URL` work by giving its backend class a
class method `conformance_harness(url) -> Harness`. The hook is looked up by
name, so backend modules never import this package.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from mltrail.backend import Backend

RAW_KINDS = ("experiment", "run", "dataset", "model", "model_version", "audit")


@runtime_checkable
class Harness(Protocol):
    """A backend under test; see the module docstring."""

    def create(self) -> Backend:
        """Return a new, empty, initialised store that no other case uses."""

    def destroy(self, backend: Backend) -> None:
        """Remove everything `create` made and close the backend."""

    def store_url(self, backend: Backend) -> str:
        """Return a URL that opens this same store from another process."""

    def raw_read(self, backend: Backend, kind: str, key: Any) -> dict[str, Any] | None:
        """Return the stored record of `kind` under `key` in portable form, or None."""

    def raw_write(self, backend: Backend, kind: str, record: dict[str, Any]) -> None:
        """Store or overwrite a record of `kind` given in portable form."""


def harness_for_url(url: str) -> Harness:
    """Build the harness that the backend registered for `url`'s scheme provides."""
    from urllib.parse import urlsplit

    from mltrail.errors import UnsupportedCapabilityError
    from mltrail.registry import load_backend_class

    backend_class = load_backend_class(urlsplit(url).scheme)
    factory = getattr(backend_class, "conformance_harness", None)
    if factory is None:
        raise UnsupportedCapabilityError(
            f"backend {backend_class.__name__} has no conformance_harness(url) class "
            "method, so the suite cannot create fresh stores for it; see "
            "docs/writing-a-backend.md", backend_class.__name__)
    return factory(url)
