"""The ``fheqnn`` command-line tool: the whole flow, one subcommand per step.

    train -> export -> compile (bit-width check) -> report -> keygen -> encrypt -> run -> decrypt
    predict = encrypt -> run -> decrypt locally;  demo = everything on a shipped data set

A thin shell over the library: each command parses its options, calls the library, prints.
One module per command group (``train``, ``compile``, ``client``, ``server``, ``demo``,
``bench``), the parser that registers them (``parser``), the shared option groups
(``options``), output files (``outputs``), and how a command runs (``process``: exit codes,
Ctrl-C, child processes for the commands that run Concrete). Library code logs; this package is
the one place that prints. Exit codes: 0 success, 1 an unexpected failure, 2 bad input or usage,
3 accumulator budget exceeded, 130 interrupted (Ctrl-C: one line, nothing half-written), 143
(129) stopped by SIGTERM (SIGHUP; ``serve`` exits 0: it drained), 137 the worker was killed, 141
the output pipe closed (``fheqnn report M | head -1``).

This module stays light: the ``fheqnn`` program imports it first, before any heavy module.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence


def _interrupted_while_starting(signum: int, *_: object) -> None:
    """Ctrl-C or SIGTERM while the modules load (before main() can catch it): one line, no
    traceback, nothing was written yet."""
    if signum == signal.SIGINT:
        os.write(2, b"fheqnn: interrupted\n")
    else:
        os.write(2, f"fheqnn: terminated ({signal.Signals(signum).name})\n".encode())
    os._exit(128 + signum)


def _catch_stops_while_starting() -> None:
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupted_while_starting)


if os.path.basename(sys.argv[0]) == "fheqnn":
    _catch_stops_while_starting()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fheqnn`` command; returns the exit code."""
    from .process import main as run

    return run(argv)
