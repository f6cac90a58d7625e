"""Serving encrypted inference over HTTP, and its scale-out on Ray.

- :mod:`.app`: ``create_app(config)``, the FastAPI app factory (uvicorn or Ray Serve runs it).
- :mod:`.keystore`: evaluation keys on disk, content-addressed, written atomically.
- :mod:`.client`: :class:`HttpClient`, the encrypted inference client of the service.
- :mod:`.ray_backend`: Ray Serve replicas of the app, and Ray-backed offline batches.
- :mod:`.archive`: the client part of a compiled model as one archive, extracted safely.

Nothing here is imported by ``fheqnn`` or ``fheqnn.runtime``: fastapi, uvicorn, httpx and ray are
loaded only by the module that needs them (this package's names resolve lazily).
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "ServeConfig": ".config",
    "create_app": ".app",
    "KeyStore": ".keystore",
    "HttpClient": ".client",
    "ServerResponseError": ".client",
    "fetch_client_part": ".client",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)
