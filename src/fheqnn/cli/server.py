"""The server side: ``run`` (locally or on Ray), ``serve`` (HTTP, or Ray Serve) and ``fetch``."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from .common import EXIT_OK, CliError, _read_envelope, _say, _Step, _write_bytes, rows_per_part
from .outputs import _check_output_file

#: Least rows per request of `predict --server` (rounded up to whole circuit calls).
DEFAULT_REQUEST_ROWS = 8

#: Seconds ``serve`` gives requests in progress to finish after SIGTERM (``--grace``): below
#: Kubernetes' default 30 s before SIGKILL (Docker's ``stop`` waits 10 s: give ``--grace 5``).
DEFAULT_GRACE_SECONDS = 20.0


def cmd_run(args: argparse.Namespace) -> int:
    from ..runtime import FheModelServer

    if args.ray:
        return _run_on_ray(args)
    target = _check_output_file(
        args.out,
        inputs=(args.input, args.evaluation_keys),
        envelope=True,
        overwrite=args.overwrite,
    )
    server = FheModelServer(args.model)
    keys = _read_envelope(args.evaluation_keys, "evaluation keys", server.limits["evaluation_keys"])
    inputs = _read_envelope(args.input, "encrypted input", server.limits["inputs"])
    with _Step("running on ciphertexts"):
        out = server.run(inputs, keys)
    _write_bytes(target, out)
    _say(f"wrote {args.out} ({len(out)} bytes)")
    return EXIT_OK


def _token(var: str | None) -> str | None:
    """The token held by the environment variable ``var`` (never given on the command line)."""
    if var is None:
        return None

    token = os.environ.get(var)
    if not token:
        raise CliError(f"--token-env {var}: the environment variable {var} is not set or empty")
    return token


def _free_port(host: str) -> int:
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def cmd_serve(args: argparse.Namespace) -> int:
    from ..serving.config import ServeConfig

    if (args.replicas != 1 or args.autoscale is not None) and not args.ray:
        raise CliError("--replicas and --autoscale need --ray (one process serves without Ray)")
    if args.autoscale is not None and args.replicas != 1:
        raise CliError("give --replicas or --autoscale, not both")
    if not 0 <= args.port <= 65535:
        raise CliError(f"--port must be in [0, 65535], got {args.port}")
    config = ServeConfig(
        model_folders=tuple(Path(m) for m in args.models),
        key_store=Path(args.key_store) if args.key_store else None,
        max_request_mb=args.max_request_mb,
        token=_token(args.token_env),
        max_cached_keys=args.max_cached_keys,
        workers=args.workers,
        backend="ray" if args.ray else "local",
        replicas=args.replicas,
        max_uploads=args.max_uploads,
        max_request_rows=args.max_request_rows,
        upload_seconds=args.upload_seconds,
    )
    try:
        if args.ray:
            return _serve_on_ray(args, config)
        from ..serving.app import create_app
        from ..serving.runner import serve_foreground

        app = create_app(config)
        _say(_body_limit_line(app.state.service.max_request_bytes, args.max_request_mb))
        serve_foreground(
            app,
            host=args.host,
            port=args.port,
            grace=args.grace,
            on_ready=lambda url: _say(
                f"serving {len(app.state.service.models)} model(s) at {url} "
                f"(API docs: {url}/docs); Ctrl-C or SIGTERM stops"
            ),
        )
    except KeyboardInterrupt as exc:
        code = _stopped(exc)
    else:
        code = EXIT_OK
    sys.stdout.flush()
    sys.stderr.flush()
    # The service has shut down (drained). Once a circuit has run, concrete-python's runtime
    # may replace the process exit status at interpreter teardown (0, or a SIGKILL status),
    # and encrypted runs abandoned after the grace period still hold pool threads: leave now,
    # so that the status is ours.
    os._exit(code)


def _stopped(exc: KeyboardInterrupt) -> int:
    """The server was stopped: 0 for SIGTERM (a supervisor's normal stop), 128 + the signal
    otherwise. The parent of a forked server reports it; a server run in-process says it."""
    import signal

    from ..interrupts import Terminated, in_forked_child

    signum = exc.signum if isinstance(exc, Terminated) else signal.SIGINT
    if in_forked_child():
        return 128 + signum  # the parent maps it (SIGTERM: 0) and prints the line
    print("fheqnn: stopped", file=sys.stderr, flush=True)
    return 0 if signum == signal.SIGTERM else 128 + signum


def _body_limit_line(limit: int, given: float | None) -> str:
    """What ``serve`` says of its request body limit at start-up."""
    how = "--max-request-mb" if given is not None else "derived from the models served"
    return f"request bodies up to {limit / 1e6:.1f} MB ({how})"


def _serve_on_ray(args: argparse.Namespace, config: Any) -> int:
    from ..serving import ray_backend

    ray_backend.proxy_ready_seconds()  # a bad setting refused before Ray starts
    port = args.port or _free_port(args.host)
    deployed = False
    try:
        nodes = ray_backend.init_ray(args.ray, num_cpus=args.ray_cpus)
        _take_back_stop_signals()  # ray.init installs its own SIGTERM handler
        where = "local instance" if args.ray == "local" else f"cluster {args.ray}"
        _say(f"Ray {where}: nodes {', '.join(nodes)}")
        url, _ = ray_backend.deploy_service(
            config,
            host=args.host,
            port=port,
            replica_cpus=args.replica_cpus,
            autoscale=args.autoscale,
        )
        deployed = True
        replicas = (
            f"{config.replicas}" if args.autoscale is None else "{} to {}".format(*args.autoscale)
        )
        _say(
            f"serving {len(config.model_folders)} model(s) at {url} on {replicas} Ray "
            f"Serve replica(s) (API docs: {url}/docs); Ctrl-C or SIGTERM stops"
        )
        while True:
            time.sleep(3600)
    finally:
        if args.ray == "local":
            ray_backend.shutdown(serve_too=True)
        elif deployed:
            ray_backend.stop_service()  # ours only: Serve and other applications keep running
        else:
            ray_backend.shutdown(serve_too=False)  # refused or failed: disconnect, touch nothing


def _take_back_stop_signals() -> None:
    """Put the tool's handler of SIGTERM and SIGHUP back (a library replaced it), so that they
    unwind the command and its ``finally`` blocks shut down what it started."""
    import signal

    from ..interrupts import STOP_SIGNALS, stop_handler

    handler = stop_handler()
    for signum in STOP_SIGNALS[1:]:
        if signal.getsignal(signum) is not handler:
            signal.signal(signum, handler)


def request_rows(batch_size: int, requested: int | None) -> int:
    """Rows per request of ``predict --server`` for a model of ``batch_size`` rows per call.

    Default: whole circuit calls (a part-filled call is padded: paid for, then dropped), at
    least :data:`DEFAULT_REQUEST_ROWS` rows. A requested count that is not a multiple of the
    batch size is kept, with a note on what the padding costs.
    """
    return rows_per_part(
        batch_size,
        requested,
        default=batch_size * -(-DEFAULT_REQUEST_ROWS // batch_size),
        option="--batch-rows",
        part="request",
    )


def _remote_round_trip(args: argparse.Namespace, client: Any, x: np.ndarray) -> Any:
    """``predict --server``: the same round trip as the local one, through the HTTP service."""
    from tqdm.auto import tqdm

    from ..serving.client import HttpClient

    rows_per_request = request_rows(client.batch_size, args.batch_rows)
    with (
        HttpClient(args.server, token=_token(args.token_env)) as http,
        tqdm(
            total=len(x), desc="encrypted rows", unit="row", disable=args.quiet, leave=False
        ) as bar,
    ):
        return http.round_trip(client, x, rows_per_request=rows_per_request, progress=bar.update)


def _run_on_ray(args: argparse.Namespace) -> int:
    from ..runtime.artifacts import envelope_limits, open_model_folder
    from ..serving import ray_backend, ray_batch

    target = _check_output_file(
        args.out,
        inputs=(args.input, args.evaluation_keys),
        envelope=True,
        overwrite=args.overwrite,
    )
    limits = envelope_limits(open_model_folder(args.model))
    keys = _read_envelope(args.evaluation_keys, "evaluation keys", limits["evaluation_keys"])
    inputs = _read_envelope(args.input, "encrypted input", limits["inputs"])
    try:
        nodes = ray_backend.init_ray(args.ray, num_cpus=args.ray_cpus)
        _take_back_stop_signals()
        _say(f"Ray: nodes {', '.join(nodes)}")
        with _Step("running on ciphertexts over Ray workers"):
            out = ray_batch.run_batch(args.model, inputs, keys, tasks=args.ray_tasks)
    finally:
        ray_backend.shutdown(serve_too=False)
    _write_bytes(target, out)
    _say(f"wrote {args.out} ({len(out)} bytes)")
    return EXIT_OK


def cmd_fetch(args: argparse.Namespace) -> int:
    from ..serving.client import fetch_client_part

    folder = fetch_client_part(
        args.url,
        args.model_id,
        args.out,
        token=_token(args.token_env),
        overwrite=args.overwrite,
        timeout=args.timeout,
    )
    names = ", ".join(sorted(p.name for p in folder.path.iterdir()))
    _say(f"saved the client part of model {folder.model_id} to {folder.path}/ ({names})")
    _say(f"next: fheqnn keygen {folder.path} --keys keys/NAME")
    return EXIT_OK
