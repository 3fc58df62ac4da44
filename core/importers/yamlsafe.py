"""YAML loading that never constructs Python objects from tags.

Files written with PyYAML's `yaml.dump` (Lightning's `hparams.yaml`, MLflow's
`meta.yaml`) may carry tags such as `!!python/object:argparse.Namespace` or
`!!python/object/apply:...`. `OpaqueTagLoader` builds only plain data: a node
with an unknown tag becomes the node's YAML source text, tag included, as a
string, so nothing is imported or called. Two tags with an unambiguous data
meaning are read as data: `!!python/tuple` as a list, and the `!!python/`
scalar tags (str, unicode, int, long, float, bool, none) as that scalar.

`Yaml12Loader` reads the YAML 1.2 core schema, as DVC reads `dvc.lock` and
params files with ruamel.yaml in safe mode: `1e-3` is a float, `yes` and `on`
are strings, and `010` is the decimal 10.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from mltrail.errors import InvalidInputError
from yaml.events import AliasEvent

# Aliases allowed in one document; a few thousand aliases nested in each other
# can expand to gigabytes when converted to plain data ("billion laughs").
MAX_ALIASES = 1_000

_PYTHON_PREFIX = "tag:yaml.org,2002:python/"
_SCALAR_TAGS = {
    "str": str,
    "unicode": str,
    "int": int,
    "long": int,
    "float": float,
    "bool": bool,
    "none": type(None),
}


class OpaqueTagLoader(yaml.SafeLoader):
    """A SafeLoader that keeps nodes with unknown tags as their source text."""

    def __init__(self, stream: str) -> None:
        if not isinstance(stream, str):
            raise TypeError(
                "OpaqueTagLoader reads text, so that opaque nodes keep "
                "their source; decode the file first"
            )
        super().__init__(stream)
        self._aliases = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise InvalidInputError(
                    f"YAML document uses more than {MAX_ALIASES} aliases; refusing to "
                    "expand it",
                    self._aliases,
                )
        return super().compose_node(parent, index)


def _construct_unknown(loader: OpaqueTagLoader, suffix: str, node: yaml.Node) -> Any:
    tag = node.tag
    if tag.startswith(_PYTHON_PREFIX):
        name = tag[len(_PYTHON_PREFIX) :]
        if name == "tuple" and isinstance(node, yaml.SequenceNode):
            return loader.construct_sequence(node, deep=True)
        if name in _SCALAR_TAGS and isinstance(node, yaml.ScalarNode):
            return _python_scalar(loader, name, node)
    return _source_text(node)


def _python_scalar(loader: OpaqueTagLoader, name: str, node: yaml.ScalarNode) -> Any:
    text = node.value
    if name in ("str", "unicode"):
        return text
    if name == "none":
        return None
    standard = {"int": "int", "long": "int", "float": "float", "bool": "bool"}[name]
    plain = yaml.ScalarNode(
        f"tag:yaml.org,2002:{standard}", text, node.start_mark, node.end_mark
    )
    return loader.construct_object(plain)


def _source_text(node: yaml.Node) -> str:
    """Return the YAML text of `node`, tag included, without trailing whitespace."""
    start, end = node.start_mark, node.end_mark
    if start is not None and end is not None and start.buffer is not None:
        return start.buffer[start.index : end.index].rstrip(" \t\r\n\x00")
    return f"!<{node.tag}>"


def _construct_source_text(loader: OpaqueTagLoader, node: yaml.Node) -> str:
    return _source_text(node)


def _construct_timestamp_text(loader: OpaqueTagLoader, node: yaml.ScalarNode) -> str:
    # A timestamp stays the text it was written as; plain data has no datetime.
    return loader.construct_scalar(node)


OpaqueTagLoader.add_multi_constructor("", _construct_unknown)
OpaqueTagLoader.add_constructor(
    "tag:yaml.org,2002:timestamp", _construct_timestamp_text
)
for _tag in ("binary", "set"):
    OpaqueTagLoader.add_constructor(f"tag:yaml.org,2002:{_tag}", _construct_source_text)


class Yaml12Loader(OpaqueTagLoader):
    """OpaqueTagLoader with the YAML 1.2 core schema's resolvers for plain scalars.

    Dates stay strings, as the core schema has no timestamp type.
    """


Yaml12Loader.yaml_implicit_resolvers = {
    key: [
        (tag, regexp)
        for tag, regexp in resolvers
        if tag.rsplit(":", 1)[-1] not in ("bool", "int", "float", "null", "timestamp")
    ]
    for key, resolvers in OpaqueTagLoader.yaml_implicit_resolvers.items()
}

_YAML12_RESOLVERS = (
    ("tag:yaml.org,2002:bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    (
        "tag:yaml.org,2002:int",
        r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$",
        "-+0123456789",
    ),
    (
        "tag:yaml.org,2002:float",
        (
            r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
            r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
        ),
        "-+.0123456789",
    ),
    ("tag:yaml.org,2002:null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
)
for _tag, _pattern, _first in _YAML12_RESOLVERS:
    Yaml12Loader.add_implicit_resolver(_tag, re.compile(_pattern), list(_first))


def _construct_yaml12_int(loader: Yaml12Loader, node: yaml.ScalarNode) -> int:
    text = loader.construct_scalar(node)
    if text.startswith(("0o", "0x")):
        return int(text, 0)
    return int(text, 10)


Yaml12Loader.add_constructor("tag:yaml.org,2002:int", _construct_yaml12_int)


def load_yaml(text: str, *, yaml12: bool = False) -> Any:
    """Parse one YAML document into plain data; raise InvalidInputError if malformed."""
    loader_class = Yaml12Loader if yaml12 else OpaqueTagLoader
    loader = loader_class(text)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as error:
        raise InvalidInputError(f"invalid YAML: {error}", text[:200]) from None
    finally:
        loader.dispose()
