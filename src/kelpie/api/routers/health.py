"""`GET /health`: for load balancers and supervisors; needs no key.

Answers 503 while the process cannot serve: its store not yet reached at start-up, or
unreachable since (learnt from the calls that failed, without a query of its own)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from kelpie import __version__
from kelpie.api.errors import error_responses, store_unavailable_response
from kelpie.api.state import AppState
from kelpie.schemas import HealthOut

router = APIRouter(tags=["health"])


@router.get(
    "/health",
    response_model=HealthOut,
    operation_id="health",
    responses=error_responses(503),
    summary="Whether this process can serve",
)
async def health(request: Request) -> JSONResponse:
    state: AppState = request.app.state.kelpie
    if not state.availability.available:
        return store_unavailable_response(starting=not state.availability.ready)
    return JSONResponse(HealthOut(status="ok", version=__version__).model_dump())
