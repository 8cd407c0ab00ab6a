"""The FastAPI prediction service: ``create_app(package_path, settings)``; ``hms serve`` runs it under uvicorn.

Endpoints
- ``POST /predict``: one recording, as a multipart upload (field ``file``), a raw body (HMS parquet, EDF/BDF;
  ``Content-Type`` one of :data:`hms_core.serving.inputs.CONTENT_TYPES`, the file name in ``X-Filename``) or a JSON
  body ``{"sampling_rate", "channels", "data"}``. Answers per 10-s window: start/end seconds, the six class
  probabilities, uncertainty (entropy of the blend, members' disagreement), quality flags, and the package version.
- ``POST /predict/batch``: several files (multipart field ``files``, at most ``serving.max_files``) or JSON
  ``{"recordings": [...]}``; one result or one error per file.
- ``GET /health`` (the process answers), ``GET /ready`` (package loaded and verified, a free prediction slot; the
  monitoring log's state), ``GET /metadata`` (package, classes, members, preprocessing, model card), ``/docs``.

Guards: every error is JSON ``{"error": {"status", "code", "message", "field"}}`` naming the problem (exception
handlers for everything, a 500 carries only an error id; the traceback goes to the server log). A body larger than
``serving.max_request_mb`` gets 413 from its ``Content-Length`` before it is read, or while it streams. When the
environment variable ``serving.api_key_env`` is set and not empty, ``/predict*`` and ``/metadata`` need it in
``X-API-Key`` (or ``Authorization: Bearer``), compared with :func:`hmac.compare_digest`; the key is never logged.
At most ``serving.max_concurrency`` requests are predicted at once (in the thread pool, off the event loop); one
more waits ``serving.queue_timeout_s`` for a slot and then gets 503 with ``Retry-After``, and ``/ready`` says 503
while every slot is busy.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from hms_core.config import ServingConfig
from hms_core.serving.errors import (
    BadInput,
    Overloaded,
    PayloadTooLarge,
    ServingError,
    Unauthorized,
)
from hms_core.serving.predictor import Predictor

__all__ = ["create_app"]

_log = logging.getLogger("hms_core.serving")
_MB = 1024 * 1024
_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False, description="Needed when API-key auth is on.")
_BEARER = HTTPBearer(auto_error=False, description="Alternative to X-API-Key.")


class _Slots:
    """A bounded number of concurrent predictions; loop-agnostic (a lock and a counter)."""

    def __init__(self, n: int, timeout_s: float) -> None:
        self.n, self.timeout_s = n, timeout_s
        self.active = 0
        self.rejected = 0
        self._lock = threading.Lock()

    def _try(self) -> bool:
        with self._lock:
            if self.active < self.n:
                self.active += 1
                return True
            return False

    async def acquire(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        while not self._try():
            if time.monotonic() >= deadline:
                with self._lock:
                    self.rejected += 1
                raise Overloaded(
                    f"all {self.n} prediction slots are busy (serving.max_concurrency); retry in a moment."
                )
            await asyncio.sleep(0.002)

    def release(self) -> None:
        with self._lock:
            self.active -= 1

    @property
    def saturated(self) -> bool:
        return self.active >= self.n


class _BodyLimit:
    """ASGI middleware: 413 by ``Content-Length`` before reading, or as soon as the streamed body passes the limit."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    def _message(self, size: str) -> str:
        return (
            f"request body is {size}; the limit is {self.limit / _MB:g} MiB ({self.limit} bytes, "
            "serving.max_request_mb)."
        )

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                n = -1
            if n < 0 or n > self.limit:
                err = (
                    BadInput("invalid Content-Length header.")
                    if n < 0
                    else PayloadTooLarge(self._message(f"{n} bytes"))
                )
                return await JSONResponse({"error": err.to_dict()}, status_code=err.status)(scope, receive, send)
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise PayloadTooLarge(self._message(f"over {seen} bytes (streamed)"))
            return message

        return await self.app(scope, limited, send)


#: OpenAPI schemas of the request bodies (the endpoints read the body themselves: several content types).
_BINARY: dict[str, Any] = {"type": "string", "format": "binary"}
_RECORDING_JSON: dict[str, Any] = {
    "type": "object",
    "required": ["sampling_rate", "channels", "data"],
    "properties": {
        "sampling_rate": {"type": "number", "description": "Hz"},
        "channels": {"type": "array", "items": {"type": "string"}},
        "data": {"type": "array", "items": {"type": "array", "items": {"type": ["number", "null"]}},
                 "description": "channels x samples; null = missing"},
        "name": {"type": "string", "description": "a label for the recording (batch requests)"},
    },
}  # fmt: skip


def _request_body(content: dict[str, Any]) -> dict[str, Any]:
    """``openapi_extra`` of an endpoint whose required body takes the media types of ``content``."""
    return {"requestBody": {"content": content, "required": True}}


_PREDICT_BODY = _request_body({
    "multipart/form-data": {"schema": {"type": "object", "properties": {"file": _BINARY}}},
    "application/json": {"schema": _RECORDING_JSON},
    "application/octet-stream": {"schema": _BINARY},
})  # fmt: skip
_BATCH_BODY = _request_body({
    "multipart/form-data": {"schema": {"type": "object", "properties": {"files": {"type": "array", "items": _BINARY}}}},
    "application/json": {"schema": {"type": "object", "required": ["recordings"],
                                    "properties": {"recordings": {"type": "array", "items": _RECORDING_JSON}}}},
})  # fmt: skip


def _api_key(settings: ServingConfig) -> str | None:
    key = os.environ.get(settings.api_key_env, "")
    return key or None


def create_app(
    package_path: str | Path | None = None,
    settings: ServingConfig | None = None,
    *,
    predictor: Predictor | None = None,
    prediction_log: Any = None,
) -> Any:
    """The service for the package at ``package_path`` (loaded and SHA-256 verified now), or for ``predictor``.

    ``prediction_log`` (a :class:`hms_core.monitoring.log.PredictionLog`) receives every prediction; it is closed
    (flushed) when the app shuts down.
    """
    settings = settings or ServingConfig()
    if predictor is None:
        if package_path is None:
            raise ValueError("create_app needs a package_path or a predictor")
        predictor = Predictor.from_path(package_path, settings)
    else:
        predictor.settings = settings
    if prediction_log is not None:
        predictor.attach_log(prediction_log, "serve")
    pkg = predictor.pkg
    if hasattr(pkg, "warm_up"):
        # open every engine the service runs now: the first request pays no load time
        pkg.warm_up(settings.precision, members=predictor.members)
    key = _api_key(settings)
    slots = _Slots(settings.max_concurrency, settings.queue_timeout_s)
    limit = int(settings.max_request_mb * _MB)
    _log.info(
        "serving package %s (%s); API-key auth %s", pkg.version, Path(pkg.path).name,
        f"on (${settings.api_key_env})" if key else "off",
    )  # fmt: skip

    @asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        yield
        if prediction_log is not None:
            try:
                await run_in_threadpool(prediction_log.close)
            except Exception:  # noqa: BLE001 - shutting down; nothing to answer
                _log.warning("the prediction log did not close cleanly", exc_info=True)

    app = FastAPI(
        title="HMS EEG prediction service",
        version=str(pkg.version),
        description=(__doc__ or "").split("Guards:")[0],
        lifespan=lifespan,
    )
    app.state.predictor = predictor
    app.state.slots = slots

    def authorize(
        api_key: Annotated[str | None, Security(_HEADER)] = None,
        bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_BEARER)] = None,
    ) -> None:
        if key is None:
            return
        given = api_key or (bearer.credentials if bearer is not None else None)
        if not given:
            raise Unauthorized(
                "an API key is required: send it in the X-API-Key header (or Authorization: Bearer)."
            )
        if not hmac.compare_digest(given.encode("utf-8"), key.encode("utf-8")):
            raise Unauthorized("the API key is not valid.")

    # --- errors: JSON with the problem named, never a traceback ----------------------------------------------
    def _error(err: ServingError, request_id: str | None = None) -> JSONResponse:
        headers = {"Retry-After": "1"} if err.status == 503 else {}
        if err.status == 401:
            headers["WWW-Authenticate"] = "ApiKey"
        body: dict[str, Any] = {"error": err.to_dict()}
        if request_id:
            body["request_id"] = request_id
        return JSONResponse(body, status_code=err.status, headers=headers)

    @app.exception_handler(ServingError)
    async def _serving_error(_: Request, exc: ServingError) -> JSONResponse:
        return _error(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(x) for x in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()[:5]]
        return JSONResponse(
            {"error": {"status": 422, "code": "invalid_request", "message": "; ".join(parts), "field": None}},
            status_code=422,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            {
                "error": {
                    "status": exc.status_code,
                    "code": "http_error",
                    "message": str(exc.detail),
                    "field": None,
                }
            },
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def _internal_error(_: Request, exc: Exception) -> JSONResponse:
        error_id = uuid.uuid4().hex[:12]
        _log.error("internal error %s", error_id, exc_info=(type(exc), exc, exc.__traceback__))
        return JSONResponse(
            {
                "error": {
                    "status": 500,
                    "code": "internal_error",
                    "message": f"internal error {error_id}: the request could not be answered; the server log "
                    "has the details under this id.",
                    "field": None,
                }
            },
            status_code=500,
        )

    # --- predictions ---------------------------------------------------------------------------------------
    async def _run(fn: Any, *args: Any) -> Any:
        await slots.acquire()
        try:
            return await run_in_threadpool(fn, *args)
        finally:
            slots.release()

    async def _uploads(request: Request, field: str, max_files: int) -> list[tuple[bytes, str | None, str | None]]:
        ctype = request.headers.get("content-type", "")
        if ctype.lower().startswith("multipart/form-data"):
            form = await request.form(max_files=max_files + 1, max_fields=max_files + 8)
            try:
                files = [
                    v for k, v in form.multi_items() if k in (field, "file", "files") and isinstance(v, UploadFile)
                ]
                if not files:
                    raise BadInput(
                        f"no file in the multipart body: send the recording as the form field '{field}'.",
                        field=field,
                    )
                if len(files) > max_files:
                    raise PayloadTooLarge(
                        f"{len(files)} files in one request; at most {max_files} (serving.max_files).", field=field
                    )
                return [(await f.read(), f.filename, f.content_type) for f in files]
            finally:
                await form.close()
        body = await request.body()
        return [(body, request.headers.get("x-filename"), ctype)]

    def _predict_one(data: bytes, filename: str | None, ctype: str | None, request_id: str) -> dict[str, Any]:
        return predictor.predict_bytes(data, filename, ctype, request_id).to_dict()

    @app.post(
        "/predict",
        summary="Class probabilities per 10-s window of one recording",
        dependencies=[Security(authorize)],
        openapi_extra=_PREDICT_BODY,
    )
    async def predict(request: Request) -> JSONResponse:
        request_id = uuid.uuid4().hex[:16]
        ((data, filename, ctype),) = await _uploads(request, "file", 1)
        try:
            result = await _run(_predict_one, data, filename, ctype, request_id)
        except ServingError as e:
            return _error(e, request_id)
        return JSONResponse(result, headers={"X-Request-ID": request_id})

    def _predict_many(items: list[tuple[Any, str | None, str | None]], request_id: str) -> list[dict[str, Any]]:
        out = []
        for i, (data, filename, ctype) in enumerate(items):
            try:
                if isinstance(data, dict):
                    rec = predictor.read_json(data, filename or f"recording {i}")
                    res = predictor.predict_recording(rec, f"{request_id}-{i}").to_dict()
                else:
                    res = predictor.predict_bytes(data, filename, ctype, f"{request_id}-{i}").to_dict()
                out.append({"status": 200, **res})
            except ServingError as e:
                out.append({"status": e.status, "source": filename, "error": e.to_dict()})
        return out

    @app.post(
        "/predict/batch",
        summary="Several recordings in one request (one result or one error each)",
        dependencies=[Security(authorize)],
        openapi_extra=_BATCH_BODY,
    )
    async def predict_batch(request: Request) -> JSONResponse:
        request_id = uuid.uuid4().hex[:16]
        ctype = request.headers.get("content-type", "")
        if ctype.split(";")[0].strip().lower() == "application/json":
            import json

            try:
                obj = json.loads(await request.body())
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise BadInput(f"the request body is not valid JSON: {e}", field="body") from None
            recs = obj.get("recordings") if isinstance(obj, dict) else None
            if not isinstance(recs, list) or not recs:
                raise BadInput(
                    'expected {"recordings": [{"sampling_rate", "channels", "data"}, ...]}.', field="body"
                )
            if len(recs) > settings.max_files:
                raise PayloadTooLarge(
                    f"{len(recs)} recordings in one request; at most {settings.max_files} (serving.max_files).",
                    field="recordings",
                )
            items: list[tuple[Any, str | None, str | None]] = [
                (r if isinstance(r, dict) else {}, (r.get("name") if isinstance(r, dict) else None), None)
                for r in recs
            ]
        else:
            items = list(await _uploads(request, "files", settings.max_files))
        results = await _run(_predict_many, items, request_id)
        body = {"package_version": str(pkg.version), "request_id": request_id, "results": results}
        return JSONResponse(body, headers={"X-Request-ID": request_id})

    # --- state ---------------------------------------------------------------------------------------------
    @app.get("/health", summary="The process answers")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", summary="Package loaded and verified, a free prediction slot, the monitoring log's state")
    async def ready() -> JSONResponse:
        log = predictor.log_health()
        body = {
            "ready": not slots.saturated,
            "status": "saturated" if slots.saturated else ("ok" if log["ok"] else "degraded"),
            "package_version": str(pkg.version),
            "package_verified": True,
            "slots": {"max": slots.n, "active": slots.active, "rejected": slots.rejected},
            "auth": key is not None,
            "prediction_log": log,
        }
        if slots.saturated:
            body["reason"] = f"all {slots.n} prediction slots are busy"
        return JSONResponse(body, status_code=503 if slots.saturated else 200)

    @app.get(
        "/metadata",
        summary="Package version, classes, members, preprocessing, model card",
        dependencies=[Security(authorize)],
    )
    async def metadata() -> dict[str, Any]:
        return predictor.metadata()

    app.add_middleware(_BodyLimit, limit=limit)  # inside the exception handlers: a streamed 413 is JSON too
    return app
