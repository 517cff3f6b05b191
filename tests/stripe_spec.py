"""Stripe's OpenAPI specification, API version 2023-08-16, as JSON Schema validators.

The specification travels with the tests: tests/data/stripe-openapi/ holds gzipped copies of
Stripe's published spec3.json and fixtures3.json with their MIT LICENSE (its README says where
they come from). The translation for a Draft 2020-12 validator: OpenAPI 3.0 `nullable` becomes a
null type or branch, `x-*` keys go, and every object schema that declares `properties` gets
`additionalProperties: false` so that an invented or misspelt field fails. List envelopes come
from each list operation's 200 response; an event's `data.object` is validated against the
schema its `object` names.
"""
from __future__ import annotations

import functools
import gzip
import json
from pathlib import Path
from typing import Any, Iterator

from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

API_VERSION = "2023-08-16"
SPEC_DIR = Path(__file__).resolve().parent / "data" / "stripe-openapi"
SPEC_PATH = SPEC_DIR / "spec3.json.gz"
FIXTURES_PATH = SPEC_DIR / "fixtures3.json.gz"
LICENSE_PATH = SPEC_DIR / "LICENSE"
_ROOT = "urn:stripe-openapi"


def read_json(path: Path) -> Any:
    """A carried JSON file, gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return json.load(f)


def translate(schema: Any) -> Any:
    """One OpenAPI 3.0 schema -> JSON Schema 2020-12 (recursively)."""
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key.startswith("x-") or key in ("nullable", "description", "title"):
            continue
        if key == "properties":
            out[key] = {name: translate(sub) for name, sub in value.items()}
        elif key in ("anyOf", "oneOf", "allOf"):
            out[key] = [translate(sub) for sub in value]
        elif key in ("items", "additionalProperties", "not"):
            out[key] = translate(value)
        elif key == "$ref":
            out[key] = _ROOT + value
        else:
            out[key] = value
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    if schema.get("nullable"):
        out = _nullable(out)
    return out


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        schema = {**schema, "type": [*types, "null"]}
        if "enum" in schema:
            schema["enum"] = [*schema["enum"], None]
        return schema
    if "anyOf" in schema:
        return {**schema, "anyOf": [*schema["anyOf"], {"type": "null"}]}
    if "oneOf" in schema:
        return {**schema, "oneOf": [*schema["oneOf"], {"type": "null"}]}
    return {"anyOf": [schema, {"type": "null"}]}


class StripeSpec:
    def __init__(self, path: Path = SPEC_PATH):
        self.raw = read_json(path)
        self.schemas = self.raw["components"]["schemas"]
        document = {"components": {"schemas": {name: translate(s)
                                               for name, s in self.schemas.items()}}}
        self.registry = Registry().with_resource(_ROOT, Resource(document, DRAFT202012))

    def _validator(self, schema: dict[str, Any]) -> Draft202012Validator:
        return Draft202012Validator(schema, registry=self.registry)

    @functools.lru_cache(maxsize=None)
    def object_validator(self, schema_name: str) -> Draft202012Validator:
        if schema_name not in self.schemas:
            raise KeyError(f"no schema {schema_name!r} in the specification")
        return self._validator({"$ref": f"{_ROOT}#/components/schemas/{schema_name}"})

    def operation(self, path: str) -> dict[str, Any]:
        return self.raw["paths"][path]["get"]

    def parameters(self, path: str) -> set[str]:
        return {p["name"] for p in self.operation(path).get("parameters", []) if p["in"] == "query"}

    @functools.lru_cache(maxsize=None)
    def response_validator(self, path: str) -> Draft202012Validator:
        """The 200 response of GET `path`: a list envelope, or the retrieved object."""
        schema = self.operation(path)["responses"]["200"]["content"]["application/json"]["schema"]
        return self._validator(translate(schema))

    def errors(self, validator: Draft202012Validator, body: Any) -> list[str]:
        found = [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message[:300]}"
                 for e in validator.iter_errors(body)]
        return found + list(self._event_payload_errors(body))

    def _event_payload_errors(self, body: Any) -> Iterator[str]:
        events = body.get("data", []) if body.get("object") == "list" else [body]
        for event in events:
            if isinstance(event, dict) and event.get("object") == "event":
                payload = event["data"]["object"]
                for e in self.object_validator(payload["object"]).iter_errors(payload):
                    path = "/".join(map(str, e.absolute_path))
                    yield f"{event['id']} data.object/{path}: {e.message[:300]}"

    def expandable_fields(self, schema_name: str) -> set[str]:
        return set(self.schemas[schema_name].get("x-expandableFields", []))

    def is_expandable_reference(self, schema_name: str, field: str) -> bool:
        """True when the property is `anyOf: [id string, object...]`."""
        prop = self.schemas[schema_name]["properties"][field]
        return any(branch.get("type") == "string" for branch in prop.get("anyOf", []))


@functools.lru_cache(maxsize=1)
def load_spec() -> StripeSpec:
    return StripeSpec()


@functools.lru_cache(maxsize=1)
def load_fixtures() -> dict[str, Any]:
    return read_json(FIXTURES_PATH)["resources"]
