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


#: The signals that stop the command-line tool: Ctrl-C, a supervisor's stop (systemd, Docker,
#: Kubernetes, ``timeout``), and the terminal closing.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP: a supervisor (or a closed terminal) stops the program.

    A ``KeyboardInterrupt``, so that every step unwinds and cleans up as it does at Ctrl-C;
    the tool reports it as a stop by that signal (exit 128 + its number).
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_stop_signal: int | None = None


def record_and_raise(signum: int, frame: Any) -> None:
    """The command-line tool's handler of :data:`STOP_SIGNALS`: raise ``KeyboardInterrupt``
    (SIGINT, as Python does) or :class:`Terminated`, and record that it happened.

    A ``KeyboardInterrupt`` raised while a finalizer (``__del__``) runs is printed and dropped,
    and libraries may catch it (skorch's training loop does): measured with ``fheqnn train``,
    one Ctrl-C in three around the start of training was lost that way and the command ran to
    the end. The record lets the tool check, before it writes anything, that no stop came.
    """
    global _stop_signal
    if _stop_signal is None or _stop_signal == signal.SIGINT:
        _stop_signal = signum  # a SIGTERM after a Ctrl-C is what the caller sees last
    raise _stop_exception(signum)


def _stop_exception(signum: int) -> KeyboardInterrupt:
    return KeyboardInterrupt() if signum == signal.SIGINT else Terminated(signum)


def forget_interrupts() -> None:
    """Start a new command: no stop recorded."""
    global _stop_signal
    _stop_signal = None


def interrupted_before() -> bool:
    """Whether :func:`record_and_raise` ran in this process."""
    return _stop_signal is not None


def stop_signal() -> int | None:
    """The signal :func:`record_and_raise` recorded (``None``: none came)."""
    return _stop_signal


def raise_if_interrupted() -> None:
    """Raise the stop :func:`record_and_raise` recorded, if one came (and something swallowed
    it)."""
    if _stop_signal is not None:
        raise _stop_exception(_stop_signal)


def native_work_running() -> bool:
    """Whether a call abandoned on an interrupt is still running native code."""
    return any(worker.is_alive() for worker in _abandoned)


#: Seconds a forked child gets to stop (clean up, shut down what it started, such as a local
#: Ray instance) once its parent was stopped, before it is killed.
CHILD_STOP_SECONDS = 10.0

#: Seconds the parent waits, after a child died of a signal, for a stop signal of its own that
#: may still be pending (a Ctrl-C reaches the whole process group at once).
_SETTLE_SECONDS = 0.2

#: Linux's ``prctl`` option that sends a signal to a process when its parent dies.
_PR_SET_PDEATHSIG = 1

_in_child = False


class ChildKilledError(RuntimeError):
    """A command's forked worker died of a signal that no stop of this program sent.

    SIGKILL is what the kernel's out-of-memory killer sends; the message says so, so that it is
    never mistaken for a Ctrl-C. :attr:`exit_code` is 128 + the signal's number, as shells
    report a process killed by it.
    """

    def __init__(self, signum: int) -> None:
        name = _signal_name(signum)
        if signum == signal.SIGKILL:
            message = (
                "the worker process was killed (SIGKILL): most likely the kernel's out-of-memory "
                "killer (see `dmesg`); nothing was written"
            )
        else:
            message = f"the worker process died of {name}; nothing was written"
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def in_forked_child() -> bool:
    """Whether this process is the worker child of :func:`run_in_child` (its parent reports
    stops and errors of the child's exit code)."""
    return _in_child


def stop_handler() -> Callable[[int, Any], None]:
    """This process's handler of SIGTERM and SIGHUP: :func:`record_and_raise`, or in the worker
    of :func:`run_in_child` the one that ignores stops after the first."""
    return _stop_once if _in_child else record_and_raise


def run_in_child(
    func: Callable[[], int],
    *,
    exit_code: Callable[[BaseException], int],
    cleanup: Callable[[], Any] | None = None,
    stop_seconds: float = CHILD_STOP_SECONDS,
    own_group: bool = False,
) -> int:
    """Run a whole command step in a forked child and return its exit code.

    For steps whose native part kills the process at Ctrl-C (Concrete's compiler, key
    generation and runs install a SIGINT handler that sends SIGKILL, and hold the GIL): the
    child ignores SIGINT, the parent waits and reports. When the parent is stopped (SIGINT,
    SIGTERM, SIGHUP), it sends SIGTERM to the child, which unwinds (its ``finally`` blocks run,
    nothing more is written) and exits; after ``stop_seconds`` the child is killed. Then the
    parent calls ``cleanup`` and raises the stop. The child dies with the parent (Linux:
    ``PR_SET_PDEATHSIG``), so no worker outlives a killed command. A child that died of a signal
    nobody here sent raises :class:`ChildKilledError`; a child stopped by a signal sent to it alone
    raises that stop. Without ``fork`` or off the main thread, ``func`` runs here.

    Fork before any Concrete call in this process: Concrete's thread pool (rayon), once
    started, does not survive a fork, and the child would wait for it forever.

    Args:
        func: the step; returns an exit code.
        exit_code: maps an exception raised by ``func`` in the child to an exit code (and
            prints it).
        cleanup: called in the parent after the child ended abnormally.
        stop_seconds: how long the child gets to stop after the parent was stopped (s).
        own_group: put the child in a process group of its own, so that a Ctrl-C at the
            terminal reaches the parent only, which asks the child to stop with SIGTERM (a
            server drains then; Concrete's native SIGINT handler, installed during a run,
            would kill it outright).
    """
    if not hasattr(os, "fork") or threading.current_thread() is not threading.main_thread():
        return func()
    sys.stdout.flush()
    sys.stderr.flush()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        if own_group:
            os.setpgid(0, 0)
        _child_main(func, exit_code, parent, stop_seconds)
    reaped = False
    try:
        _, status = os.waitpid(pid, 0)
        reaped = True
        if os.WIFSIGNALED(status):
            _settle()  # a stop of our own that caused it is raised here
            raise ChildKilledError(os.WTERMSIG(status))
        code = os.WEXITSTATUS(status)
        if code > 128 and code - 128 in STOP_SIGNALS:
            raise _stop_exception(code - 128)  # the child alone was stopped: report it
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt) and not reaped:
            _stop_child(pid, stop_seconds)
        if cleanup is not None:
            cleanup()
        raise
    return code


def _child_main(
    func: Callable[[], int],
    exit_code: Callable[[BaseException], int],
    parent: int,
    stop_seconds: float,
) -> None:
    """The forked child: run ``func``, exit with its code; never returns."""
    global _in_child
    code = 1
    try:
        _in_child = True
        _die_with_parent(parent, stop_seconds)
        # Ctrl-C reaches the whole process group: the parent decides and sends SIGTERM.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for signum in STOP_SIGNALS[1:]:
            signal.signal(signum, _stop_once)
        try:
            code = func()
        except KeyboardInterrupt as exc:  # stopped: the parent reports it
            code = 128 + (exc.signum if isinstance(exc, Terminated) else signal.SIGINT)
        except BaseException as exc:
            # An error after a stop is its consequence (an import the stop cut short fails
            # with ImportError): the parent reports the stop. Else the child reports the error
            # as the parent would.
            code = 128 + _stop_signal if _stop_signal is not None else exit_code(exc)
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def _stop_once(signum: int, frame: Any) -> None:
    """The worker's handler of SIGTERM and SIGHUP: the first one unwinds it; later ones are
    ignored, so that they cannot cut its clean-up short (its parent kills it if it takes too
    long)."""
    for each in STOP_SIGNALS[1:]:
        signal.signal(each, signal.SIG_IGN)
    record_and_raise(signum, frame)


def _die_with_parent(parent: int, stop_seconds: float) -> None:
    """Stop this process when its parent dies, even if the parent was killed outright.

    Linux sends SIGTERM at the parent's death (``PR_SET_PDEATHSIG``): the child unwinds as at
    any stop (a local Ray instance it started is shut down, a server drains). A watchdog
    thread kills the child if it is still alive ``stop_seconds`` after its parent is gone (and,
    without ``prctl``, notices the death itself).
    """
    armed = False
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) == 0

    def watch() -> None:
        import time

        while os.getppid() == parent:
            time.sleep(0.5)
        if not armed:  # nobody sent the stop
            os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(stop_seconds)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="fheqnn-parent-watch", daemon=True).start()


def _settle() -> None:
    """Give a stop signal that reached this process with the child's death time to be raised."""
    import time

    deadline = time.monotonic() + _SETTLE_SECONDS
    while time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)


def _stop_child(pid: int, seconds: float) -> None:
    """SIGTERM to the child, then SIGKILL if it has not ended within ``seconds`` (at once on
    a second stop signal)."""
    import time

    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                return
            time.sleep(POLL_SECONDS)
    except ChildProcessError:
        return
    except KeyboardInterrupt:
        pass  # stopped again: do not wait
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
