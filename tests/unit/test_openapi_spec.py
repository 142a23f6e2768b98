"""The OpenAPI spec says what the API really answers: validation errors are 400 `ErrorOut`
(never 422), every operation has a summary and examples, every field a description, and
every example fits the model it illustrates."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.routing import APIRoute
from pydantic import TypeAdapter

from kelpie.api.app import create_app
from kelpie.config import ServerSettings

APP = create_app(ServerSettings())
SPEC: dict[str, Any] = APP.openapi()
OPERATIONS = [
    (f"{method.upper()} {path}", operation)
    for path, operations in SPEC["paths"].items()
    for method, operation in operations.items()
]


def _api_routes(routes: list[Any]) -> list[APIRoute]:
    """Every APIRoute, including those of routers the app includes (FastAPI keeps those
    behind an included-router entry)."""
    found: list[APIRoute] = []
    for route in routes:
        if isinstance(route, APIRoute):
            found.append(route)
        elif hasattr(route, "original_router"):
            found += _api_routes(route.original_router.routes)
    return found


ROUTES = {route.operation_id: route for route in _api_routes(APP.routes)}


def test_no_operation_lists_422_or_the_validation_error_schema() -> None:
    text = json.dumps(SPEC)
    assert '"422"' not in text
    assert "HTTPValidationError" not in text
    assert "ValidationError" not in SPEC["components"]["schemas"]


@pytest.mark.parametrize(("name", "operation"), OPERATIONS, ids=[name for name, _ in OPERATIONS])
def test_every_operation_has_a_summary_examples_and_only_error_shaped_errors(
    name: str, operation: dict[str, Any]
) -> None:
    assert operation.get("summary"), f"{name} has no summary"
    body = operation.get("requestBody", {}).get("content", {}).get("application/json")
    if body is not None:
        assert body.get("examples"), f"{name} has no request example"
    for code, response in operation["responses"].items():
        content = response.get("content", {})
        if code.startswith("2"):
            assert code == "204" or any(
                "example" in c or "examples" in c for c in content.values()
            ), f"{name} {code} has no example"
        else:
            schema = content["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorOut"}, f"{name} {code}"
            assert "example" in content["application/json"]


def test_operations_with_input_answer_400_and_others_do_not() -> None:
    for name, operation in OPERATIONS:
        has_input = bool(operation.get("parameters")) or "requestBody" in operation
        assert ("400" in operation["responses"]) == has_input, name
        if "{" not in name:
            assert "404" not in operation["responses"], name


def test_every_field_of_every_schema_is_described() -> None:
    undescribed = [
        f"{name}.{field}"
        for name, schema in SPEC["components"]["schemas"].items()
        for field, prop in schema.get("properties", {}).items()
        if not prop.get("description")
    ]
    assert undescribed == []


def test_every_parameter_is_described() -> None:
    undescribed = [
        f"{name} {parameter['name']}"
        for name, operation in OPERATIONS
        for parameter in operation.get("parameters", [])
        if not parameter.get("description")
    ]
    assert undescribed == []


def test_submission_examples_show_sync_and_legacy_storage() -> None:
    examples = SPEC["paths"]["/jobs"]["post"]["requestBody"]["content"]["application/json"][
        "examples"
    ]
    values = [example["value"] for example in examples.values()]
    assert any("sync" in value for value in values)
    assert any("checkpoint_bucket" in value for value in values)


@pytest.mark.parametrize(("name", "operation"), OPERATIONS, ids=[name for name, _ in OPERATIONS])
def test_examples_fit_the_models(name: str, operation: dict[str, Any]) -> None:
    route = ROUTES[operation["operationId"]]
    body = operation.get("requestBody", {}).get("content", {}).get("application/json")
    if body is not None and route.body_field is not None:
        annotation = route.body_field.field_info.annotation
        assert annotation is not None
        adapter: TypeAdapter[Any] = TypeAdapter(annotation)
        for example in body["examples"].values():
            adapter.validate_python(example["value"])
    if route.response_model is not None:
        code = str(route.status_code or 200)
        example = operation["responses"][code]["content"]["application/json"]["example"]
        TypeAdapter(route.response_model).validate_python(example)
