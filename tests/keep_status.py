"""A pytest plugin that keeps pytest's exit status when a test used Concrete directly.

concrete-python's exit handler turns the status of a process that simulated or ran a circuit
into 0 (see :func:`fheqnn.concrete_seam.keep_exit_status`): a failing suite would exit 0.
fheqnn takes the handler out whenever it loads Concrete; a test that imports ``concrete``
directly and runs a circuit before fheqnn does would leave it in. ``conftest.py`` loads this
plugin; it is a module of its own so that a light pytest run can load it alone
(``-p keep_status``), as ``test_exit_status.py`` does.
"""

from __future__ import annotations

import sys

import pytest


def pytest_unconfigure(config: pytest.Config) -> None:
    if "concrete.compiler" in sys.modules:
        from fheqnn.concrete_seam import keep_exit_status

        keep_exit_status()
