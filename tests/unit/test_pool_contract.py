"""The pool contract (`sync/pool_api.yaml`) is a well-formed OpenAPI 3.1 document, its examples
follow its own schemas, and the reference pool's routes and request models are exactly it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, get_args

import pytest
from jsonschema import Draft202012Validator
from pydantic import BaseModel
from starlette.routing import Route

from simulators import central_pool as cp
from tests import pool_contract

DOC: dict[str, Any] = pool_contract.document()
SCHEMAS: dict[str, Any] = DOC["components"]["schemas"]
METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")

#: Request schemas and the pool's pydantic models that implement them.
REQUEST_MODELS: dict[str, type[BaseModel]] = {
    "MachineProfile": cp.MachineProfileIn,
    "Capability": cp.CapabilityIn,
    "CoarseLocation": cp.CoarseLocationIn,
    "Location": cp.LocationIn,
    "WeeklyWindow": cp.WeeklyWindowIn,
    "Rate": cp.RateIn,
    "SharingPolicy": cp.SharingIn,
    "RestrictedProfile": cp.RestrictedIn,
    "MachineHealth": cp.HealthIn,
    "TimeWindow": cp.TimeWindowIn,
    "AvailabilityUpdate": cp.AvailabilityIn,
    "AvailabilityBatch": cp.AvailabilityBatchIn,
    "Snapshot": cp.SnapshotIn,
    "DemandRequest": cp.DemandIn,
    "BookingRequest": cp.BookingIn,
    "UsageRecord": cp.UsageRecordIn,
    "UsageBatch": cp.UsageBatchIn,
}


def validator(name: str) -> Draft202012Validator:
    """A validator for one component schema, its `$ref`s resolved inside the document."""
    return pool_contract.validator(name)


def resolve(ref: str) -> Any:
    assert ref.startswith("#/"), f"only local refs: {ref}"
    node: Any = DOC
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and part in node, f"unresolved $ref {ref}"
        node = node[part]
    return node


def walk(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    yield path, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from walk(v, f"{path}/{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk(v, f"{path}/{i}")


def operations() -> Iterator[tuple[str, str, dict[str, Any], dict[str, Any]]]:
    for path, item in DOC["paths"].items():
        for method in METHODS:
            if method in item:
                yield path, method, item, item[method]


def test_document_shape() -> None:
    assert re.fullmatch(r"3\.1\.\d+", DOC["openapi"])
    assert DOC["info"]["title"] and DOC["info"]["version"]
    assert DOC["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": DOC["components"]["securitySchemes"]["bearer"]["description"],
    }
    assert DOC["security"] == [{"bearer": []}]
    assert all(p.startswith("/v1/") for p in DOC["paths"])


def test_every_ref_resolves() -> None:
    refs = [node["$ref"] for _, node in walk(DOC) if isinstance(node, dict) and "$ref" in node]
    assert len(refs) > 50
    for ref in refs:
        resolve(ref)


def test_every_operation_is_complete() -> None:
    seen_ids = set()
    for path, method, item, op in operations():
        where = f"{method.upper()} {path}"
        assert op["operationId"] not in seen_ids, where
        seen_ids.add(op["operationId"])
        assert op.get("summary"), where
        responses = op.get("responses")
        assert responses, f"{where} has no responses"
        assert any(code.startswith("2") for code in responses), f"{where}: no 2xx"
        for code, resp in responses.items():
            resp = resolve(resp["$ref"]) if "$ref" in resp else resp
            assert resp.get("description"), f"{where} {code}"
            if code.startswith(("4", "5")):
                content = resp["content"]
                assert list(content) == ["application/problem+json"], f"{where} {code}"
                assert content["application/problem+json"]["schema"] == {
                    "$ref": "#/components/schemas/Problem"
                }
            else:
                assert "application/json" in resp["content"], f"{where} {code}"
        secured = op.get("security", DOC["security"]) != []
        assert ("401" in responses) == secured, f"{where}: 401 iff a token is needed"
        # every {param} in the template is declared as a path parameter
        params = [resolve(p["$ref"]) if "$ref" in p else p for p in item.get("parameters", [])]
        params += [resolve(p["$ref"]) if "$ref" in p else p for p in op.get("parameters", [])]
        declared = {p["name"] for p in params if p["in"] == "path"}
        assert declared == set(re.findall(r"{(\w+)}", path)), where
        if method in ("put", "post") and path != "/v1/health":
            body = op["requestBody"]
            assert body["required"] is True, where
            assert list(body["content"]) == ["application/json"], where
    assert DOC["paths"]["/v1/health"]["get"]["security"] == []


def test_every_object_schema_is_closed_and_every_schema_valid() -> None:
    Draft202012Validator.check_schema({"components": DOC["components"]})
    for name, schema in SCHEMAS.items():
        Draft202012Validator.check_schema(schema)
        for where, node in walk(schema, name):
            if isinstance(node, dict) and node.get("type") == "object":
                assert node.get("additionalProperties") is False, f"{where} is open"
                assert set(node.get("required", [])) <= set(node["properties"]), where


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_examples_follow_their_schema(name: str) -> None:
    examples = SCHEMAS[name].get("examples")
    if SCHEMAS[name].get("type") == "object":
        assert examples, f"{name} has no example"
    for example in examples or []:
        validator(name).validate(example)


@pytest.mark.parametrize("name", sorted(REQUEST_MODELS))
def test_request_models_are_the_contract(name: str) -> None:
    """The pool's pydantic model of a request schema has the same fields, the same required
    ones, accepts the contract's examples and refuses an unknown field."""
    schema, model = SCHEMAS[name], REQUEST_MODELS[name]
    assert set(model.model_fields) == set(schema["properties"]), name
    required = {n for n, f in model.model_fields.items() if f.is_required()}
    assert required == set(schema.get("required", [])), name
    for example in schema.get("examples", []):
        model.model_validate(example)
        with pytest.raises(ValueError):
            model.model_validate({**example, "unexpected": 1})


def test_problem_bodies_follow_the_contract() -> None:
    body = {"title": "Conflict", "status": 409, "detail": "x"}
    validator("Problem").validate(body)
    assert not validator("Problem").is_valid({**body, "extra": 1})


def test_pool_routes_are_exactly_the_contract() -> None:
    app = cp.create_app(cp.CentralPool(tokens={}))
    routes = {
        (method.lower(), r.path)
        for r in app.routes
        if isinstance(r, Route)
        for method in (r.methods or ())
        if method != "HEAD"
    }
    contract = {(method, path) for path, method, _, _ in operations()}
    assert routes == contract


def test_capacity_units_and_decisions_match_the_docs() -> None:
    """The thresholds and weights the contract states are the ones the pool uses."""
    text = cp.CONTRACT.read_text(encoding="utf-8")
    for weight, component in ((0.35, "capability"), (0.25, "distance"), (0.15, "health")):
        assert cp.WEIGHTS[component] == weight
        assert f"{weight}·{component}" in text
    assert cp.WEIGHTS["window_overlap"] == 0.25
    assert sum(cp.WEIGHTS.values()) == pytest.approx(1.0)
    assert (cp.RECOMMEND_AT, cp.REVIEW_AT) == (0.8, 0.6)
    assert [cp.decide(s) for s in (1.0, 0.8, 0.7999, 0.6, 0.5999, 0.0)] == [
        "recommended",
        "recommended",
        "manual_review",
        "manual_review",
        "rejected",
        "rejected",
    ]


def test_enums_are_the_contract() -> None:
    for name, literal in (
        ("MachineType", cp.MachineType),
        ("MachineStatus", cp.Status),
        ("Availability", cp.Available),
    ):
        assert list(get_args(literal)) == SCHEMAS[name]["enum"], name
