"""FastAPI app factory shared by every service.

Routes: ``/healthz`` (process alive), ``/readyz`` (200 when the service can do its work, 503
with reasons otherwise), ``/status`` (JSON: role, id, version, uptime, counters + the
service's own fields), ``/metrics`` (Prometheus text from the service's own registry) and
``POST /control/{name}`` (pause, resume and service-specific actions), which require
``Authorization: Bearer <token>`` when a token is configured. Request bodies are capped.

The app reads state through the ``StatusSource`` it is given; it owns none.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from importlib import metadata
from typing import Any, Protocol

from fastapi import FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from common.metrics import Metrics

CONTENT_TYPE_LATEST = "text/plain; version=0.0.4; charset=utf-8"


def package_version() -> str:
    try:
        return metadata.version("luffy-async")
    except metadata.PackageNotFoundError:
        return "0+unknown"


class StatusSource(Protocol):
    role: str
    member_id: str
    started: float

    def alive(self) -> bool: ...
    def not_ready(self) -> list[str]: ...
    def status(self) -> dict[str, Any]: ...
    def controls(self) -> dict[str, Callable[[], dict[str, Any]]]: ...


class BodyLimit:
    """ASGI middleware: 413 for bodies over ``limit`` bytes (declared or streamed)."""

    def __init__(self, app: Any, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self._reject(send)
            return
        # Read the whole body first (bounded by the limit) so an oversized chunked body is
        # refused even by routes that never read it.
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            seen += len(message.get("body", b""))
            if seen > self.limit:
                await self._reject(send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, send: Callable) -> None:
        body = f'{{"detail": "request body exceeds {self.limit} bytes"}}'.encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _check_token(expected: str | None, authorization: str | None) -> None:
    if expected is None:
        return
    scheme, _, given = (authorization or "").partition(" ")
    # compare_digest: the time taken does not reveal how much of the token matched
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), expected.encode()):
        raise HTTPException(
            401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}
        )


def create_app(
    source: StatusSource,
    metrics: Metrics,
    token: str | None = None,
    max_body_bytes: int = 1 << 20,
    routes: Callable[[FastAPI], None] | None = None,
) -> FastAPI:
    """Build the service's app; ``routes`` may add service-specific endpoints."""
    app = FastAPI(title=f"luffy {source.role}", version=package_version())
    version = package_version()

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        ok = source.alive()
        return JSONResponse({"alive": ok}, status_code=200 if ok else 503)

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        reasons = source.not_ready()
        return JSONResponse(
            {"ready": not reasons, "reasons": reasons}, status_code=503 if reasons else 200
        )

    @app.get("/status")
    def status() -> dict[str, Any]:
        return {
            "role": source.role,
            "id": source.member_id,
            "version": version,
            "uptime_s": round(time.time() - source.started, 3),
            **source.status(),
        }

    @app.get("/metrics")
    def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/control/{name}")
    def control(name: str, authorization: str | None = Header(default=None)) -> dict[str, Any]:
        _check_token(token, authorization)
        actions = source.controls()
        if name not in actions:
            raise HTTPException(404, f"unknown control {name!r}; available: {sorted(actions)}")
        return {"control": name, **actions[name]()}

    if routes:
        routes(app)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # name the field and the problem; never echo a huge input back
        errors = [
            {k: (repr(v)[:200] if k == "input" else v) for k, v in err.items() if k != "ctx"}
            for err in exc.errors()
        ]
        return JSONResponse({"detail": errors}, status_code=422)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}"}, status_code=500)

    app.add_middleware(BodyLimit, limit=max_body_bytes)
    return app


__all__ = ["BodyLimit", "StatusSource", "create_app", "package_version"]
