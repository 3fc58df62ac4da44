"""The catalog: models, datasets and experiments across the namespaces one may read.

A catalog query is a list of terms, all of which an entry must match:

- `KEY=VALUE` or `tag:KEY=VALUE`: the tag KEY has exactly VALUE;
- `tag:KEY`: the entry has the tag KEY;
- `name:TEXT`: the name contains TEXT, ignoring case;
- `description:TEXT`: the description contains TEXT, ignoring case;
- any other TEXT: the name or the description contains it, ignoring case.

In a query string, terms are separated by spaces and a term with spaces is
quoted, as in a shell: `"image net" team=vision`.

Datasets are listed once per name with their newest version (by creation time,
as `Store.get_dataset` picks it); the query matches that version's fields.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from mltrail.backend import chunked
from mltrail.domain import Dataset, Experiment, Model
from mltrail.errors import InvalidInputError
from mltrail.store import Store

KINDS = ("model", "dataset", "experiment")
# Experiments whose runs are counted with one search; bounds the `in` list.
RUN_COUNT_BATCH = 100


@dataclass
class CatalogEntry:
    """One model, dataset name or experiment.

    A model entry has `latest_version` (the highest version number not
    deleted), `version_count` and `aliases`. A dataset entry has the newest
    version's id and `latest_version` string, and `version_count`. An
    experiment entry has `run_count`, the number of its runs not deleted.
    """

    kind: str
    id: str
    name: str
    namespace: str
    description: str | None
    tags: dict[str, str]
    created_at: datetime
    updated_at: datetime | None
    latest_version: int | str | None = None
    version_count: int | None = None
    aliases: dict[str, int] = field(default_factory=dict)
    run_count: int | None = None
    deleted_at: datetime | None = None

    def record(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass(frozen=True)
class Term:
    """One catalog query term; `field` is tag, name, description or text."""

    field: str
    text: str
    value: str | None = None

    def matches(self, name: str, description: str | None,
                tags: dict[str, str]) -> bool:
        if self.field == "tag":
            if self.value is None:
                return self.text in tags
            return tags.get(self.text) == self.value
        needle = self.text.casefold()
        in_name = needle in name.casefold()
        in_description = needle in (description or "").casefold()
        if self.field == "name":
            return in_name
        if self.field == "description":
            return in_description
        return in_name or in_description


def parse_query(query: str | Sequence[str] | None) -> list[Term]:
    """Parse a catalog query string, or a list of terms, into Terms."""
    if query is None:
        return []
    if isinstance(query, str):
        try:
            words = shlex.split(query)
        except ValueError as error:
            raise InvalidInputError(f"catalog query {query!r} is invalid: {error}; "
                                    "close the quote", query) from None
    else:
        words = list(query)
    return [_term(word) for word in words if isinstance(word, str) and word.strip()]


def _term(word: str) -> Term:
    prefix, colon, rest = word.partition(":")
    if colon and prefix in ("tag", "name", "description"):
        if not rest:
            raise InvalidInputError(f"catalog term {word!r} is empty after "
                                    f"'{prefix}:'; write e.g. '{prefix}:vision'", word)
        if prefix == "tag":
            key, equals, value = rest.partition("=")
            return Term("tag", key, value if equals else None)
        return Term(prefix, rest)
    key, equals, value = word.partition("=")
    if equals and key:
        return Term("tag", key, value)
    return Term("text", word)


def catalog(
    store: Store,
    *,
    query: str | Sequence[str] | None = None,
    kinds: Iterable[str] = KINDS,
    namespace: str | None = None,
    include_deleted: bool = False,
) -> list[CatalogEntry]:
    """List models, datasets and experiments that match `query`.

    Without `namespace`, every namespace the principal may read is searched;
    with it, only that one (and the reader role there is required). Entries are
    grouped by kind in the order of `kinds`, then sorted by name and namespace.
    """
    chosen = _check_kinds(kinds)
    terms = parse_query(query)

    def selected(name: str, description: str | None, tags: dict[str, str]) -> bool:
        return all(term.matches(name, description, tags) for term in terms)

    builders: dict[str, Callable[[], list[CatalogEntry]]] = {
        "model": lambda: _models(store, selected, namespace, include_deleted),
        "dataset": lambda: _datasets(store, selected, namespace),
        "experiment": lambda: _experiments(store, selected, namespace,
                                           include_deleted),
    }
    entries: list[CatalogEntry] = []
    for kind in chosen:
        found = builders[kind]()
        entries += sorted(found, key=lambda e: (e.name.casefold(), e.namespace, e.id))
    return entries


def _check_kinds(kinds: Iterable[str]) -> list[str]:
    if isinstance(kinds, str):
        kinds = [kinds]
    chosen = list(dict.fromkeys(kinds))
    for kind in chosen:
        if kind not in KINDS:
            raise InvalidInputError(
                f"catalog kind {kind!r} is invalid; expected one of {', '.join(KINDS)}",
                kind)
    if not chosen:
        raise InvalidInputError(f"no catalog kinds given; expected some of "
                                f"{', '.join(KINDS)}", chosen)
    return chosen


def _models(store: Store, selected: Callable, namespace: str | None,
            include_deleted: bool) -> list[CatalogEntry]:
    entries = []
    listed = store.list_models(namespace=namespace, include_deleted=include_deleted)
    for model in listed:
        if not selected(model.name, model.description, model.tags):
            continue
        versions = store.list_model_versions(model.id)
        entry = _entry("model", model)
        entry.latest_version = max((v.version for v in versions), default=None)
        entry.version_count = len(versions)
        entry.aliases = dict(sorted(model.aliases.items()))
        entry.deleted_at = model.deleted_at
        entries.append(entry)
    return entries


def _datasets(store: Store, selected: Callable,
              namespace: str | None) -> list[CatalogEntry]:
    entries = []
    for versions in _dataset_groups(store.list_datasets(namespace=namespace)):
        newest = max(versions, key=lambda d: (d.created_at, d.id))
        if not selected(newest.name, newest.description, newest.tags):
            continue
        entry = _entry("dataset", newest)
        entry.latest_version = newest.version
        entry.version_count = len(versions)
        entries.append(entry)
    return entries


def _dataset_groups(datasets: Iterator[Dataset]) -> Iterator[list[Dataset]]:
    """Group datasets by (namespace, name); the listing is sorted by name."""
    current_name = None
    groups: dict[str, list[Dataset]] = {}
    for dataset in datasets:
        if dataset.name != current_name:
            yield from groups.values()
            groups = {}
            current_name = dataset.name
        groups.setdefault(dataset.namespace, []).append(dataset)
    yield from groups.values()


def _experiments(store: Store, selected: Callable, namespace: str | None,
                 include_deleted: bool) -> list[CatalogEntry]:
    entries = {}
    listed = store.list_experiments(namespace=namespace,
                                    include_deleted=include_deleted)
    for experiment in listed:
        if selected(experiment.name, experiment.description, experiment.tags):
            entry = _entry("experiment", experiment)
            entry.run_count = 0
            entry.deleted_at = experiment.deleted_at
            entries[experiment.id] = entry
    for batch in chunked(list(entries), RUN_COUNT_BATCH):
        for run in store.iter_runs(experiment_ids=batch):
            entries[run.experiment_id].run_count += 1
    return list(entries.values())


def _entry(kind: str, entity: Model | Dataset | Experiment) -> CatalogEntry:
    return CatalogEntry(kind=kind, id=entity.id, name=entity.name,
                        namespace=entity.namespace, description=entity.description,
                        tags=dict(entity.tags), created_at=entity.created_at,
                        updated_at=entity.updated_at)
