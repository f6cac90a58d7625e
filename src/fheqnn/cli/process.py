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
    from ..interrupts import forget_interrupts, record_and_raise

    # From here on, Ctrl-C is a KeyboardInterrupt that unwinds (and cleans up) every step, and
    # is recorded in case something swallows it (see record_and_raise); both only for this
    # command (main() is also called in-process, by tests and scripts).
    previous = signal.getsignal(signal.SIGINT)
    forget_interrupts()
    signal.signal(signal.SIGINT, record_and_raise)
    try:
        return _run_command(args)
    finally:
        forget_interrupts()
        if callable(previous) or previous in (signal.SIG_DFL, signal.SIG_IGN):
            signal.signal(signal.SIGINT, previous)


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
    except KeyboardInterrupt:
        return _interrupted()
    except Exception as exc:
        from ..interrupts import interrupted_before

        if interrupted_before():
            # An error after a Ctrl-C is its consequence (e.g. a module whose import the
            # interrupt cut short, measured in training): report the interrupt.
            return _interrupted()
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
        outputs = [
            Path(args.circuits) / f"demo_{args.dataset}",
            Path(args.keys) / f"demo_{args.dataset}",
        ]

    def cleanup() -> None:
        for path in outputs:
            if path:
                clean_stale(Path(path))

    return run_in_child(lambda: int(args.func(args)), exit_code=_exit_code, cleanup=cleanup)


def _exit_code(exc: BaseException) -> int:
    """Print what went wrong (one line on stderr) and return the exit code for it."""
    from ..errors import AccumulatorOverflowError, FheqnnError

    if isinstance(exc, KeyboardInterrupt):
        return _interrupted()
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


def _interrupted() -> int:
    """Ctrl-C: every ``finally`` has run (temporaries removed); say so in one line."""
    from ..interrupts import native_work_running

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the exit short
    with contextlib.suppress(OSError, ValueError):
        if _Step.open:
            print(" interrupted", flush=True)  # ends the step's "..." line
        sys.stdout.flush()
    print("fheqnn: interrupted", file=sys.stderr, flush=True)
    if native_work_running():
        # Concrete still runs in a worker thread that cannot be stopped; tearing the
        # interpreter down around it can crash, so leave at once (nothing is half-written).
        os._exit(EXIT_INTERRUPTED)
    from ..interrupts import record_and_raise

    signal.signal(signal.SIGINT, record_and_raise)
    return EXIT_INTERRUPTED


def _broken_pipe() -> int:
    """The reader of our output went away (``| head -1``): stop quietly, as Unix tools do."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python's exit-time flush must not fail again
    except (OSError, ValueError):
        pass
    return EXIT_BROKEN_PIPE
