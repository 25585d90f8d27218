"""Turns pydantic models into the structural OpenAPI v3 schemas a CRD must carry.

Pydantic writes JSON Schema 2020-12 (`$ref`s, `anyOf` with null for optional fields,
numeric `exclusiveMinimum`, titles); the API server wants structural OpenAPI v3 (inline
schemas, `exclusiveMinimum: true`, no titles). Optional fields become plain optional
properties: the API server prunes a null before validation, so CEL rules never meet one.
Pure: never talks to a cluster.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, NoDefault
from pydantic_core import core_schema

Schema = dict[str, Any]


class _FactoryDefaults(GenerateJsonSchema):
    """Also writes the defaults of `default_factory` fields (pydantic leaves them out).

    A nested model's default is written whole (unset optional fields left out): the API
    server checks a default against the node's CEL rules without defaulting inside it.
    """

    def get_default_value(self, schema: core_schema.WithDefaultSchema) -> Any:
        factory = schema.get("default_factory")
        if factory is None or schema.get("default_factory_takes_data"):
            return super().get_default_value(schema)
        value = factory()  # type: ignore[call-arg]
        if isinstance(value, BaseModel):
            return value.model_dump(by_alias=True, mode="json", exclude_none=True)
        return value if value is not None else NoDefault


def structural_schema(model: type[BaseModel], *, defaults: bool = True) -> Schema:
    """The model's schema, inlined and converted for an API server.

    `defaults=False` drops every default (status schemas: the operator writes whole values,
    and server-side defaulting of status would only add noise).
    """
    raw = model.model_json_schema(by_alias=True, mode="validation", schema_generator=_FactoryDefaults)
    definitions: dict[str, Schema] = raw.pop("$defs", {})
    return _convert(raw, definitions, defaults=defaults, path=model.__name__)


def _convert(node: Schema, definitions: dict[str, Schema], *, defaults: bool, path: str) -> Schema:
    node = _unwrap(node, definitions, defaults=defaults, path=path)
    out: Schema = {}
    for key, value in node.items():
        if key in _DROPPED or (key == "default" and not defaults):
            continue
        if key == "additionalProperties" and isinstance(value, bool):
            # false: structural schemas forbid it, and the API server rejects unknown fields anyway;
            # true (a free-form mapping) is said with x-kubernetes-preserve-unknown-fields below.
            continue
        if key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        elif key == "const":
            out["enum"] = [value]
        elif key == "properties":
            out[key] = {
                name: _convert(child, definitions, defaults=defaults, path=f"{path}.{name}")
                for name, child in value.items()
            }
        elif key in ("items", "additionalProperties"):
            out[key] = _convert(value, definitions, defaults=defaults, path=f"{path}[]")
        else:
            out[key] = value
    if "properties" in out:
        out.setdefault("type", "object")
    if out.get("type") == "object" and "properties" not in out and "additionalProperties" not in out:
        out["x-kubernetes-preserve-unknown-fields"] = True
    return _ordered(out)


_DROPPED = ("title", "$defs")


def _unwrap(node: Schema, definitions: dict[str, Schema], *, defaults: bool, path: str) -> Schema:
    """Inline a `$ref`, a one-element `allOf`, and an optional field's `anyOf: [X, null]`."""
    node = dict(node)
    if "$ref" in node:
        target = definitions[node.pop("$ref").rsplit("/", 1)[-1]]
        node = {**target, **node}  # the field's own description wins over the model's docstring
    if "allOf" in node and len(node["allOf"]) == 1:
        node = {**_convert(node.pop("allOf")[0], definitions, defaults=defaults, path=path), **node}
    if "anyOf" in node:
        choices = [choice for choice in node.pop("anyOf") if choice != {"type": "null"}]
        if len(choices) != 1:
            raise ValueError(f"{path}: a union of several types has no structural schema")
        node = {**_convert(choices[0], definitions, defaults=defaults, path=path), **node}
        if node.get("default", ...) is None:
            del node["default"]
    return node


_FIRST = ("type", "description", "default", "enum", "format", "pattern")
_LAST = ("properties", "required", "items", "additionalProperties")


def _ordered(node: Schema) -> Schema:
    """Keys in a reading order: what a field is first, its children last."""
    first = [key for key in _FIRST if key in node]
    last = [key for key in _LAST if key in node]
    middle = sorted(key for key in node if key not in first and key not in last)
    return {key: node[key] for key in (*first, *middle, *last)}


def walk(schema: Schema, path: str = "") -> list[tuple[str, Schema]]:
    """Every (path, sub-schema) of a converted schema, depth first, for checks and tests."""
    found = [(path, schema)]
    for name, child in schema.get("properties", {}).items():
        found += walk(child, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        found += walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        found += walk(schema["additionalProperties"], f"{path}{{}}")
    return found
