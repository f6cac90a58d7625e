"""Running the app on uvicorn: in the foreground (the CLI) or on a background thread (tests,
benchmarks, notebooks). Binds 127.0.0.1 unless told otherwise."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import uvicorn

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"


def _url(server: uvicorn.Server, host: str) -> str:
    port = server.servers[0].sockets[0].getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


def _config(
    app: Any, host: str, port: int, log_level: str, grace: float | None = None
) -> uvicorn.Config:
    # One event loop in one process: concurrency comes from the app's thread pool.
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=grace,
    )


def serve_foreground(
    app: Any,
    *,
    host: str = DEFAULT_HOST,
    port: int = 8000,
    on_ready: Callable[[str], None] | None = None,
    log_level: str = "warning",
    grace: float | None = None,
) -> None:
    """Serve until SIGINT / SIGTERM; ``on_ready(url)`` is called once the socket listens.

    Port 0 picks a free port (the URL given to ``on_ready`` has the real one). uvicorn handles
    the signal: it stops accepting connections, gives requests in progress ``grace`` seconds
    (``None``: as long as they take), cancels those still running, runs the app's shutdown,
    and re-raises the signal, so that the caller's handler decides (Python's own: Ctrl-C
    ends in ``KeyboardInterrupt``).
    """
    server = uvicorn.Server(_config(app, host, port, log_level, grace))

    async def main() -> None:
        task = asyncio.create_task(server.serve())
        while not server.started and not task.done():
            await asyncio.sleep(0.02)
        if server.started and on_ready is not None:
            on_ready(_url(server, host))
        await task

    asyncio.run(main())
    if not server.started:
        raise OSError(f"could not serve on {host}:{port} (address in use or not allowed?)")


class BackgroundServer:
    """uvicorn serving an app on a daemon thread (no signal handlers); a context manager.

    Args:
        app: the ASGI app.
        host: address to bind (loopback by default).
        port: port (0: a free one).
        startup_timeout: seconds to wait for the socket (s).
    """

    def __init__(
        self,
        app: Any,
        *,
        host: str = DEFAULT_HOST,
        port: int = 0,
        startup_timeout: float = 30.0,
        log_level: str = "warning",
    ) -> None:
        self.host = host
        self._server = uvicorn.Server(_config(app, host, port, log_level))
        self._thread = threading.Thread(target=self._server.run, name="uvicorn", daemon=True)
        self._timeout = startup_timeout
        self.url = ""

    def start(self) -> BackgroundServer:
        """Start and wait until the socket listens."""
        self._thread.start()
        deadline = time.monotonic() + self._timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise OSError(f"uvicorn did not start on {self.host}")
            time.sleep(0.02)
        self.url = _url(self._server, self.host)
        return self

    def stop(self) -> None:
        """Graceful shutdown: finish requests in progress, run the app's shutdown."""
        self._server.should_exit = True
        self._thread.join(timeout=60)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *_: Any) -> None:
        self.stop()
