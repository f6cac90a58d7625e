"""Runtime: compiled-model folders, keys, the client and the server.

Loads numpy and Concrete only (no training, ONNX or scikit-learn code): this is what a deployed
encryption client or inference server imports.
"""

from .artifacts import ArtifactError, open_model_folder
from .client import FheModelClient, KeyInfo
from .envelope import EnvelopeError
from .roundtrip import RoundTrip, encrypted_predict
from .server import FheModelServer

__all__ = [
    "ArtifactError",
    "EnvelopeError",
    "FheModelClient",
    "FheModelServer",
    "KeyInfo",
    "RoundTrip",
    "encrypted_predict",
    "open_model_folder",
]
