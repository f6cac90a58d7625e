"""Running a command: exit codes from exceptions, Ctrl-C, forking the commands that run Concrete."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .common import (
    EXIT_ACCUMULATOR,
    EXIT_BROKEN_PIPE,
    EXIT_ERROR,
    EXIT_INPUT,
    EXIT_INTERRUPTED,
    CliError,
    _Step,
)
from .parser import build_parser

#: Whether this process is the ``fheqnn`` program (not a caller of :func:`main` in Python):
#: only then do steps run in child processes.
AS_PROGRAM = os.path.basename(sys.argv[0]) == "fheqnn"  # python -m fheqnn.cli sets it too


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fheqnn`` command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    from ..interrupts import STOP_SIGNALS, forget_interrupts, record_and_raise

    # From here on, Ctrl-C is a KeyboardInterrupt, and SIGTERM or SIGHUP (a supervisor's stop)
    # a Terminated, that unwinds (and cleans up) every step, recorded in case something
    # swallows it (see record_and_raise); only for this command (main() is also called
    # in-process, by tests and scripts).
    forget_interrupts()
    previous = {signum: signal.signal(signum, record_and_raise) for signum in STOP_SIGNALS}
    try:
        return _run_command(args)
    finally:
        forget_interrupts()
        for signum, handler in previous.items():
            if callable(handler) or handler in (signal.SIG_DFL, signal.SIG_IGN):
                signal.signal(signum, handler)


@contextlib.contextmanager
def _plain_warnings() -> Iterator[None]:
    """fheqnn's warnings about the user's data (rows far outside the training range) as one
    ``warning: ...`` line on stderr, without Python's file and line; others as Python shows
    them."""
    import warnings

    from ..errors import InputRangeWarning

    shown = warnings.showwarning

    def show(message: Any, category: type, filename: str, lineno: int, *rest: Any) -> None:
        if issubclass(category, InputRangeWarning):
            print(f"warning: {message}", file=sys.stderr, flush=True)
        else:
            shown(message, category, filename, lineno, *rest)

    with warnings.catch_warnings():
        warnings.simplefilter("always", InputRangeWarning)
        warnings.showwarning = show
        yield


def _run_command(args: argparse.Namespace) -> int:
    """The command's function, its exceptions turned into exit codes."""
    from ..errors import FheqnnError

    try:
        with _plain_warnings():
            if AS_PROGRAM and args.native:
                return _in_child(args)
            return int(args.func(args))
    except KeyboardInterrupt as exc:
        return _interrupted(args, exc)
    except Exception as exc:
        from ..interrupts import interrupted_before

        if interrupted_before():
            # An error after a Ctrl-C is its consequence (e.g. a module whose import the
            # interrupt cut short, measured in training): report the interrupt.
            return _interrupted(args)
        if args.verbose and not isinstance(exc, CliError | OSError | FheqnnError):
            raise
        return _exit_code(exc)


def _in_child(args: argparse.Namespace) -> int:
    """Run the command in a forked child; at Ctrl-C, kill it and remove its temporaries.

    The parent has not run any Concrete code yet, so the fork is safe (see
    :func:`fheqnn.interrupts.run_in_child`).
    """
    from ..fileio import clean_stale
    from ..interrupts import run_in_child

    outputs = [getattr(args, name, None) for name in ("out", "keys", "circuits")]
    if args.command == "demo":
        from .demo import demo_folder_name

        name = demo_folder_name(args)
        outputs = [Path(args.circuits) / name, Path(args.keys) / name]

    def cleanup() -> None:
        for path in outputs:
            if path:
                clean_stale(Path(path))

    # The server drains for --grace seconds after SIGTERM; its child gets 5 s more.
    grace = getattr(args, "grace", None)

    def step() -> int:
        try:
            return int(args.func(args))
        except KeyboardInterrupt:
            if _Step.open:  # end the step's "..." line; the parent reports the stop
                print(" stopped", flush=True)
            raise

    return run_in_child(
        step,
        exit_code=_exit_code,
        cleanup=cleanup,
        **({} if grace is None else {"stop_seconds": grace + 5.0, "own_group": True}),
    )


def _exit_code(exc: BaseException) -> int:
    """Print what went wrong (one line on stderr) and return the exit code for it."""
    from ..errors import AccumulatorOverflowError, FheqnnError
    from ..interrupts import ChildKilledError

    if isinstance(exc, KeyboardInterrupt):
        return _interrupted(None, exc)
    if isinstance(exc, ChildKilledError):
        print(f"fheqnn: error: {exc}", file=sys.stderr)
        return exc.exit_code
    if isinstance(exc, BrokenPipeError):
        return _broken_pipe()
    if isinstance(exc, AccumulatorOverflowError):
        print(f"fheqnn: accumulator budget exceeded: {exc}", file=sys.stderr)
        return EXIT_ACCUMULATOR
    if isinstance(exc, FheqnnError | CliError):
        print(f"fheqnn: error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    if isinstance(exc, OSError):
        # A path the user gave that cannot be read or written (permissions, a folder where a
        # file was expected, a full disk): the cause, not a traceback.
        where = f": {exc.filename}" if exc.filename else ""
        print(f"fheqnn: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return EXIT_INPUT
    print(
        f"fheqnn: unexpected error: {type(exc).__name__}: {exc} (run with -v for the traceback)",
        file=sys.stderr,
    )
    return EXIT_ERROR


def _interrupted(args: argparse.Namespace | None, exc: BaseException | None = None) -> int:
    """A stop: every ``finally`` has run (temporaries removed); say so in one line.

    Ctrl-C exits 130; SIGTERM (a supervisor) and SIGHUP exit 128 + their number, except
    ``serve``, for which SIGTERM is the normal way to end (it drained): 0.
    """
    from ..interrupts import (
        STOP_SIGNALS,
        Terminated,
        native_work_running,
        record_and_raise,
        stop_signal,
    )

    signum = exc.signum if isinstance(exc, Terminated) else (stop_signal() or signal.SIGINT)
    for each in STOP_SIGNALS:  # a second signal must not cut the exit short
        signal.signal(each, signal.SIG_IGN)
    with contextlib.suppress(OSError, ValueError):
        if _Step.open:
            print(" interrupted" if signum == signal.SIGINT else " stopped", flush=True)
        sys.stdout.flush()
    serving = args is not None and args.command == "serve"
    if serving:
        word, code = "stopped", (0 if signum == signal.SIGTERM else EXIT_INTERRUPTED)
    elif signum == signal.SIGINT:
        word, code = "interrupted", EXIT_INTERRUPTED
    else:
        word, code = f"terminated ({signal.Signals(signum).name})", 128 + signum
    print(f"fheqnn: {word}", file=sys.stderr, flush=True)
    if native_work_running():
        # Concrete still runs in a worker thread that cannot be stopped; tearing the
        # interpreter down around it can crash, so leave at once (nothing is half-written).
        os._exit(code)
    for each in STOP_SIGNALS:
        signal.signal(each, record_and_raise)
    return code


def _broken_pipe() -> int:
    """The reader of our output went away (``| head -1``): stop quietly, as Unix tools do."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python's exit-time flush must not fail again
    except (OSError, ValueError):
        pass
    return EXIT_BROKEN_PIPE
