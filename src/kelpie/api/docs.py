"""API docs that work without internet: Swagger UI at `/docs` and ReDoc at `/redoc`, their
scripts and styles served by kelpie itself, and an OpenAPI spec that says what the API really
answers.

The assets come from the `fastapi-offline` package (Swagger UI 5 and ReDoc 2, installed with
kelpie). Swagger UI 4 (the `swagger-ui-bundle` package) cannot render the OpenAPI 3.1 spec
FastAPI writes.

The spec, as FastAPI generates it, lists a `422 HTTPValidationError` on every operation with
input; kelpie answers every validation error 400 in its one error shape (`ErrorOut`), so those
go, and so do error codes an operation cannot return (400 without any input, 404 without any
path parameter). Field and parameter descriptions and the examples come from `spec_text`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.dependencies.models import Dependant
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from starlette.routing import BaseRoute

from kelpie import schemas
from kelpie.api import spec_text
from kelpie.api.deps import API_KEY_SCHEME, get_principal

ASSETS_URL = "/docs/assets"
# Error codes an operation's shared `responses` declare that it can never answer.
_NEVER_ANSWERED: dict[str, tuple[str, ...]] = {
    "claim_work": ("409",),  # a claim takes a job or answers []; it conflicts with nothing
}
_VALIDATION_SCHEMAS = ("HTTPValidationError", "ValidationError")
# The docs pages load nothing from elsewhere, even what the bundles would (ReDoc's footer logo
# comes from its CDN; a blocked image is simply not shown). Inline scripts and styles: the
# pages' start-up code and the bundles' styling.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline';"
    " script-src 'self' 'unsafe-inline'; worker-src 'self' blob:; connect-src 'self';"
    " font-src 'self' data:; frame-ancestors 'none'"
)


def _offline(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    return page


def _assets_dir() -> Path:
    return Path(str(resources.files("fastapi_offline").joinpath("static")))


def install(app: FastAPI) -> None:
    """Serve `/docs`, `/redoc` and their assets, and refine `app.openapi()`. The app must be
    built with `docs_url=None, redoc_url=None` (FastAPI's own pages load from a CDN)."""
    app.mount(ASSETS_URL, StaticFiles(directory=_assets_dir()), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        page = get_swagger_ui_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} API",
            swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            # validatorUrl null: Swagger UI would otherwise ask validator.swagger.io.
            swagger_ui_parameters={"validatorUrl": None, "tryItOutEnabled": False},
        )
        return _offline(page)

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        page = get_redoc_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} API",
            redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )
        return _offline(page)

    generate: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = refine_openapi(generate())
            app.openapi_schema = declare_api_key(spec, _operations_needing_a_key(app.routes))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def refine_openapi(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec as kelpie answers: no 422, only error codes an operation can return, each
    with an example, descriptions and examples from `spec_text`."""
    for path, operations in spec.get("paths", {}).items():
        for operation in operations.values():
            _refine_responses(path, operation)
            _describe_parameters(operation)
            _add_request_examples(operation)
    schemas: dict[str, Any] = spec.get("components", {}).get("schemas", {})
    for name in _VALIDATION_SCHEMAS:
        schemas.pop(name, None)
    for name, schema in schemas.items():
        descriptions = _field_descriptions(name.split("-")[0])
        for field, prop in schema.get("properties", {}).items():
            if "description" not in prop and field in descriptions:
                prop["description"] = descriptions[field]
    return spec


def declare_api_key(spec: dict[str, Any], operation_ids: set[str]) -> dict[str, Any]:
    """The `X-Kelpie-Key` header as the security of these operations. `get_principal` reads
    it itself rather than through a FastAPI `Security` dependency, so FastAPI does not know."""
    name = type(API_KEY_SCHEME).__name__
    scheme = API_KEY_SCHEME.model.model_dump(mode="json", by_alias=True, exclude_none=True)
    spec.setdefault("components", {}).setdefault("securitySchemes", {})[name] = scheme
    for operations in spec.get("paths", {}).values():
        for operation in operations.values():
            if operation.get("operationId") in operation_ids:
                operation["security"] = [{name: []}]
    return spec


def _operations_needing_a_key(routes: Sequence[BaseRoute]) -> set[str]:
    """The operation ids of the routes (those of included routers too) that resolve the
    caller from its key."""
    found: set[str] = set()
    for route in routes:
        if isinstance(route, APIRoute):
            if _resolves(route.dependant, get_principal):
                found.add(route.operation_id or route.unique_id)
        elif (router := getattr(route, "original_router", None)) is not None:
            found |= _operations_needing_a_key(router.routes)
    return found


def _resolves(dependant: Dependant, call: Callable[..., Any]) -> bool:
    return dependant.call is call or any(_resolves(sub, call) for sub in dependant.dependencies)


# A job as answered carries every submission field.
_DESCRIBED_LIKE = {"JobOut": "JobCreate"}


def _field_descriptions(model_name: str) -> dict[str, str]:
    """The descriptions of a model's fields, its base models' included."""
    model = getattr(schemas, model_name, None)
    names = [model_name]
    if isinstance(model, type):
        names += [base.__name__ for base in model.__mro__[1:]]
    if model_name in _DESCRIBED_LIKE:
        names.append(_DESCRIBED_LIKE[model_name])
    found: dict[str, str] = {}
    for name in reversed(names):
        found.update(spec_text.FIELD_DESCRIPTIONS.get(name, {}))
    return found


def _refine_responses(path: str, operation: dict[str, Any]) -> None:
    responses: dict[str, Any] = operation["responses"]
    responses.pop("422", None)
    operation_id = operation.get("operationId", "")
    if not operation.get("parameters") and "requestBody" not in operation:
        responses.pop("400", None)
    if "{" not in path:
        responses.pop("404", None)
    for code in _NEVER_ANSWERED.get(operation_id, ()):
        responses.pop(code, None)
    examples = spec_text.RESPONSE_EXAMPLES.get(operation_id, {})
    for code, response in responses.items():
        content = response.get("content", {}).get("application/json")
        if content is None:
            continue
        if code in examples:
            content["example"] = examples[code]
        elif code in spec_text.ERROR_EXAMPLES:
            content["example"] = spec_text.ERROR_EXAMPLES[code]


def _describe_parameters(operation: dict[str, Any]) -> None:
    for parameter in operation.get("parameters", []):
        name = parameter["name"]
        if "description" not in parameter and name in spec_text.PARAMETER_DESCRIPTIONS:
            parameter["description"] = spec_text.PARAMETER_DESCRIPTIONS[name]
        if name in spec_text.PARAMETER_EXAMPLES:
            parameter["example"] = spec_text.PARAMETER_EXAMPLES[name]


def _add_request_examples(operation: dict[str, Any]) -> None:
    body = operation.get("requestBody", {}).get("content", {}).get("application/json")
    examples = spec_text.REQUEST_EXAMPLES.get(operation.get("operationId", ""))
    if body is not None and examples:
        body["examples"] = examples
