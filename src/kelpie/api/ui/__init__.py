"""The dashboard at `/ui`: a few static files shipped in the package, no build step.

Every page is the same small HTML shell; its script reads the API key from the tab's session
storage (never a cookie, the URL or local storage), calls the public JSON API with it, and
renders the page. So the dashboard sees exactly what the key sees: an admin key every user's
jobs, a user's key only that user's. Filters are plain query strings, so every view is a link.

Features other parts of kelpie may add (per-attempt logs, `GET /workers`, a job's `progress`
and pending reason, names and labels) are looked up in `/openapi.json` or on the job object,
and their places on the pages stay empty until the server has them.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(str(resources.files(__name__).joinpath("static")))
# The pages load nothing from anywhere but this server, and cannot be framed.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self';"
    " connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)

router = APIRouter(include_in_schema=False)


def _shell(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    html = (STATIC_DIR / "index.html").read_text("utf-8").replace("{{root}}", root)
    return HTMLResponse(
        html,
        headers={
            "Content-Security-Policy": CONTENT_SECURITY_POLICY,
            "Cache-Control": "no-store",
            "Referrer-Policy": "no-referrer",
            "X-Content-Type-Options": "nosniff",
        },
    )


@router.get("/ui")
async def dashboard_root(request: Request) -> RedirectResponse:
    query = f"?{request.url.query}" if request.url.query else ""
    return RedirectResponse(f"{request.scope.get('root_path', '')}/ui/{query}", status_code=307)


@router.get("/ui/")
@router.get("/ui/jobs/{job_id}")
@router.get("/ui/groups")
@router.get("/ui/groups/{container_group_id:path}")
async def dashboard_page(request: Request) -> HTMLResponse:
    return _shell(request)


def install(app: FastAPI) -> None:
    app.mount("/ui/static", StaticFiles(directory=STATIC_DIR), name="ui-static")
    app.include_router(router)
