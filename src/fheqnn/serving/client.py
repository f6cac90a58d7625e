"""The HTTP client of the encrypted inference service.

The client holds the secret key: it fetches a model's client part, uploads its evaluation keys
once (after asking whether the server knows them), and sends only ciphertexts after that.
Connection failures are retried with exponential backoff; every 4xx becomes a clear exception.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from ..errors import FheqnnError
from ..runtime.artifacts import ModelFolder
from ..runtime.client import FheModelClient
from ..runtime.roundtrip import RoundTrip
from .archive import MAX_ARCHIVE_BYTES, extract_client_archive
from .config import DEFAULT_FETCH_TIMEOUT

logger = logging.getLogger(__name__)

KEY_ID_HEADER = "X-Key-Id"
RUN_SECONDS_HEADER = "X-Run-Seconds"
# Worth another attempt: the server is starting, restarting, or its replicas are busy.
_RETRY_STATUS = (502, 503, 504)
#: Longest wait between two attempts (s), whatever a Retry-After header asks for.
MAX_RETRY_AFTER = 30.0
_RETRY_ERRORS = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.RemoteProtocolError,
    httpx.ReadError,
    httpx.WriteError,
    httpx.PoolTimeout,
)


class ServerResponseError(FheqnnError):
    """The service answered a request with an error status.

    Attributes:
        status: the HTTP status.
        message: the service's explanation.
    """

    def __init__(self, status: int, message: str, url: str = "") -> None:
        super().__init__(f"{url}: HTTP {status}: {message}" if url else f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class BadRequestError(ServerResponseError, ValueError):
    """400: the request was malformed (not an envelope, truncated, no key id...)."""


class UnauthorizedError(ServerResponseError, PermissionError):
    """401: the service wants a token, and the one given (if any) is wrong."""


class NotFoundError(ServerResponseError, LookupError):
    """404: unknown model or unknown evaluation keys."""


class ConflictError(ServerResponseError, ValueError):
    """409: keys or ciphertext of another model or key."""


class PayloadTooLargeError(ServerResponseError, ValueError):
    """413: the body is over the service's ``--max-request-mb``, or its rows over its
    ``--max-request-rows``."""


class ServiceUnavailableError(FheqnnError, ConnectionError):
    """The service could not be reached (after the retries)."""


class ReplyTooLargeError(FheqnnError, ValueError):
    """A download passed its size limit (counted as the bytes arrive; nothing is kept)."""


class DeadlineError(FheqnnError, TimeoutError):
    """A download did not complete within its overall deadline (a server that trickles bytes
    cannot hold the client longer)."""


#: Most bytes of an error reply read while downloading (the rest is not read).
_ERROR_REPLY_BYTES = 1 << 16


_BY_STATUS: dict[int, type[ServerResponseError]] = {
    400: BadRequestError,
    401: UnauthorizedError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
}


def _raise_for(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        message = str(response.json().get("error", response.text))
    except (ValueError, AttributeError):
        message = response.text[:500] or response.reason_phrase
    cls = _BY_STATUS.get(response.status_code, ServerResponseError)
    raise cls(response.status_code, message, str(response.request.url))


def _worth_retrying(response: httpx.Response) -> bool:
    """A 502/503/504, or a 500 that is not the service's own answer: Ray Serve's proxy answers
    a bare 500 when the replica running a request dies (Ray 2.60 maps a dead replica to 500,
    not to 503). Every request of this client can be sent again: a key upload stores the
    same keys, a predict computes the same function of the same ciphertext."""
    if response.status_code in _RETRY_STATUS:
        return True
    if response.status_code != 500:
        return False
    try:
        ours = isinstance(response.json(), dict) and "error" in response.json()
    except ValueError:
        ours = False
    return not ours


def _retry_after(response: httpx.Response) -> float:
    """The wait a Retry-After header asks for, in seconds (0 without one; at most
    :data:`MAX_RETRY_AFTER`)."""
    try:
        return min(MAX_RETRY_AFTER, max(0.0, float(response.headers.get("retry-after", 0))))
    except ValueError:
        return 0.0


class HttpClient:
    """Client of an ``fheqnn serve`` service.

    Args:
        url: the service's base URL, e.g. ``http://127.0.0.1:8000``.
        token: bearer token, when the service was started with ``--token-env``.
        timeout: seconds to wait for an answer (encrypted runs of large batches are slow).
        connect_timeout: seconds to wait for a connection.
        retries: further attempts after a connection failure, a 502/503/504, or a 500 that
            is not the service's own error (a Ray Serve replica that died); a Retry-After
            header lengthens the wait.
        backoff: first wait between attempts (s), doubled each time.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        timeout: float = 600.0,
        connect_timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.5,
    ) -> None:
        self.url = url.rstrip("/")
        self.retries = max(0, int(retries))
        self.backoff = float(backoff)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(
            base_url=self.url,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
        )
        self._known_keys: set[tuple[str, str]] = set()
        self._rows_caps: dict[str, int | None] = {}
        self.last_run_seconds = 0.0

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        delay = self.backoff
        for attempt in range(self.retries + 1):
            try:
                response = self._http.request(method, path, **kwargs)
            except _RETRY_ERRORS as exc:
                if attempt == self.retries:
                    raise ServiceUnavailableError(
                        f"cannot reach {self.url}{path} after {attempt + 1} attempts: {exc}"
                    ) from exc
                logger.info("%s %s failed (%s); retrying in %.1f s", method, path, exc, delay)
            except httpx.TimeoutException as exc:
                raise ServiceUnavailableError(f"{self.url}{path} did not answer in time") from exc
            else:
                if not _worth_retrying(response) or attempt == self.retries:
                    _raise_for(response)
                    return response
                logger.info("%s %s: HTTP %d; retrying", method, path, response.status_code)
                delay = max(delay, _retry_after(response))
            time.sleep(delay)
            delay = min(delay * 2, MAX_RETRY_AFTER)
        raise AssertionError("unreachable")  # pragma: no cover

    # ------------------------------------------------------------------ service
    def health(self) -> dict[str, Any]:
        """``GET /health``."""
        return dict(self._request("GET", "/health").json())

    def models(self) -> list[dict[str, Any]]:
        """The served models' summaries."""
        return list(self._request("GET", "/models").json())

    def model(self, model_id: str) -> dict[str, Any]:
        """One served model's summary (``GET /models/{model_id}``)."""
        return dict(self._request("GET", f"/models/{model_id}").json())

    def max_request_rows(self, model_id: str) -> int | None:
        """Most rows the service takes per predict request for this model (asked once;
        ``None`` from a service that publishes no cap)."""
        if model_id not in self._rows_caps:
            cap = self.model(model_id).get("max_request_rows")
            ok = isinstance(cap, int) and not isinstance(cap, bool) and cap >= 1
            self._rows_caps[model_id] = cap if ok else None
        return self._rows_caps[model_id]

    def fitting_rows(self, client: FheModelClient, wanted: int) -> int:
        """``wanted`` rows per request, lowered to the service's cap (to a whole number of
        circuit calls when the cap allows one)."""
        cap = self.max_request_rows(client.model_id)
        if cap is None or wanted <= cap:
            return wanted
        batch = client.batch_size
        fitted = cap - cap % batch if cap >= batch else cap
        logger.info("the service takes at most %d rows per request: sending %d", cap, fitted)
        return fitted

    def fetch_client_part(
        self,
        model_id: str,
        out: str | Path,
        *,
        overwrite: bool = False,
        timeout: float = DEFAULT_FETCH_TIMEOUT,
        max_bytes: int = MAX_ARCHIVE_BYTES,
    ) -> ModelFolder:
        """Save a model's client part into a new folder (atomically, verified).

        The archive is downloaded with :meth:`download`: at most ``max_bytes``, counted as
        they arrive, within ``timeout`` seconds in all; nothing is written unless it all came.

        Raises:
            ArtifactError: ``out`` is not empty (without ``overwrite``), or the archive is bad.
            ReplyTooLargeError: the archive passed ``max_bytes``.
            DeadlineError: it did not all arrive within ``timeout`` seconds.
        """
        path = f"/models/{model_id}/client"
        data = self.download(path, max_bytes=max_bytes, timeout=timeout, what="client archive")
        return extract_client_archive(data, out, model_id=model_id, overwrite=overwrite)

    def download(self, path: str, *, max_bytes: int, timeout: float, what: str) -> bytes:
        """``GET path``'s body, bounded: refused as soon as it passes ``max_bytes`` (or declares
        more), and abandoned when it has not all arrived ``timeout`` seconds after the start,
        retries included, however slowly the server sends it.

        Raises:
            ReplyTooLargeError, DeadlineError, ServiceUnavailableError, ServerResponseError.
        """
        deadline = time.monotonic() + timeout
        delay = self.backoff
        for attempt in range(self.retries + 1):
            try:
                return self._download_once(path, max_bytes, timeout, deadline, what)
            except _RETRY_ERRORS as exc:
                if attempt == self.retries or time.monotonic() + delay >= deadline:
                    raise ServiceUnavailableError(
                        f"cannot download the {what} from {self.url}{path}: {exc}"
                    ) from exc
                logger.info("GET %s failed (%s); retrying in %.1f s", path, exc, delay)
            except httpx.TimeoutException as exc:
                raise DeadlineError(_late(self.url + path, what, timeout)) from exc
            time.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")  # pragma: no cover

    def _download_once(
        self, path: str, max_bytes: int, timeout: float, deadline: float, what: str
    ) -> bytes:
        left = max(0.001, deadline - time.monotonic())
        where = self.url + path
        # Each network wait is bounded by what is left of the deadline; between chunks the
        # deadline itself is checked, so a trickle of bytes cannot extend it.
        with self._http.stream("GET", path, timeout=httpx.Timeout(left)) as response:
            if not response.is_success:
                _raise_for_start(response)
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                raise ReplyTooLargeError(
                    f"{where}: the {what} is {declared} bytes, more than the {max_bytes} allowed"
                )
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > max_bytes:
                    raise ReplyTooLargeError(
                        f"{where}: the {what} passed {max_bytes} bytes (the most allowed); "
                        "stopped reading"
                    )
                if time.monotonic() > deadline:
                    raise DeadlineError(_late(where, what, timeout))
            return bytes(body)

    # ------------------------------------------------------------------ keys
    def has_keys(self, model_id: str, key_id: str) -> bool:
        """Whether the service holds these evaluation keys."""
        try:
            self._request("GET", f"/models/{model_id}/keys/{key_id}")
        except NotFoundError:
            return False
        return True

    def upload_keys(self, client: FheModelClient) -> bool:
        """Send the client's evaluation keys (never its secret key); ``True`` if they were new."""
        response = self._request(
            "POST",
            f"/models/{client.model_id}/keys",
            content=client.evaluation_keys(),
            headers={"Content-Type": "application/octet-stream"},
        )
        info = client.key_info
        assert info is not None
        self._known_keys.add((client.model_id, info.key_id))
        return response.status_code == 201

    def ensure_keys(self, client: FheModelClient) -> bool:
        """Upload the client's evaluation keys only if the service does not hold them.

        Returns:
            ``True`` if they were uploaded now.
        """
        info = client.key_info
        if info is None:
            client.evaluation_keys()  # raises the runtime's "no keys loaded" error
            raise AssertionError("unreachable")  # pragma: no cover
        if (client.model_id, info.key_id) in self._known_keys:
            return False
        if self.has_keys(client.model_id, info.key_id):
            self._known_keys.add((client.model_id, info.key_id))
            return False
        self.upload_keys(client)
        return True

    # ------------------------------------------------------------------ runs
    def run(self, model_id: str, key_id: str, ciphertext: bytes) -> bytes:
        """Send a ciphertext envelope; return the result envelope (keys must be uploaded)."""
        response = self._request(
            "POST",
            f"/models/{model_id}/predict",
            content=ciphertext,
            headers={KEY_ID_HEADER: key_id, "Content-Type": "application/octet-stream"},
        )
        try:
            self.last_run_seconds = float(response.headers.get(RUN_SECONDS_HEADER, "nan"))
        except ValueError:
            self.last_run_seconds = float("nan")
        return response.content

    def run_encrypted(self, client: FheModelClient, ciphertext: bytes) -> bytes:
        """Upload keys if needed, run, and re-upload once if the service forgot them."""
        self.ensure_keys(client)
        info = client.key_info
        assert info is not None
        try:
            return self.run(client.model_id, info.key_id, ciphertext)
        except NotFoundError as exc:
            if "evaluation keys" not in exc.message:
                raise
            # The service restarted without a key store, or evicted them: send them again.
            self._known_keys.discard((client.model_id, info.key_id))
            self.upload_keys(client)
            return self.run(client.model_id, info.key_id, ciphertext)

    def predict_raw(
        self, client: FheModelClient, x: Any, *, check_range: bool = True
    ) -> np.ndarray:
        """Encrypt rows, run them on the service, decrypt: float outputs (n_rows, n_outputs).

        ``check_range`` as in :meth:`FheModelClient.quantize` (``False`` for the parts of rows
        already checked as a whole). More rows than the service takes per request are sent in
        several requests (:meth:`round_trip`)."""
        rows = len(x)
        if self.fitting_rows(client, rows) < rows:
            return self.round_trip(client, x, rows_per_request=rows).outputs
        blob = client.encrypt(x, check_range=check_range)
        return client.decrypt_raw(self.run_encrypted(client, blob))

    def predict(self, client: FheModelClient, x: Any) -> np.ndarray:
        """Predictions after post-processing (labels, values), as the local ``predict``."""
        return client.part.output_spec.apply(self.predict_raw(client, x))

    def round_trip(
        self,
        client: FheModelClient,
        x: Any,
        *,
        rows_per_request: int,
        progress: Callable[[int], Any] | None = None,
    ) -> RoundTrip:
        """The round trip of :func:`fheqnn.runtime.encrypted_predict`, through the service.

        The rows are checked (and warned about) once as a whole, then sent in requests of
        ``rows_per_request`` rows (fewer if the service takes fewer per request: see
        :meth:`max_request_rows`); ``server_seconds`` is the service's own run time, transfers
        excluded.

        Args:
            client: a client with keys loaded (they are uploaded when the service lacks them).
            x: float rows (n_rows, n_features).
            rows_per_request: rows per request (best a multiple of the model's batch size: a
                part-filled circuit call is padded).
            progress: called with the number of rows finished after each request.
        """
        x = client.part.check_and_warn(x)  # once for the whole file, not per request
        rows_per_request = self.fitting_rows(client, rows_per_request)
        outputs, run_s = [], 0.0
        for start in range(0, len(x), rows_per_request):
            part = x[start : start + rows_per_request]
            outputs.append(self.predict_raw(client, part, check_range=False))
            run_s += self.last_run_seconds
            if progress is not None:
                progress(len(part))
        raw = np.concatenate(outputs)
        return RoundTrip(raw, client.part.postprocess(raw), run_s, len(x))


def _late(where: str, what: str, timeout: float) -> str:
    return f"{where}: the {what} did not all arrive within {timeout:g} s; gave up"


def _raise_for_start(response: httpx.Response) -> None:
    """:func:`_raise_for` of a streamed error reply, from its first
    :data:`_ERROR_REPLY_BYTES` bytes (the rest is not read)."""
    data = bytearray()
    for chunk in response.iter_bytes():
        data += chunk
        if len(data) >= _ERROR_REPLY_BYTES:
            break
    try:
        message = str(json.loads(bytes(data)).get("error", ""))
    except (ValueError, AttributeError):
        message = ""
    text = data[:500].decode("utf-8", "replace")
    cls = _BY_STATUS.get(response.status_code, ServerResponseError)
    raise cls(
        response.status_code,
        message or text or response.reason_phrase,
        str(response.request.url),
    )


def fetch_client_part(
    url: str,
    model_id: str,
    out: str | Path,
    *,
    token: str | None = None,
    overwrite: bool = False,
    timeout: float = DEFAULT_FETCH_TIMEOUT,
    max_bytes: int = MAX_ARCHIVE_BYTES,
) -> ModelFolder:
    """Save a served model's client part to ``out`` (for ``keygen``), within ``timeout``
    seconds and ``max_bytes`` bytes; see :meth:`HttpClient.fetch_client_part`."""
    with HttpClient(url, token=token, timeout=timeout) as http:
        return http.fetch_client_part(
            model_id, out, overwrite=overwrite, timeout=timeout, max_bytes=max_bytes
        )
