"""Runtime: compiled-model folders, keys, the client and the server."""

from .artifacts import ArtifactError, open_model_folder
from .client import FheModelClient, KeyInfo
from .envelope import EnvelopeError
from .server import FheModelServer

__all__ = [
    "ArtifactError",
    "EnvelopeError",
    "FheModelClient",
    "FheModelServer",
    "KeyInfo",
    "open_model_folder",
]
