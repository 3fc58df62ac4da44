"""The tamper-evident audit chain, computed in the core for every backend."""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from dataclasses import dataclass
from typing import Any, Iterable

from mltrail import codec
from mltrail.backend import AuditRepository
from mltrail.clock import isoformat, new_id, utcnow
from mltrail.domain import AuditEvent
from mltrail.errors import AlreadyExistsError, ConflictError

logger = logging.getLogger(__name__)

GENESIS_HASH = "0" * 64
MAX_APPEND_ATTEMPTS = 50


def digest_of(details: dict[str, Any]) -> str:
    """Return the SHA-256 of a change's canonical JSON."""
    return hashlib.sha256(codec.dumps(details).encode("utf-8")).hexdigest()


def event_hash(prev_hash: str, content: dict[str, Any]) -> str:
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"),
                           ensure_ascii=False)
    return hashlib.sha256((prev_hash + canonical).encode("utf-8")).hexdigest()


def _hashed_content(event: AuditEvent) -> dict[str, Any]:
    record = event.to_record()
    record.pop("hash")
    record.pop("prev_hash")
    return record


def append_event(
    repository: AuditRepository,
    *,
    actor: str,
    action: str,
    entity_type: str,
    entity_id: str,
    details: dict[str, Any],
) -> AuditEvent:
    """Append one event at the chain's tail, retrying when another writer got there first."""
    for attempt in range(MAX_APPEND_ATTEMPTS):
        last = repository.last()
        seq = 1 if last is None else last.seq + 1
        prev_hash = GENESIS_HASH if last is None else last.hash
        draft = AuditEvent(
            seq=seq, id=new_id(), actor=actor, action=action, entity_type=entity_type,
            entity_id=entity_id, at=utcnow(), digest=digest_of(details),
            prev_hash=prev_hash, hash="", details=details,
        )
        event = AuditEvent(**{**draft.__dict__,
                              "hash": event_hash(prev_hash, _hashed_content(draft))})
        try:
            repository.append(event)
            return event
        except AlreadyExistsError:
            logger.debug("audit seq %d taken, retrying (attempt %d)", seq, attempt + 1)
            time.sleep(random.uniform(0, 0.002 * (attempt + 1)))
    raise ConflictError(
        f"could not append an audit event for {entity_type} {entity_id!r} after "
        f"{MAX_APPEND_ATTEMPTS} attempts; the audit chain is under heavy contention",
        entity_id,
    )


@dataclass
class VerifyResult:
    """Outcome of an audit chain check; `broken_at` is the first bad seq."""

    ok: bool
    checked: int
    broken_at: int | None = None
    reason: str | None = None


def verify_chain(events: Iterable[AuditEvent]) -> VerifyResult:
    """Check seq continuity, each link to the previous hash, and each event's own hash."""
    expected_seq = 1
    prev_hash = GENESIS_HASH
    checked = 0
    for event in events:
        if event.seq != expected_seq:
            return VerifyResult(False, checked, expected_seq,
                                f"event {expected_seq} is missing or out of order "
                                f"(found seq {event.seq})")
        if event.prev_hash != prev_hash:
            return VerifyResult(False, checked, event.seq,
                                f"event {event.seq} does not link to event {event.seq - 1}")
        if event.digest != digest_of(event.details):
            return VerifyResult(False, checked, event.seq,
                                f"event {event.seq} details do not match its digest")
        if event.hash != event_hash(prev_hash, _hashed_content(event)):
            return VerifyResult(False, checked, event.seq,
                                f"event {event.seq} was altered (hash mismatch)")
        prev_hash = event.hash
        expected_seq += 1
        checked += 1
    return VerifyResult(True, checked)


def describe(event: AuditEvent) -> dict[str, Any]:
    return {
        "seq": event.seq,
        "at": isoformat(event.at),
        "actor": event.actor,
        "action": event.action,
        "entity_type": event.entity_type,
        "entity_id": event.entity_id,
        "details": event.details,
        "hash": event.hash,
    }
