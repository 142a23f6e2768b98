"""`GET /health`: liveness for load balancers; needs no key."""

from __future__ import annotations

from fastapi import APIRouter

from kelpie import __version__
from kelpie.schemas import HealthOut

router = APIRouter(tags=["health"])


@router.get("/health", response_model=HealthOut, operation_id="health", summary="Liveness")
async def health() -> HealthOut:
    return HealthOut(status="ok", version=__version__)
