"""Pseudonymisation of configured identifying fields with keyed HMAC-SHA256.

A configured field (`trainer`, or `tags.<key>` on any entity) is stored as
`pseudonym:<32 hex digits>`, the HMAC of the original value under a secret key
that comes from the environment and is never stored. Holders of the key can
still search by the original value: the core rewrites filters on those fields
to the pseudonym before they reach the store. Without the key nobody can
reverse or even test a value.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass, replace
from typing import Any, Mapping

from mltrail.config import PseudonymConfig
from mltrail.errors import InvalidInputError
from mltrail.query.ast import And, Compare, Expr, In, Not, Or

PREFIX = "pseudonym:"


@dataclass(frozen=True)
class Pseudonymizer:
    """Replaces the values of configured fields; a no-op when no field is configured."""

    fields: frozenset[str] = frozenset()
    key: bytes | None = None
    key_env: str = "MLTRAIL_PSEUDONYM_KEY"

    @classmethod
    def from_config(cls, config: PseudonymConfig) -> Pseudonymizer:
        raw = os.environ.get(config.key_env)
        return cls(frozenset(config.fields), raw.encode("utf-8") if raw else None,
                   config.key_env)

    @property
    def active(self) -> bool:
        return bool(self.fields)

    def pseudonym(self, value: str) -> str:
        if value.startswith(PREFIX):
            return value
        if self.key is None:
            raise InvalidInputError(
                f"pseudonymisation is configured for {sorted(self.fields)} but the key "
                f"variable ${self.key_env} is not set; set it before writing or searching "
                "those fields", self.key_env)
        digest = hmac.new(self.key, value.encode("utf-8"), hashlib.sha256).hexdigest()
        return PREFIX + digest[:32]

    def trainer(self, value: str | None) -> str | None:
        if value is None or "trainer" not in self.fields:
            return value
        return self.pseudonym(value)

    def tags(self, tags: Mapping[str, str] | None) -> dict[str, str] | None:
        if tags is None or not self.fields:
            return None if tags is None else dict(tags)
        return {key: self.pseudonym(value) if f"tags.{key}" in self.fields else value
                for key, value in tags.items()}

    def rewrite(self, expr: Expr | None) -> Expr | None:
        """Replace literal values compared with pseudonymised fields by their pseudonyms."""
        if expr is None or not self.fields:
            return expr
        if isinstance(expr, (And, Or)):
            return replace(expr, items=tuple(self.rewrite(item) for item in expr.items))
        if isinstance(expr, Not):
            return Not(self.rewrite(expr.item))
        name = ".".join(getattr(expr, "field", ()))
        if name not in self.fields:
            return expr
        if isinstance(expr, Compare) and expr.op in ("=", "!=") and \
                isinstance(expr.value, str):
            return replace(expr, value=self.pseudonym(expr.value))
        if isinstance(expr, In):
            values = tuple(self.pseudonym(v) if isinstance(v, str) else v
                           for v in expr.values)
            return replace(expr, values=values)
        return expr


NO_PSEUDONYMS = Pseudonymizer()


def describe(pseudonymizer: Pseudonymizer) -> dict[str, Any]:
    return {"fields": sorted(pseudonymizer.fields), "key_set": pseudonymizer.key is not None}
