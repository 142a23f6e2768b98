"""The coordination API: FastAPI app, one router per resource."""
