"""The service's operating limits, on real uvicorn servers on 127.0.0.1: request bodies kept on
disk and handled a bounded number at a time, rows per request, work of a client that went away,
key sizes, and a bounded ``fetch``."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from fheqnn import FheModelClient, FheModelServer
from fheqnn.cli import main
from fheqnn.runtime.envelope import Envelope
from fheqnn.serving.app import create_app
from fheqnn.serving.client import (
    DeadlineError,
    HttpClient,
    PayloadTooLargeError,
    ReplyTooLargeError,
    fetch_client_part,
)
from fheqnn.serving.config import ServeConfig
from fheqnn.serving.runner import BackgroundServer


def wait_for(condition: Callable[[], bool], what: str, *, attempts: int = 600) -> None:
    """Poll ``condition`` every 0.05 s, at most ``attempts`` times (a bound, not a timing)."""
    for _ in range(attempts):
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


def raw_request(url: str, head: str, body: bytes) -> socket.socket:
    """A connection that has sent ``head`` (request line and headers) and ``body`` so far."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=60)
    sock.sendall(head.encode() + b"\r\n" + body)
    return sock


def read_reply(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (bounded by the socket's timeout)."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


@pytest.fixture(scope="module")
def client_a(tiny_models) -> FheModelClient:
    return FheModelClient(tiny_models.a, tiny_models.keys_a)


@pytest.fixture
def one_slot(tiny_models) -> Iterator[tuple[BackgroundServer, object]]:
    """A server that handles one request body at a time (``max_uploads=1``)."""
    app = create_app(ServeConfig((tiny_models.a,), max_request_mb=64, max_uploads=1))
    with BackgroundServer(app) as running:
        yield running, app.state.service
    assert not app.state.service.body_dir.exists()  # removed at shutdown


def test_bodies_go_to_files_removed_on_every_path_one_upload_at_a_time(one_slot, client_a):
    server, service = one_slot
    bodies = service.body_dir

    def files() -> list[Path]:
        return list(bodies.iterdir())

    # A slow upload: its bytes are on disk as they arrive, not in memory.
    head = "POST /keys HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\nConnection: close\r\n"
    with raw_request(server.url, head, b"z" * 10) as slow:
        wait_for(lambda: [f.stat().st_size for f in files()] == [10], "10 bytes in a body file")
        # A second one waits for the only slot: its body is not read meanwhile.
        head = "POST /keys HTTP/1.1\r\nHost: t\r\nContent-Length: 7\r\nConnection: close\r\n"
        with raw_request(server.url, head, b"garbage") as waiting:
            wait_for(lambda: service.uploads_waiting == 1, "the second upload waits")
            assert len(files()) == 1
            # The first client goes away mid-upload: its file goes, the second one's turn.
            slow.close()
            reply = read_reply(waiting)
    assert reply.startswith(b"HTTP/1.1 400") and b"not an fheqnn envelope" in reply, reply
    wait_for(lambda: not files(), "no body file left")
    # Accepted keys, and a body refused half-way (over the limit): no file left either.
    response = httpx.post(f"{server.url}/keys", content=client_a.evaluation_keys())
    assert response.status_code == 201, response.text
    assert not files()

    def chunks() -> Iterator[bytes]:
        for _ in range(70):
            yield b"y" * 1_000_000

    response = httpx.post(f"{server.url}/keys", content=chunks())
    assert response.status_code == 413 and "over the limit" in response.json()["error"]
    assert not files()
    assert service.uploads_waiting == 0


def test_keys_over_the_models_key_size_are_refused_before_being_read(tiny_models, client_a):
    app = create_app(ServeConfig((tiny_models.a,), max_request_mb=1000))
    service = app.state.service
    most = service.models[client_a.model_id].keys_limit
    assert most == len(client_a.evaluation_keys())  # the exact size of this model's keys
    body = b"\0" * (most + 1)
    with BackgroundServer(app) as server:
        for path in ("/keys", f"/models/{client_a.model_id}/keys"):
            response = httpx.post(f"{server.url}{path}", content=body)
            assert response.status_code == 413, response.text
            assert f"at most {most} bytes" in response.json()["error"]


@pytest.fixture(scope="module")
def two_rows(tiny_models) -> Iterator[tuple[BackgroundServer, object]]:
    """A server taking at most 2 rows per predict request, with one worker thread."""
    config = ServeConfig((tiny_models.a,), max_request_mb=64, max_request_rows=2, workers=1)
    app = create_app(config)
    with BackgroundServer(app) as running:
        yield running, app.state.service


@pytest.mark.slow
def test_rows_per_request_are_capped_and_the_client_fits_its_requests(
    two_rows, client_a, tiny_models
):
    server, service = two_rows
    x = tiny_models.x[:5]
    with HttpClient(server.url, retries=0) as http:
        assert http.model(client_a.model_id)["max_request_rows"] == 2
        http.ensure_keys(client_a)
        key_id = client_a.key_info.key_id
        with pytest.raises(PayloadTooLargeError, match=r"3 rows: .*at most 2 rows per request"):
            http.run(client_a.model_id, key_id, client_a.encrypt(x[:3]))
        served = service.models[client_a.model_id]
        response = httpx.post(
            f"{server.url}/models/{client_a.model_id}/predict",
            content=b"\0" * (served.inputs_limit + 1),
            headers={"X-Key-Id": key_id},
        )
        assert response.status_code == 413  # too large for 2 rows: refused before being read
        assert "at most 2 rows per request" in response.json()["error"]
        calls_before = served.server.calls_run
        assert calls_before == 0  # refused before running anything
        sent: list[int] = []
        http._http.event_hooks["request"].append(
            lambda request: sent.append(request.url.path.endswith("/predict"))
        )
        trip = http.round_trip(client_a, x, rows_per_request=8)
        assert sum(sent) == 3  # 2 + 2 + 1 rows
        labels = http.predict(client_a, x)
        assert sum(sent) == 6
    local = FheModelServer(tiny_models.a)
    expected = client_a.decrypt_raw(local.run(client_a.encrypt(x), client_a.evaluation_keys()))
    np.testing.assert_array_equal(expected, trip.outputs)  # model a is bit-exact
    np.testing.assert_array_equal(labels, trip.predictions)


class GatedCircuit:
    """A compiled circuit whose calls wait for ``go`` (set by the test), counting arrivals."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.arrived = threading.Semaphore(0)
        self.go = threading.Event()

    def run(self, *args: object, **kwargs: object) -> object:
        self.arrived.release()
        assert self.go.wait(60), "the test never let the call run"
        return self.inner.run(*args, **kwargs)


def test_a_client_that_goes_away_stops_its_run_before_the_next_call(
    two_rows, client_a, tiny_models, caplog
):
    server, service = two_rows  # one worker: the calls of a request run one after another
    caplog.set_level(logging.INFO, logger="fheqnn.serving.app")
    served = service.models[client_a.model_id].server
    gate = GatedCircuit(served._server)
    served._server = gate
    try:
        with HttpClient(server.url, retries=0) as http:
            http.ensure_keys(client_a)
            gate.go.set()
            before = served.calls_run
            blob = client_a.encrypt(tiny_models.x[:2])
            http.run(client_a.model_id, client_a.key_info.key_id, blob)
            assert served.calls_run - before == 2  # a client that waits gets both calls
        gate.go.clear()
        gate.arrived = threading.Semaphore(0)
        blob = client_a.encrypt(tiny_models.x[:2])
        head = (
            f"POST /models/{client_a.model_id}/predict HTTP/1.1\r\nHost: t\r\n"
            f"X-Key-Id: {client_a.key_info.key_id}\r\nContent-Length: {len(blob)}\r\n"
        )
        before = served.calls_run
        with raw_request(server.url, head, blob):
            assert gate.arrived.acquire(timeout=60)  # the first call has started
        # The client is gone while its first call runs.
        wait_for(
            lambda: any("went away before" in r.getMessage() for r in caplog.records),
            "the service notices the client went away",
        )
        gate.go.set()
        wait_for(
            lambda: any("stopped after 1 of 2" in r.getMessage() for r in caplog.records),
            "the run stops",
        )
        assert served.calls_run - before == 1
    finally:
        served._server = gate.inner
        gate.go.set()


def _real_key_bytes(key_folder: Path) -> tuple[int, int]:
    """The evaluation-key file's size and its Concrete payload's size."""
    blob = (key_folder / "evaluation.keys").read_bytes()
    return len(blob), len(Envelope.from_bytes(blob, kind="evaluation_keys").payloads[0])


def test_models_publish_the_real_evaluation_key_size(tiny_models, tmp_path):
    from fheqnn.concrete_seam import load_client_specs, serialized_evaluation_keys_bytes

    cases = [(tiny_models.a, tiny_models.keys_a), (tiny_models.b, tiny_models.keys_b)]
    shapes = set()
    for model, keys in cases:
        specs = load_client_specs((model / "client.specs").read_bytes())
        info = specs.program_info.get_keyset_info()
        shapes.add((len(info.bootstrap_keys()), len(info.keyswitch_keys())))
        assert serialized_evaluation_keys_bytes(specs) == _real_key_bytes(keys)[1]
    assert len(shapes) == 2  # two key-set shapes: (1, 1) and (2, 2) keys
    app = create_app(ServeConfig((tiny_models.a, tiny_models.b)))
    service = app.state.service
    with BackgroundServer(app) as server, HttpClient(server.url) as http:
        published = {m["model_id"]: m for m in http.models()}
        health = http.health()
        for model, keys in cases:
            summary = published[FheModelClient(model).model_id]
            assert summary["evaluation_keys_bytes"] == _real_key_bytes(keys)[0]
            # Concrete's statistics estimate, kept under its own name, is another figure.
            assert summary["evaluation_keys_bytes_estimate"] != summary["evaluation_keys_bytes"]
        # No --max-request-mb: the limit is derived from the models, and their keys fit.
        largest = max(max(m.keys_limit, m.inputs_limit) for m in service.models.values())
        assert health["max_request_bytes"] == largest + (1 << 20)
        assert largest == max(_real_key_bytes(k)[0] for _, k in cases)
        for _, keys in cases:
            blob = (keys / "evaluation.keys").read_bytes()
            assert httpx.post(f"{server.url}/keys", content=blob).status_code == 201
        response = httpx.post(f"{server.url}/keys", content=b"\0" * (largest + (1 << 20) + 1))
        assert response.status_code == 413 and "the limit is" in response.json()["error"]


@pytest.mark.slow
def test_serve_prints_its_body_limit(tiny_models):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    with tempfile.TemporaryFile(mode="w+") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fheqnn.cli", "serve", str(tiny_models.a), "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=env,
        )
        try:
            lines = [proc.stdout.readline() for _ in range(2)]
        finally:
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=90)
    expected = (_real_key_bytes(tiny_models.keys_a)[0] + (1 << 20)) / 1e6
    assert lines[0].strip() == (
        f"request bodies up to {expected:.1f} MB (derived from the models served)"
    ), lines
    assert " at http://127.0.0.1:" in lines[1], lines


class Misbehaving:
    """A few lines of asyncio HTTP on 127.0.0.1 that answer every request badly: ``trickle``
    (one byte of a 1000-byte body every 0.1 s), ``flood`` (megabytes, no length declared) or
    ``declared`` (a length of 10 GB). A context manager; its ``url``."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.url = ""

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            if self.mode == "trickle":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
                for _ in range(1000):
                    writer.write(b"x")
                    await writer.drain()
                    await asyncio.sleep(0.1)
            elif self.mode == "flood":
                writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
                for _ in range(500):  # 32 MB at most
                    writer.write(b"y" * 65536)
                    await writer.drain()
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10000000000\r\n\r\nzip")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client gave up, as it should
        finally:
            writer.close()

    def __enter__(self) -> Misbehaving:
        self.thread.start()
        server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._answer, "127.0.0.1", 0), self.loop
        ).result(timeout=30)
        self.server = server
        self.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        return self

    def __exit__(self, *_: object) -> None:
        async def close() -> None:
            self.server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)
        self.loop.close()


@pytest.mark.parametrize(
    ("mode", "error", "message"),
    [
        ("trickle", DeadlineError, r"did not all arrive within 1 s"),
        ("flood", ReplyTooLargeError, r"passed 100000 bytes"),
        ("declared", ReplyTooLargeError, r"is 10000000000 bytes, more than the 100000"),
    ],
)
def test_fetch_is_bounded_in_bytes_and_time(mode, error, message, tmp_path):
    out = tmp_path / "client"
    with Misbehaving(mode) as server, pytest.raises(error, match=message):
        fetch_client_part(server.url, "0" * 32, out, timeout=1.0, max_bytes=100_000)
    assert not out.exists() and list(tmp_path.iterdir()) == []  # nothing written


def test_cli_fetch_timeout_gives_one_clear_line(tmp_path, capsys):
    out = tmp_path / "client"
    with Misbehaving("trickle") as server:
        code = main(["fetch", server.url, "0" * 32, "--out", str(out), "--timeout", "0.5"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and not out.exists()
    assert len(err) == 1 and "did not all arrive within 0.5 s" in err[0], err


def test_a_stalled_upload_loses_its_slot(tiny_models):
    config = ServeConfig((tiny_models.a,), max_request_mb=64, max_uploads=1, upload_seconds=0.5)
    app = create_app(config)
    with BackgroundServer(app) as server:
        head = "POST /keys HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\nConnection: close\r\n"
        with raw_request(server.url, head, b"z" * 10) as stalled:
            reply = read_reply(stalled)  # the client sends nothing more
        assert reply.startswith(b"HTTP/1.1 408") and b"within 0.5 s" in reply, reply
        # The only slot is free again.
        response = httpx.post(f"{server.url}/keys", content=b"garbage")
        assert response.status_code == 400 and "not an fheqnn" in response.json()["error"]
        assert not list(app.state.service.body_dir.iterdir())
