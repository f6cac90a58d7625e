"""How ``fheqnn`` processes stop: SIGTERM (what supervisors and ``timeout`` send), a worker
killed by the kernel, a parent that dies, and the server's drain. Real processes, real signals,
servers on 127.0.0.1, every wait bounded."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from fheqnn import FheModelClient
from helpers import checksum

SRC = str(Path(__file__).resolve().parents[1] / "src")

#: Seconds any process of ours may take to go away once it should (bounded waits).
GONE_SECONDS = 30.0


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory, tiny_models: Any) -> dict[str, Any]:
    """A folder with the tiny model ``a``'s evaluation keys and ciphertexts of 3 and 24 rows
    (24 rows take a few seconds to run: long enough to stop a run in the middle)."""
    root = tmp_path_factory.mktemp("lifecycle")
    client = FheModelClient(tiny_models.a, tiny_models.keys_a)
    (root / "ev.keys").write_bytes(client.evaluation_keys())
    (root / "in_many.bin").write_bytes(client.encrypt(tiny_models.x[:24]))
    (root / "in_few.bin").write_bytes(client.encrypt(tiny_models.x[:3]))
    return {"root": root, "model": tiny_models.a, "client": client}


def _start(args: list[str], cwd: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "fheqnn.cli", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=SRC),
    )


def _wait_for(proc: subprocess.Popen[bytes], marker: bytes) -> bytes:
    """Read the process's output until ``marker`` (the step that is to be stopped began);
    returns what was read."""
    seen = b""
    assert proc.stdout is not None
    while marker not in seen:
        char = os.read(proc.stdout.fileno(), 1)  # unbuffered: communicate() reads the rest
        if not char:
            raise AssertionError(f"the process ended before {marker!r}: {seen!r}")
        seen += char
    return seen


def _children(pid: int) -> list[int]:
    """The direct children of ``pid`` (Linux's /proc)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _descendants(pid: int) -> list[int]:
    todo, found = [pid], []
    while todo:
        for child in _children(todo.pop()):
            found.append(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting to be reaped has ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _worker_of(proc: subprocess.Popen[bytes]) -> int:
    """The forked worker child of a running command (waits for it, bounded)."""
    deadline = time.monotonic() + GONE_SECONDS
    while time.monotonic() < deadline:
        children = _children(proc.pid)
        if children:
            return children[0]
        time.sleep(0.02)
    raise AssertionError("the command has no worker child")


def _all_gone(pids: list[int], seconds: float = GONE_SECONDS) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not any(_alive(pid) for pid in pids):
            return True
        time.sleep(0.05)
    return False


def _run_args(ws: dict[str, Any], out: str = "new.bin") -> list[str]:
    return [
        "run",
        str(ws["model"]),
        "--evaluation-keys",
        str(ws["root"] / "ev.keys"),
        "--input",
        str(ws["root"] / "in_many.bin"),
        "--out",
        out,
    ]


def test_sigterm_stops_a_command_and_its_worker_and_writes_nothing(ws, tmp_path) -> None:
    """What ``timeout`` and supervisors do: SIGTERM to the command's PID only. Once measured:
    the parent exited 143 at once and its child wrote the output ~20 s later."""
    proc = _start(_run_args(ws), tmp_path)
    seen = _wait_for(proc, b"running on")
    worker = _worker_of(proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=GONE_SECONDS)
    out = seen + out
    if proc.returncode == 0:
        pytest.skip("the run ended before SIGTERM")
    assert proc.returncode == 143, (out, err)
    assert err.decode().strip() == "fheqnn: terminated (SIGTERM)"
    assert out.decode().endswith("running on ciphertexts ... stopped\n"), out
    assert not _alive(worker)
    time.sleep(1.0)  # what the old worker did after its parent had gone
    assert list(tmp_path.iterdir()) == []


def test_sigterm_before_the_work_starts_is_one_line(ws, tmp_path) -> None:
    """A stop while the modules load (before the command's own handler): one line, 143."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import fheqnn.cli.__main__"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=SRC),
    )
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=GONE_SECONDS)
    # Before Python runs our first line the default action ends it (-15); after, our line.
    assert proc.returncode in (143, -signal.SIGTERM), err
    if proc.returncode == 143:
        assert err.decode() == "fheqnn: terminated (SIGTERM)\n"


def test_a_worker_killed_by_the_kernel_is_not_reported_as_ctrl_c(ws, tmp_path) -> None:
    """SIGKILL is what the out-of-memory killer sends: exit 137 and a line that says so (it
    was reported as "interrupted", exit 130)."""
    proc = _start(_run_args(ws), tmp_path)
    _wait_for(proc, b"running on")
    os.kill(_worker_of(proc), signal.SIGKILL)
    out, err = proc.communicate(timeout=GONE_SECONDS)
    assert proc.returncode == 137, (out, err)
    text = err.decode()
    assert "killed (SIGKILL)" in text and "out-of-memory" in text, text
    assert "interrupted" not in text
    assert list(tmp_path.iterdir()) == []


def test_the_worker_dies_with_its_parent(ws, tmp_path) -> None:
    """A parent killed outright (SIGKILL cannot be handled) takes its worker along: no
    orphan keeps computing and writes the output later."""
    proc = _start(_run_args(ws), tmp_path)
    _wait_for(proc, b"running on")
    worker = _worker_of(proc)
    proc.kill()
    proc.communicate(timeout=GONE_SECONDS)
    assert _all_gone([worker])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_sigterm_during_training_exits_143_and_leaves_nothing(tmp_path) -> None:
    """Training runs in the command's own process; skorch swallows ``KeyboardInterrupt`` in
    its loop, so the stop must be recorded and raised again (as for Ctrl-C)."""
    args = ["train", "--dataset", "iris", "--n-layers", "2", "--multiplier", "1"]
    proc = _start([*args, "--epochs", "5000", "--quiet", "--out", "newrun"], tmp_path)
    _wait_for(proc, b"training a")
    time.sleep(3.0)  # inside the training loop
    before = checksum(tmp_path)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=GONE_SECONDS)
    assert proc.returncode == 143, (out, err)
    assert err.decode().strip() == "fheqnn: terminated (SIGTERM)"
    assert checksum(tmp_path) == before


# ------------------------------------------------------------------------------------ serve


def _serve(ws: dict[str, Any], grace: float) -> tuple[subprocess.Popen[str], str, Any]:
    """``fheqnn serve`` on a free loopback port; returns the process, its URL, its stderr."""
    stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115  (closed by the caller)
    command = [sys.executable, "-m", "fheqnn.cli", "serve", str(ws["model"])]
    proc = subprocess.Popen(
        [*command, "--port", "0", "--grace", str(grace)],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        env=dict(os.environ, PYTHONPATH=SRC),
    )
    assert proc.stdout is not None
    lines = []
    for _ in range(10):  # a few lines of set-up, then the URL
        lines.append(proc.stdout.readline())
        match = re.search(r"at (http://127\.0\.0\.1:\d+)", lines[-1])
        if match is not None:
            return proc, match.group(1), stderr
        if not lines[-1]:
            break
    proc.kill()
    proc.wait()
    stderr.seek(0)
    raise AssertionError(f"server did not start: {lines!r} {stderr.read()}")


def _finish(proc: subprocess.Popen[str], stderr: Any) -> str:
    """Kill the server if it still runs, close its pipes; returns what it wrote on stderr."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    stderr.seek(0)
    err = stderr.read()
    stderr.close()
    assert proc.stdout is not None
    proc.stdout.close()
    return str(err)


def _predict_in_background(url: str, ws: dict[str, Any], body: bytes) -> dict[str, Any]:
    """Upload the keys, then send ``body`` to predict on a thread; returns the record the
    thread fills (``started``: set once the request is being sent, ``status``, ``json``)."""
    client = ws["client"]
    keys = httpx.post(f"{url}/keys", content=(ws["root"] / "ev.keys").read_bytes(), timeout=60)
    assert keys.status_code in (200, 201), keys.text
    record: dict[str, Any] = {"started": threading.Event()}

    def send() -> None:
        record["started"].set()
        try:
            answer = httpx.post(
                f"{url}/models/{client.model_id}/predict",
                content=body,
                headers={"X-Key-Id": client.key_info.key_id},
                timeout=120,
            )
            record["status"] = answer.status_code
            record["answer"] = answer
        except httpx.HTTPError as exc:
            record["error"] = exc

    record["thread"] = threading.Thread(target=send)
    record["thread"].start()
    record["started"].wait(10)
    return record


@pytest.mark.parametrize("grace", [0.0, pytest.param(60.0, marks=pytest.mark.slow)])
def test_serve_drains_at_sigterm_and_exits_0(ws, grace: float) -> None:
    """SIGTERM: the server stops accepting, gives the request in progress ``--grace``
    seconds, answers 503 (retryable) if it is cancelled, and exits 0 with no process left.
    Once measured: the parent exited, its child kept serving the port."""
    proc, url, stderr = _serve(ws, grace)
    try:
        processes = [proc.pid, *_descendants(proc.pid)]
        body = (ws["root"] / ("in_many.bin" if grace == 0 else "in_few.bin")).read_bytes()
        record = _predict_in_background(url, ws, body)
        time.sleep(0.5)  # the request reached the server and its run began
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=grace + 10)
        record["thread"].join(timeout=GONE_SECONDS)
    finally:
        err = _finish(proc, stderr)
    assert proc.returncode == 0, err
    assert err.strip().endswith("fheqnn: stopped"), err
    assert "Traceback" not in err, err
    assert _all_gone(processes, 5.0)
    if grace == 0:
        if record.get("status") == 200:
            pytest.skip("the run ended before SIGTERM")
        assert record.get("status") == 503, record
        assert record["answer"].headers["retry-after"] == "1"
        assert "send it again" in record["answer"].json()["error"]
    else:  # finished within the grace period: the right answer
        assert record.get("status") == 200, record
        client = ws["client"]
        got = client.decrypt_integers(record["answer"].content)
        expected = client.decrypt_integers(_run_locally(ws))
        np.testing.assert_array_equal(got, expected)
    with pytest.raises(httpx.ConnectError):  # the port is free: nothing of ours serves it
        httpx.get(f"{url}/health", timeout=5)


def _run_locally(ws: dict[str, Any]) -> bytes:
    from fheqnn import FheModelServer

    server = FheModelServer(ws["model"])
    return server.run((ws["root"] / "in_few.bin").read_bytes(), ws["client"].evaluation_keys())


@pytest.mark.slow
def test_sigterm_to_the_serving_worker_stops_the_whole_server(ws) -> None:
    """``kill`` of any PID of ours: the worker drains and exits, its parent follows with 0."""
    proc, _, stderr = _serve(ws, 5.0)
    try:
        worker = _worker_of(proc)  # type: ignore[arg-type]
        os.kill(worker, signal.SIGTERM)
        proc.wait(timeout=GONE_SECONDS)
    finally:
        err = _finish(proc, stderr)
    assert proc.returncode == 0, err
    assert err.strip() == "fheqnn: stopped", err
    assert _all_gone([worker], 5.0)


@pytest.mark.slow
def test_a_killed_ray_batch_takes_its_local_ray_instance_along(ws, tmp_path) -> None:
    """``run --ray local`` starts Ray's processes under its worker. Killed outright, the
    command cannot clean up: its worker gets SIGTERM from the kernel and shuts Ray down. Once
    measured: Ray's dashboard and runtime-env agents stayed alive, reparented to init."""
    args = [*_run_args(ws), "--ray", "local", "--ray-cpus", "2"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "fheqnn.cli", *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=SRC, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0"),
    )
    _wait_for(proc, b"running on")
    time.sleep(1.0)  # Ray's agents start a moment after the instance
    ours = _descendants(proc.pid)
    assert len(ours) >= 3, ours  # the worker, Ray's GCS and raylet at least
    proc.kill()
    proc.communicate(timeout=GONE_SECONDS)
    assert _all_gone(ours), [pid for pid in ours if _alive(pid)]
    assert list(tmp_path.iterdir()) == []
