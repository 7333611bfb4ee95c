"""Validate bodies against OpenAI's published OpenAPI document (tests/openai_openapi, MIT licence)."""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path

import jsonschema
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC = Path(__file__).parent / "openai_openapi" / "openapi.yaml"


def _allow_null(node):
    """The document mixes OpenAPI 3.0's `nullable: true` into 3.1 schemas; JSON Schema ignores it."""
    if isinstance(node, list):
        return [_allow_null(n) for n in node]
    if not isinstance(node, dict):
        return node
    node = {k: _allow_null(v) for k, v in node.items()}
    if node.pop("nullable", False):
        return {"anyOf": [node, {"type": "null"}]}
    return node


@cache
def _spec() -> dict:
    with SPEC.open() as f:
        raw = yaml.load(f, Loader=yaml.CSafeLoader)
    return _allow_null(raw)


@cache
def _validator(name: str) -> jsonschema.protocols.Validator:
    spec = _spec()
    registry = Registry().with_resource("urn:openai", Resource(contents=spec, specification=DRAFT202012))
    schema = {"$ref": f"urn:openai#/components/schemas/{name}"}
    return jsonschema.Draft202012Validator(schema, registry=registry)


def validate(instance: object, schema_name: str) -> None:
    """Raise jsonschema.ValidationError if `instance` does not match the named component schema."""
    _validator(schema_name).validate(copy.deepcopy(instance))
