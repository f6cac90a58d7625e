"""The encrypted inference service: ``create_app(config)`` returns the FastAPI app.

uvicorn runs it in one process (``fheqnn serve``); Ray Serve deploys the same app as replicas
(:mod:`.ray_backend`). The service holds compiled circuits and evaluation keys, never a secret
key nor a clear value. Encrypted runs are CPU-bound: they run on a thread pool, off the event
loop, so that ``/health`` and uploads stay responsive while circuits run.

Endpoints (JSON unless stated; errors are ``{"error": "..."}`` with a 4xx status):

- ``GET /health``, ``GET /models``, ``GET /models/{model_id}``
- ``GET /models/{model_id}/client``: the client part as a zip archive
- ``POST /keys`` and ``POST /models/{model_id}/keys``: an evaluation-key envelope
- ``GET /models/{model_id}/keys/{key_id}``: whether the service knows these keys
- ``POST /models/{model_id}/predict`` (header ``X-Key-Id``): a ciphertext envelope
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..runtime.server import RunCancelledError
from .config import ServeConfig
from .keystore import is_id
from .service import (
    ARCHIVE_MEDIA_TYPE,
    ENVELOPE_MEDIA_TYPE,
    KEY_ID_HEADER,
    RUN_SECONDS_HEADER,
    ServedModel,
    Service,
    ServiceError,
    default_body_limit,
    load_model,
)

logger = logging.getLogger(__name__)

__all__ = [
    "ARCHIVE_MEDIA_TYPE",
    "ENVELOPE_MEDIA_TYPE",
    "KEY_ID_HEADER",
    "RUN_SECONDS_HEADER",
    "ServedModel",
    "Service",
    "ServiceError",
    "create_app",
    "default_body_limit",
    "load_model",
]


async def _watch_disconnect(request: Request, gone: threading.Event) -> None:
    """Set ``gone`` when the client of a request whose body was read goes away (ASGI's
    ``http.disconnect``); cancelled when the answer is ready."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            logger.info("a client went away before its answer")
            gone.set()
            return
        await asyncio.sleep(0.05)  # not expected after the body; never a busy loop


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def create_app(config: ServeConfig) -> FastAPI:
    """Build the service: load and verify the models, open the key store.

    Args:
        config: what to serve and the limits.

    Returns:
        The FastAPI app (an ASGI app for uvicorn or Ray Serve).

    Raises:
        ArtifactError: a model folder is missing, incomplete or incompatible.
    """
    service = Service(config)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await answering.settle()  # requests cancelled at the end of the grace period get a 503
        service.close()

    app = FastAPI(
        title="fheqnn encrypted inference",
        version="1",
        description="Runs compiled quantized networks on ciphertexts; never sees a clear value.",
        lifespan=lifespan,
    )
    app.state.service = service
    answering = _Answering()
    app.add_middleware(_Counted, counter=answering)
    limit = service.max_request_bytes
    _add_error_handlers(app)
    _add_health_route(app, config, service)
    api = APIRouter(dependencies=[Depends(_token_check(config))])
    _add_model_routes(api, service)
    _add_key_routes(api, service, limit)
    _add_predict_route(api, service, limit)
    app.include_router(api)
    return app


class _Answering:
    """How many HTTP requests the app is answering, to let the last answers out at shutdown."""

    #: Seconds the shutdown waits for answers still being sent (the 503s of cancelled runs).
    SETTLE_SECONDS = 2.0

    def __init__(self) -> None:
        self.count = 0

    async def settle(self) -> None:
        """Wait (bounded) until no request is being answered."""
        for _ in range(int(self.SETTLE_SECONDS / 0.02)):
            if self.count == 0:
                return
            await asyncio.sleep(0.02)


class _Counted:
    """ASGI middleware: counts the HTTP requests in progress in an :class:`_Answering`."""

    def __init__(self, app: Any, counter: _Answering) -> None:
        self.app = app
        self.counter = counter

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.counter.count += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.counter.count -= 1


#: The OpenAPI description of a request body that is an envelope (keys or ciphertext).
_ENVELOPE_BODY_DOC = {
    "requestBody": {
        "required": True,
        "content": {ENVELOPE_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}},
    }
}


def _add_error_handlers(app: FastAPI) -> None:
    """Every error as ``{"error": "..."}``: refusals, HTTP and validation errors, the unexpected."""

    @app.exception_handler(ServiceError)
    async def on_service_error(_: Request, exc: ServiceError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        if exc.status == 503:
            headers = {"Retry-After": "1"}
        return _error(exc.status, exc.message, headers)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()
        )
        return _error(400, f"malformed request: {details}")

    @app.exception_handler(Exception)
    async def on_unexpected(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("unexpected error while serving a request")
        return _error(500, f"internal error: {type(exc).__name__}")


def _token_check(config: ServeConfig) -> Callable[[Request], Awaitable[None]]:
    """The dependency that refuses a request without the configured bearer token (401)."""

    async def check_token(request: Request) -> None:
        if config.token is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        ok = scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode(), config.token.encode()
        )
        if not ok:
            raise ServiceError(401, "a valid token is required (header 'Authorization: Bearer …')")

    return check_token


def _add_health_route(app: FastAPI, config: ServeConfig, service: Service) -> None:
    """``GET /health``, on the app itself: no token needed."""
    cluster = _ClusterStatus() if config.key_registry else None

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness: backend, replicas, how many models are served and the largest request
        body accepted (no token needed). On Ray: also the cluster's live nodes and the
        service's replicas by state, as Ray Serve sees them."""
        answer = {
            "status": "ok",
            "backend": config.backend,
            "replicas": config.replicas,
            "models": len(service.models),
            "max_request_bytes": service.max_request_bytes,
        }
        if cluster is not None:
            # Not on the pool of encrypted runs: liveness must not wait behind them.
            answer.update(await asyncio.to_thread(cluster.get))
        return answer


class _ClusterStatus:
    """The Ray cluster's status for ``/health``, asked at most once per ``SECONDS``."""

    SECONDS = 2.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._at = -1e9
        self._status: dict[str, Any] = {}

    def get(self) -> dict[str, Any]:
        import time

        from .ray_backend import cluster_status

        with self._lock:
            if time.monotonic() - self._at > self.SECONDS:
                status = cluster_status()
                running = status["replica_states"].get("RUNNING")
                if running is not None:
                    status["replicas"] = running
                self._status, self._at = status, time.monotonic()
            return dict(self._status)


def _add_model_routes(api: APIRouter, service: Service) -> None:
    """``GET /models``, ``GET /models/{model_id}`` and the client part's archive."""

    @api.get("/models")
    async def list_models() -> list[dict[str, Any]]:
        """The served models: id, name, features, outputs, PBS count, bit widths, sizes."""
        return [m.summary for m in service.models.values()]

    @api.get("/models/{model_id}")
    async def describe_model(model_id: str) -> dict[str, Any]:
        """One served model's summary."""
        return service.model(model_id).summary

    @api.get(
        "/models/{model_id}/client",
        response_class=Response,
        responses={200: {"content": {ARCHIVE_MEDIA_TYPE: {}}}},
    )
    async def client_part(model_id: str) -> Response:
        """The client part (manifest, client specs, input/output processing) as a zip archive."""
        model = service.model(model_id)
        data = await service.off_loop(model.archive)
        return Response(
            data,
            media_type=ARCHIVE_MEDIA_TYPE,
            headers={
                "Content-Disposition": f'attachment; filename="{model_id}-client.zip"',
                "X-Model-Id": model_id,
            },
        )


def _add_key_routes(api: APIRouter, service: Service, limit: int) -> None:
    """Evaluation-key uploads (``POST /keys``, ``POST /models/{model_id}/keys``) and status."""

    async def keys_response(request: Request, model_id: str | None) -> JSONResponse:
        async with service.received_body(request, limit) as path:
            found_model, key_id, new = await service.off_loop(service.register_keys, path, model_id)
        return JSONResponse(
            {"key_id": key_id, "model_id": found_model, "new": new},
            status_code=201 if new else 200,
        )

    @api.post("/keys", openapi_extra=_ENVELOPE_BODY_DOC, status_code=201)
    async def upload_keys(request: Request) -> JSONResponse:
        """Upload an evaluation-key envelope (201 new, 200 already known); never a secret key."""
        return await keys_response(request, None)

    @api.post("/models/{model_id}/keys", openapi_extra=_ENVELOPE_BODY_DOC, status_code=201)
    async def upload_model_keys(model_id: str, request: Request) -> JSONResponse:
        """Upload evaluation keys that must belong to ``model_id`` (409 otherwise)."""
        service.model(model_id)
        return await keys_response(request, model_id)

    @api.get("/models/{model_id}/keys/{key_id}")
    async def key_status(model_id: str, key_id: str) -> dict[str, Any]:
        """200 if the service holds these evaluation keys for the model, 404 if not."""
        known = is_id(key_id) and await service.off_loop(service.knows_keys, model_id, key_id)
        if not known:
            raise ServiceError(404, f"unknown evaluation keys {key_id!r} for model {model_id}")
        return {"key_id": key_id, "model_id": model_id}


def _add_predict_route(api: APIRouter, service: Service, limit: int) -> None:
    """``POST /models/{model_id}/predict``: an encrypted run."""

    @api.post(
        "/models/{model_id}/predict",
        openapi_extra=_ENVELOPE_BODY_DOC,
        response_class=Response,
        responses={200: {"content": {ENVELOPE_MEDIA_TYPE: {}}}},
    )
    async def predict(model_id: str, request: Request) -> Response:
        """Run the circuit on a ciphertext envelope of one or more rows (key id in X-Key-Id).

        A client that goes away stops the run before its next circuit call (a call that has
        started runs to its end)."""
        service.model(model_id)
        key_id = request.headers.get(KEY_ID_HEADER)
        if not key_id:
            raise ServiceError(400, f"the {KEY_ID_HEADER} header (the key id) is required")
        if not is_id(key_id):
            raise ServiceError(400, f"malformed {KEY_ID_HEADER} {key_id!r}")
        async with service.received_body(request, limit) as path:
            env = await service.off_loop(service.read_inputs, model_id, key_id, path)
        gone = threading.Event()
        watcher = asyncio.create_task(_watch_disconnect(request, gone))
        try:
            out, seconds = await service.off_loop(service.predict, model_id, env, gone.is_set)
        except RunCancelledError as exc:
            logger.info("predict on model %s: the client went away, %s", model_id, exc)
            return Response(status_code=499)  # nobody reads it
        finally:
            watcher.cancel()
        headers = {RUN_SECONDS_HEADER: f"{seconds:.6f}"}
        if service.config.key_registry:
            headers[NODE_HEADER] = _ray_node_id()
        return Response(out, media_type=ENVELOPE_MEDIA_TYPE, headers=headers)


#: On Ray: the id of the node whose replica answered a predict (for operators and tests).
NODE_HEADER = "X-Ray-Node"


def _ray_node_id() -> str:
    import ray

    return str(ray.get_runtime_context().get_node_id())
