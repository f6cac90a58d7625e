"""The encrypted inference service over HTTP (real uvicorn on 127.0.0.1), its client, and Ray."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fheqnn import FheModelClient, FheModelServer
from fheqnn.cli import main
from fheqnn.runtime.envelope import Envelope
from fheqnn.serving.app import create_app
from fheqnn.serving.client import (
    BadRequestError,
    ConflictError,
    HttpClient,
    NotFoundError,
    PayloadTooLargeError,
    ServiceUnavailableError,
    UnauthorizedError,
)
from fheqnn.serving.config import ServeConfig
from fheqnn.serving.runner import BackgroundServer

SRC = str(Path(__file__).resolve().parents[1] / "src")
TOKEN = "s3cret-token"


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` with its bytes."""
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def data(tiny_models) -> tuple[np.ndarray, np.ndarray]:
    return tiny_models.x, tiny_models.y


@pytest.fixture(scope="module")
def ws(tmp_path_factory, tiny_models):
    """Two compiled tiny models (a, b) with keys (conftest.py: ``a`` bit-exact, so that the
    local, HTTP and Ray runs agree bit for bit), and this module's own folder for key stores
    and data files."""
    root = tmp_path_factory.mktemp("serving")
    np.save(root / "x.npy", tiny_models.x[:6])
    return {
        "root": root,
        "a": tiny_models.a,
        "b": tiny_models.b,
        "keys_a": tiny_models.keys_a,
        "keys_b": tiny_models.keys_b,
        "store": root / "store",
        "x": tiny_models.x,
    }


@pytest.fixture(scope="module")
def server(ws):
    config = ServeConfig(
        (ws["a"], ws["b"]), key_store=ws["store"], max_request_mb=64, max_cached_keys=2
    )
    with BackgroundServer(create_app(config)) as running:
        yield running


@pytest.fixture(scope="module")
def client_a(ws) -> FheModelClient:
    return FheModelClient(ws["a"], ws["keys_a"])


@pytest.fixture(scope="module")
def client_b(ws) -> FheModelClient:
    return FheModelClient(ws["b"], ws["keys_b"])


def local_result(ws, client: FheModelClient, rows: np.ndarray) -> np.ndarray:
    server = FheModelServer(client.folder.path)
    return client.decrypt_integers(server.run(client.encrypt(rows), client.evaluation_keys()))


def test_runtime_and_cli_do_not_import_the_web_or_ray_stacks() -> None:
    code = (
        # fheqnn.cli.process loads the parser and with it every command module.
        "import sys, fheqnn, fheqnn.runtime, fheqnn.cli.process, fheqnn.serving; "
        "bad = [m for m in ('fastapi', 'starlette', 'uvicorn', 'httpx', 'ray') "
        "if m in sys.modules];"
        "print(bad)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": SRC},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "[]"


def test_health_models_and_openapi(server, ws, client_a) -> None:
    with HttpClient(server.url) as http:
        assert http.health() == {
            "status": "ok",
            "backend": "local",
            "replicas": 1,
            "models": 2,
            "max_request_bytes": 64_000_000,
        }
        models = {m["name"]: m for m in http.models()}
    assert set(models) == {"a", "b"}
    assert models["a"]["model_id"] == client_a.model_id
    assert models["a"]["n_features"] == 4 and models["a"]["n_outputs"] == 3
    assert models["a"]["pbs_count"] > 0
    spec = httpx.get(f"{server.url}/openapi.json").json()
    assert "/models/{model_id}/predict" in spec["paths"] and "/keys" in spec["paths"]
    assert httpx.get(f"{server.url}/docs").status_code == 200


def test_fetch_client_part_then_keygen_and_cli_fetch(server, ws, client_a, tmp_path, capsys):
    with HttpClient(server.url) as http:
        folder = http.fetch_client_part(client_a.model_id, tmp_path / "fetched")
    # Client part only: no server program, no weights.
    assert sorted(p.name for p in folder.path.iterdir()) == [
        "client.json",
        "client.specs",
        "manifest.json",
    ]
    fetched = FheModelClient(folder.path)
    assert fetched.model_id == client_a.model_id
    fetched.keygen(tmp_path / "keys")
    # The CLI: a fresh folder works, a non-empty one is refused and left unchanged.
    assert main(["fetch", server.url, client_a.model_id, "--out", str(tmp_path / "cli")]) == 0
    assert "saved the client part" in capsys.readouterr().out
    before = snapshot(tmp_path / "cli")
    assert main(["fetch", server.url, client_a.model_id, "--out", str(tmp_path / "cli")]) == 2
    assert "not empty" in capsys.readouterr().err
    assert snapshot(tmp_path / "cli") == before
    assert main(["fetch", server.url, "0" * 32, "--out", str(tmp_path / "none")]) == 2
    assert "unknown model" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()


@pytest.fixture
def fresh_server(ws, tmp_path):
    """A server like ``server`` with a key store of its own: no test before has uploaded keys
    to it (``server`` is shared by the module, in whatever order its tests run)."""
    store = tmp_path / "store"
    config = ServeConfig((ws["a"], ws["b"]), key_store=store, max_request_mb=64, max_cached_keys=2)
    with BackgroundServer(create_app(config)) as running:
        yield running, store


def test_round_trip_equals_local_and_keys_are_uploaded_once(fresh_server, ws, client_a) -> None:
    server, store = fresh_server
    rows = ws["x"][:2]
    with HttpClient(server.url) as http:
        assert not http.has_keys(client_a.model_id, client_a.key_info.key_id)
        assert http.ensure_keys(client_a) is True  # asked first, then uploaded
        ciphertext = client_a.encrypt(rows)
        remote = client_a.decrypt_integers(
            http.run(client_a.model_id, client_a.key_info.key_id, ciphertext)
        )
        assert http.last_run_seconds > 0
    np.testing.assert_array_equal(remote, local_result(ws, client_a, rows))
    # A second client process: the server already knows the keys, nothing is uploaded.
    with HttpClient(server.url) as http:
        assert http.ensure_keys(client_a) is False
        labels = http.predict(client_a, rows[:1])
    assert set(labels) <= {"a", "b", "c"}
    # Uploading again answers 200 (known) instead of 201; the store holds one file per key.
    blob = client_a.evaluation_keys()
    response = httpx.post(f"{server.url}/keys", content=blob)
    assert response.status_code == 200 and response.json()["key_id"] == client_a.key_info.key_id
    stored = sorted(p.name for p in (store / client_a.model_id).iterdir())
    assert stored == [f"{client_a.key_info.key_id}.keys"]  # no temporary file left behind


def test_every_error_status(server, ws, client_a, client_b) -> None:
    url = server.url
    with HttpClient(url) as http:
        http.ensure_keys(client_a)
    key_a = client_a.key_info.key_id
    ct_a = client_a.encrypt(ws["x"][:1])

    def post(path: str, body: bytes, **headers: str) -> httpx.Response:
        return httpx.post(f"{url}{path}", content=body, headers=headers)

    def check(response: httpx.Response, status: int, pattern: str) -> None:
        assert response.status_code == status, response.text
        assert re.search(pattern, response.json()["error"]), response.json()

    predict_a = f"/models/{client_a.model_id}/predict"
    check(post("/keys", b"garbage"), 400, "not an fheqnn envelope")
    check(post(predict_a, b"garbage", **{"X-Key-Id": key_a}), 400, "not an fheqnn envelope")
    check(post(predict_a, ct_a), 400, "X-Key-Id")
    check(post(predict_a, ct_a[:-7], **{"X-Key-Id": key_a}), 400, "truncated")
    check(post(predict_a, ct_a, **{"X-Key-Id": "../../etc"}), 400, "malformed X-Key-Id")
    # A secret key is refused, raw or wrapped in an envelope, and never stored.
    secret = (ws["keys_a"] / "secret.keys").read_bytes()
    check(post("/keys", secret), 400, "secret key")
    wrapped = Envelope("evaluation_keys", client_a.model_id, "0" * 32, (secret,)).to_bytes()
    check(post("/keys", wrapped), 400, "secret key")
    # Keys that do not hash to their id.
    env = Envelope.from_bytes(client_a.evaluation_keys(), kind="evaluation_keys")
    forged = Envelope(
        "evaluation_keys", env.model_id, "f" * 32, (env.payloads[0][:-1] + b"\0",)
    ).to_bytes()
    check(post("/keys", forged), 400, "do not hash")
    # Unknown model or key.
    check(post("/models/" + "0" * 32 + "/predict", ct_a, **{"X-Key-Id": key_a}), 404, "model")
    check(httpx.get(f"{url}/models/nope/client"), 404, "unknown model")
    ct_unknown_key = Envelope.from_bytes(ct_a, kind="inputs")
    relabelled = Envelope(
        "inputs", client_a.model_id, "e" * 32, ct_unknown_key.payloads, ct_unknown_key.meta
    ).to_bytes()
    check(post(predict_a, relabelled, **{"X-Key-Id": "e" * 32}), 404, "unknown evaluation keys")
    check(httpx.get(f"{url}/models/{client_a.model_id}/keys/{'e' * 32}"), 404, "unknown")
    check(httpx.get(f"{url}/no/such/route"), 404, "Not Found")
    # Keys or ciphertext of another model, or another key: 409.
    check(post(f"/models/{client_a.model_id}/keys", client_b.evaluation_keys()), 409, "model")
    check(post(predict_a, client_b.encrypt(ws["x"][:1]), **{"X-Key-Id": key_a}), 409, "model")
    check(post(predict_a, ct_a, **{"X-Key-Id": "d" * 32}), 409, "encrypted with key")
    # Too large: refused from the declared length, and from a streamed (chunked) body.
    check(post(predict_a, b"x" * 65_000_001, **{"X-Key-Id": key_a}), 413, "limit")

    def chunks():
        for _ in range(70):
            yield b"y" * 1_000_000

    check(
        httpx.post(f"{url}{predict_a}", content=chunks(), headers={"X-Key-Id": key_a}),
        413,
        "over the limit",
    )
    # The client turns each status into its exception.
    with HttpClient(url, retries=0) as http:
        with pytest.raises(NotFoundError, match="unknown model"):
            http.run("0" * 32, key_a, ct_a)
        with pytest.raises(ConflictError, match="encrypted with key"):
            http.run(client_a.model_id, "d" * 32, ct_a)
        with pytest.raises(BadRequestError, match="truncated"):
            http.run(client_a.model_id, key_a, ct_a[:-1])
    # Nothing but the one valid key file ever reached the store.
    assert sorted(p.name for p in ws["store"].rglob("*") if p.is_file()) == [f"{key_a}.keys"]


def test_token_and_request_limit(ws, client_a, tmp_path) -> None:
    config = ServeConfig((ws["a"],), key_store=tmp_path / "store", max_request_mb=1, token=TOKEN)
    with BackgroundServer(create_app(config)) as running:
        assert httpx.get(f"{running.url}/health").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            response = httpx.get(f"{running.url}/models", headers=headers)
            assert response.status_code == 401 and "token" in response.json()["error"]
        # Unauthenticated bodies are refused before being read.
        response = httpx.post(f"{running.url}/keys", content=client_a.evaluation_keys())
        assert response.status_code == 401
        with HttpClient(running.url, token="wrong") as http, pytest.raises(UnauthorizedError):
            http.models()
        with HttpClient(running.url, token=TOKEN) as http:
            assert len(http.models()) == 1
            # 20 MB of evaluation keys over a 1 MB limit.
            with pytest.raises(PayloadTooLargeError):
                http.upload_keys(client_a)
    assert not any((tmp_path / "store").rglob("*.keys"))
    # Nobody listening: retried with backoff, then a clear error.
    with (
        HttpClient(running.url, retries=1, backoff=0.01) as http,
        pytest.raises(ServiceUnavailableError, match="after 2 attempts"),
    ):
        http.health()


def test_four_concurrent_clients_while_health_stays_responsive(server, ws, client_a) -> None:
    rows = ws["x"][:4]
    expected = local_result(ws, client_a, rows)
    with HttpClient(server.url) as http:
        http.ensure_keys(client_a)
    health_times: list[float] = []
    done = threading.Event()

    def poll_health() -> None:
        while not done.is_set():
            start = time.perf_counter()
            assert httpx.get(f"{server.url}/health").status_code == 200
            health_times.append(time.perf_counter() - start)
            time.sleep(0.05)

    def one_client(i: int) -> np.ndarray:
        with HttpClient(server.url) as http:
            blob = http.run_encrypted(client_a, client_a.encrypt(rows[i : i + 1]))
        return client_a.decrypt_integers(blob)

    poller = threading.Thread(target=poll_health)
    poller.start()
    try:
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(one_client, range(4)))
    finally:
        done.set()
        poller.join()
    np.testing.assert_array_equal(np.concatenate(results), expected)
    # Runs are off the event loop: health answered quickly throughout.
    assert health_times and max(health_times) < 1.0, health_times


def _ray_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": SRC, "RAY_USAGE_STATS_ENABLED": "0"}


def _start_cli_server(
    args: list[str], *, timeout: float = 120.0
) -> tuple[subprocess.Popen, str, list[str]]:
    """``fheqnn serve ARGS`` in a subprocess; returns it, its URL and the lines it printed."""
    env = {**_ray_env(), "FHEQNN_TEST_TOKEN": TOKEN}
    # A file, never a pipe that could fill up and block the server; closed by _stop.
    stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "fheqnn.cli", "serve", *args],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        env=env,
    )
    proc.stderr_file = stderr
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        match = re.search(r"at (http://127\.0\.0\.1:\d+)", line)
        if match:
            return proc, match.group(1), lines
    proc.kill()
    proc.wait()
    stderr.seek(0)
    raise AssertionError(f"server did not start: {lines} {stderr.read()}")


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux's /proc)."""
    todo, found = [pid], []
    while todo:
        for task in Path(f"/proc/{todo.pop()}/task").glob("*"):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            found += children
            todo += children
    return found


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _stop(proc: subprocess.Popen, signum: int = signal.SIGINT) -> tuple[int, str]:
    proc.send_signal(signum)
    try:
        proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    proc.stderr_file.seek(0)
    err = proc.stderr_file.read()
    proc.stderr_file.close()
    return proc.returncode, err


@pytest.mark.slow
def test_cli_serve_restart_keeps_keys_and_predict_over_http(ws, client_a, capsys) -> None:
    """A new server process on the same key store knows the keys; Ctrl-C stops it cleanly."""
    with (
        BackgroundServer(
            create_app(ServeConfig((ws["a"],), key_store=ws["root"] / "restart"))
        ) as first,
        HttpClient(first.url) as http,
    ):
        assert http.ensure_keys(client_a) is True
    proc, url, _ = _start_cli_server(
        [str(ws["a"]), "--port", "0", "--key-store", str(ws["root"] / "restart")]
    )
    try:
        with HttpClient(url) as http:
            assert http.ensure_keys(client_a) is False  # reloaded from the key store
        args = ["--keys", str(ws["keys_a"]), "--input", str(ws["root"] / "x.npy")]
        args += ["--rows", "2", "--quiet"]
        assert main(["predict", str(ws["a"]), *args, "--server", url]) == 0
        remote = capsys.readouterr().out.splitlines()
        assert main(["predict", str(ws["a"]), *args]) == 0
        local = capsys.readouterr().out.splitlines()
    finally:
        code, err = _stop(proc)
    assert remote[0] == local[0]  # the same predictions, printed the same way
    assert re.fullmatch(r"2 rows, server time [\d.]+ s \([\d.]+ s per row\)", remote[1])
    assert code in (0, 130)
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 1, err


def _fuzz_bodies() -> st.SearchStrategy[bytes]:
    from fheqnn.runtime.envelope import MAGIC

    header = st.fixed_dictionaries(
        {
            "kind": st.sampled_from(["inputs", "outputs", "evaluation_keys", "x"]),
            "model_id": st.text(max_size=40),
            "key_id": st.text(max_size=40),
            "count": st.integers(-2, 5),
        },
        optional={
            "meta": st.one_of(st.none(), st.dictionaries(st.text(max_size=5), st.integers()))
        },
    ).map(lambda h: json.dumps(h).encode())
    framed = st.tuples(header, st.binary(max_size=200), st.integers(0, 300)).map(
        lambda t: MAGIC + len(t[0]).to_bytes(4, "big") + t[0] + t[1][: t[2]]
    )
    return st.one_of(st.binary(max_size=300), framed, st.just(MAGIC), st.just(b""))


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    derandomize=True,
)
@given(
    body=_fuzz_bodies(),
    key_id=st.one_of(st.none(), st.text(max_size=40), st.just("a" * 32)),
    endpoint=st.sampled_from(["keys", "model_keys", "predict", "other_predict"]),
)
def test_fuzzed_request_bodies_never_get_a_5xx(server, client_a, body, key_id, endpoint) -> None:
    paths = {
        "keys": "/keys",
        "model_keys": f"/models/{client_a.model_id}/keys",
        "predict": f"/models/{client_a.model_id}/predict",
        "other_predict": "/models/unknown/predict",
    }
    headers = {}
    if key_id is not None and key_id.isascii() and key_id.isprintable():
        headers["X-Key-Id"] = key_id
    response = httpx.post(f"{server.url}{paths[endpoint]}", content=body, headers=headers)
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    assert isinstance(response.json()["error"], str)


@pytest.mark.slow
def test_ray_local_two_replicas_share_keys_through_the_registry(ws, client_a) -> None:
    proc, url, lines = _start_cli_server(
        [
            str(ws["a"]),
            "--port",
            "0",
            "--ray",
            "local",
            "--replicas",
            "2",
            "--ray-cpus",
            "2",
            "--replica-cpus",
            "0.5",
            "--key-store",
            str(ws["root"] / "ray-store"),
            "--token-env",
            "FHEQNN_TEST_TOKEN",
        ],
        timeout=240,
    )
    try:
        # --ray local binds the loopback interface only.
        assert any(line.strip() == "Ray local instance: nodes 127.0.0.1" for line in lines), lines
        rows = ws["x"][:3]
        with HttpClient(url, token=TOKEN, retries=5) as http:
            health = http.health()
            assert health.pop("max_request_bytes") > 20_000_000  # derived: the keys fit
            assert len(health.pop("node_id")) == 56  # the answering replica's node
            assert health == {
                "status": "ok",
                "backend": "ray",
                "replicas": 2,
                "models": 1,
                "nodes": 1,
                "replica_states": {"RUNNING": 2},
            }
            assert http.ensure_keys(client_a) is True
            key_id = client_a.key_info.key_id
            # Several requests spread over both replicas, none re-uploads the keys.
            with ThreadPoolExecutor(3) as pool:
                blobs = list(
                    pool.map(
                        lambda i: http.run(
                            client_a.model_id, key_id, client_a.encrypt(rows[i : i + 1])
                        ),
                        range(3),
                    )
                )
        remote = np.concatenate([client_a.decrypt_integers(b) for b in blobs])
        ours = _descendants(proc.pid)  # Ray's processes and the replicas, started for us
        assert ours
    finally:
        code, err = _stop(proc, signal.SIGTERM)  # as a supervisor stops it
    np.testing.assert_array_equal(remote, local_result(ws, client_a, rows))
    assert code == 0, err
    assert "Traceback" not in err, err
    # The registry keeps the keys in its folder too (a restarted cluster finds them there).
    assert (ws["root"] / "ray-store" / client_a.model_id / f"{key_id}.keys").is_file()
    # Once measured: twelve processes stayed alive (and kept serving) after SIGTERM.
    deadline = time.monotonic() + 10
    while any(_running(pid) for pid in ours) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in ours if _running(pid)]


@pytest.mark.slow
def test_ray_offline_batch_equals_the_local_run(ws, client_a, tmp_path) -> None:
    rows = ws["x"][:3]
    (tmp_path / "in.bin").write_bytes(client_a.encrypt(rows))
    (tmp_path / "ev.keys").write_bytes(client_a.evaluation_keys())
    args = ["--evaluation-keys", str(tmp_path / "ev.keys"), "--input", str(tmp_path / "in.bin")]
    ray_args = ["--out", str(tmp_path / "out.bin"), "--ray", "local", "--ray-cpus", "2"]
    out = subprocess.run(
        [sys.executable, "-m", "fheqnn.cli", "run", str(ws["a"]), *args, *ray_args],
        env=_ray_env(),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stderr
    assert "Ray: nodes 127.0.0.1" in out.stdout
    result = (tmp_path / "out.bin").read_bytes()
    env = Envelope.from_bytes(result, kind="outputs", model_id=client_a.model_id)
    assert len(env.payloads) == 3 and env.meta == {"n_rows": 3}
    np.testing.assert_array_equal(
        client_a.decrypt_integers(result), local_result(ws, client_a, rows)
    )
