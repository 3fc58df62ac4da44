"""User and deployment configuration: principal, access roles, pseudonymisation.

The file is TOML, read from $MLTRAIL_CONFIG or else `config.toml` in the
user's config directory (for example `~/.config/mltrail/config.toml`)::

    principal = "alice"              # $MLTRAIL_PRINCIPAL overrides it

    [access]
    enabled = true
    [access.roles.default]           # namespace -> principal -> role
    alice = "admin"
    bob = "writer"
    [access.roles."*"]               # every namespace
    carol = "reader"

    [pseudonymisation]
    fields = ["trainer", "tags.email"]
    key_env = "MLTRAIL_PSEUDONYM_KEY"

Secrets never live in the file: the pseudonymisation key is read from the
environment variable that `key_env` names.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mltrail.errors import InvalidInputError

CONFIG_ENV = "MLTRAIL_CONFIG"
PRINCIPAL_ENV = "MLTRAIL_PRINCIPAL"
ROLES = ("reader", "writer", "admin")


@dataclass
class AccessConfig:
    enabled: bool = False
    roles: dict[str, dict[str, str]] = field(default_factory=dict)


@dataclass
class PseudonymConfig:
    fields: tuple[str, ...] = ()
    key_env: str = "MLTRAIL_PSEUDONYM_KEY"


@dataclass
class Config:
    principal: str | None = None
    access: AccessConfig = field(default_factory=AccessConfig)
    pseudonymisation: PseudonymConfig = field(default_factory=PseudonymConfig)
    source: str | None = None


def config_path() -> Path | None:
    """Return the configuration file in use, or None when there is none."""
    explicit = os.environ.get(CONFIG_ENV)
    if explicit:
        return Path(explicit)
    from platformdirs import user_config_dir

    default = Path(user_config_dir("mltrail")) / "config.toml"
    return default if default.exists() else None


def load_config(path: str | os.PathLike | None = None) -> Config:
    """Read and validate the configuration; a missing default file means defaults."""
    chosen = Path(path) if path is not None else config_path()
    if chosen is None:
        config = Config()
    else:
        try:
            data = tomllib.loads(chosen.read_text(encoding="utf-8"))
        except OSError as error:
            raise InvalidInputError(f"cannot read the configuration file {str(chosen)!r}: "
                                    f"{error}", str(chosen)) from error
        except tomllib.TOMLDecodeError as error:
            raise InvalidInputError(f"configuration file {str(chosen)!r} is not valid "
                                    f"TOML: {error}", str(chosen)) from error
        config = parse_config(data, str(chosen))
    principal = os.environ.get(PRINCIPAL_ENV)
    if principal:
        config.principal = principal
    return config


def parse_config(data: dict[str, Any], source: str = "<config>") -> Config:
    unknown = set(data) - {"principal", "access", "pseudonymisation"}
    if unknown:
        raise InvalidInputError(f"{source}: unknown configuration keys {sorted(unknown)}; "
                                "expected principal, access, pseudonymisation", unknown)
    access_data = data.get("access", {})
    roles = access_data.get("roles", {})
    if not isinstance(roles, dict):
        raise InvalidInputError(f"{source}: access.roles must be a table", roles)
    for namespace, members in roles.items():
        if not isinstance(members, dict):
            raise InvalidInputError(
                f"{source}: access.roles.{namespace} must map principals to roles", members)
        for principal, role in members.items():
            if role not in ROLES:
                raise InvalidInputError(
                    f"{source}: role {role!r} of {principal!r} in namespace {namespace!r} "
                    f"is invalid; expected one of {', '.join(ROLES)}", role)
    pseudo = data.get("pseudonymisation", {})
    fields = pseudo.get("fields", [])
    if not isinstance(fields, list) or not all(isinstance(f, str) for f in fields):
        raise InvalidInputError(f"{source}: pseudonymisation.fields must be a list of "
                                "field names such as 'trainer' or 'tags.email'", fields)
    for name in fields:
        if name != "trainer" and not name.startswith("tags."):
            raise InvalidInputError(
                f"{source}: pseudonymisation field {name!r} is not supported; use "
                "'trainer' or 'tags.<key>'", name)
    return Config(
        principal=data.get("principal"),
        access=AccessConfig(enabled=bool(access_data.get("enabled", bool(roles))),
                            roles={ns: dict(m) for ns, m in roles.items()}),
        pseudonymisation=PseudonymConfig(
            fields=tuple(fields),
            key_env=pseudo.get("key_env", "MLTRAIL_PSEUDONYM_KEY")),
        source=source,
    )
