"""Long native calls that Ctrl-C cannot crash.

A ``KeyboardInterrupt`` is raised in Python between bytecodes of the main thread; while the main
thread is inside Concrete's native code (key generation, compilation, a server run, key
deserialization), the interrupt waits, and an interpreter that tears down around native threads
that still run can crash. :func:`call_interruptibly` runs such a call in a worker thread and
waits for it in short steps, so that the interrupt is raised at once in the main thread, whose
``finally`` blocks then remove what was half-written. The worker cannot be stopped: it is
recorded, and the command-line tool ends the process with ``os._exit`` once it has cleaned up.
While waiting, Python's SIGINT handler is put back whenever native code replaced it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

#: Seconds between two checks for an interrupt while a native call runs.
POLL_SECONDS = 0.02

_abandoned: list[threading.Thread] = []


def call_interruptibly(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``func(*args, **kwargs)``, run so that Ctrl-C interrupts the caller at once.

    In the main thread the call runs in a daemon worker thread; its result or exception is
    handed back. Elsewhere (a server's request threads) it runs directly: signals are only
    delivered to the main thread.

    Raises:
        KeyboardInterrupt: Ctrl-C while waiting; the worker is left running (see
            :func:`native_work_running`).
    """
    if threading.current_thread() is not threading.main_thread():
        return func(*args, **kwargs)
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = func(*args, **kwargs)
        except BaseException as exc:  # handed to the caller's thread as is
            outcome["error"] = exc

    worker = threading.Thread(
        target=target, name=f"fheqnn-{getattr(func, '__name__', 'call')}", daemon=True
    )
    handler = signal.getsignal(signal.SIGINT)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(POLL_SECONDS)
            _reclaim_sigint(handler)
    except BaseException:
        _abandoned.append(worker)
        raise
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]  # type: ignore[no-any-return]


def _reclaim_sigint(handler: Any) -> None:
    """Put Python's SIGINT handler back if native code replaced it meanwhile.

    Concrete's key generation (concrete-python 2.11) installs, for its duration, a native SIGINT
    handler that kills the process outright (exit by SIGKILL, nothing cleaned up); it restores
    the previous handler when it ends. Re-installing ours every poll leaves a window of at most
    :data:`POLL_SECONDS` at the start of such a call.
    """
    if callable(handler) or handler in (signal.SIG_DFL, signal.SIG_IGN):
        signal.signal(signal.SIGINT, handler)


_ctrl_c_seen = False


def record_and_raise(signum: int, frame: Any) -> None:
    """The command-line tool's SIGINT handler: Python's own (raise ``KeyboardInterrupt``), and
    a record that it happened.

    A ``KeyboardInterrupt`` raised while a finalizer (``__del__``) runs is printed and dropped,
    and libraries may catch it (skorch's training loop does): measured with ``fheqnn train``,
    one Ctrl-C in three around the start of training was lost that way and the command ran to
    the end. The record lets the tool check, before it writes anything, that no Ctrl-C came.
    """
    global _ctrl_c_seen
    _ctrl_c_seen = True
    raise KeyboardInterrupt


def forget_interrupts() -> None:
    """Start a new command: no Ctrl-C recorded."""
    global _ctrl_c_seen
    _ctrl_c_seen = False


def interrupted_before() -> bool:
    """Whether :func:`record_and_raise` ran in this process."""
    return _ctrl_c_seen


def raise_if_interrupted() -> None:
    """Raise ``KeyboardInterrupt`` if :func:`record_and_raise` ran (a Ctrl-C that was lost)."""
    if _ctrl_c_seen:
        raise KeyboardInterrupt


def native_work_running() -> bool:
    """Whether a call abandoned on an interrupt is still running native code."""
    return any(worker.is_alive() for worker in _abandoned)


def run_in_child(
    func: Callable[[], int],
    *,
    exit_code: Callable[[BaseException], int],
    cleanup: Callable[[], Any] | None = None,
) -> int:
    """Run a whole command step in a forked child and return its exit code.

    For steps whose native part kills the process at Ctrl-C (Concrete's compiler, key
    generation and runs install a SIGINT handler that sends SIGKILL, and hold the GIL): the
    child
    ignores SIGINT (the parent reports it), the parent waits; at Ctrl-C the parent kills the
    child, calls ``cleanup`` (e.g. removes the child's temporaries) and raises
    ``KeyboardInterrupt``. Without ``fork`` or off the main thread, ``func`` runs here.

    Fork before any Concrete call in this process: Concrete's thread pool (rayon), once
    started, does not survive a fork, and the child would wait for it forever.

    Args:
        func: the step; returns an exit code.
        exit_code: maps an exception raised by ``func`` in the child to an exit code (and
            prints it).
        cleanup: called in the parent after the child was killed.
    """
    if not hasattr(os, "fork") or threading.current_thread() is not threading.main_thread():
        return func()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            try:
                code = func()
            except BaseException as exc:  # the child reports like the parent would
                code = exit_code(exc)
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)
    try:
        _, status = os.waitpid(pid, 0)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        if cleanup is not None:
            cleanup()
        raise
    if os.WIFSIGNALED(status):
        if cleanup is not None:
            cleanup()
        raise (
            KeyboardInterrupt
            if os.WTERMSIG(status) in (signal.SIGINT, signal.SIGKILL)
            else (RuntimeError(f"the child process died of signal {os.WTERMSIG(status)}"))
        )
    return os.WEXITSTATUS(status)
