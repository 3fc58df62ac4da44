"""Role-based access control, checked in the core before the backend writes.

Roles are ordered: a reader may read, a writer may also record (create runs,
log params and metrics, register datasets and models, set aliases), and an
admin may also delete, restore, purge, import and repair. Roles are granted per
namespace; `"*"` grants a role in every namespace. With access control turned
off, every principal is an admin.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

from mltrail.config import AccessConfig
from mltrail.errors import PermissionDeniedError


class Role(IntEnum):
    NONE = 0
    READER = 1
    WRITER = 2
    ADMIN = 3

    @classmethod
    def parse(cls, name: str) -> Role:
        return cls[name.upper()]


@dataclass
class AccessPolicy:
    """The role of each principal in each namespace."""

    enabled: bool = False
    roles: dict[str, dict[str, Role]] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: AccessConfig) -> AccessPolicy:
        roles = {namespace: {principal: Role.parse(role) for principal, role in
                             members.items()}
                 for namespace, members in config.roles.items()}
        return cls(enabled=config.enabled, roles=roles)

    def role_of(self, principal: str, namespace: str | None) -> Role:
        """Return the principal's role in `namespace`, or its highest anywhere for None."""
        if not self.enabled:
            return Role.ADMIN
        everywhere = self.roles.get("*", {}).get(principal, Role.NONE)
        if namespace is None:
            granted = [members.get(principal, Role.NONE) for members in self.roles.values()]
            return max([everywhere, *granted])
        return max(everywhere, self.roles.get(namespace, {}).get(principal, Role.NONE))

    def allows(self, principal: str, required: Role, namespace: str | None) -> bool:
        return self.role_of(principal, namespace) >= required

    def check(self, principal: str, required: Role, operation: str,
              namespace: str | None) -> None:
        """Raise PermissionDeniedError unless `principal` has at least `required` there."""
        held = self.role_of(principal, namespace)
        if held >= required:
            return
        where = f"namespace {namespace!r}" if namespace is not None else "any namespace"
        raise PermissionDeniedError(
            f"principal {principal!r} has role {held.name.lower()!r} in {where}; "
            f"operation {operation!r} needs {required.name.lower()!r}",
            {"principal": principal, "role": held.name.lower(), "operation": operation,
             "namespace": namespace})

    def readable_namespaces(self, principal: str) -> set[str] | None:
        """Return the namespaces the principal may read, or None for all of them."""
        if not self.enabled or self.roles.get("*", {}).get(principal, Role.NONE) >= Role.READER:
            return None
        return {namespace for namespace, members in self.roles.items()
                if members.get(principal, Role.NONE) >= Role.READER}


OPEN_POLICY = AccessPolicy(enabled=False)
