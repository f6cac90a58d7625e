"""CI judges a run by pytest's JUnit report too (``.ci/check_report.py``), not only by the exit
status, which a library's exit handler can replace."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

CHECKER = Path(__file__).resolve().parents[1] / ".ci" / "check_report.py"


def _checker():
    spec = importlib.util.spec_from_file_location("check_report", CHECKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _suite(tests: int, failures: int = 0, errors: int = 0, skipped: int = 0) -> str:
    return (
        f'<testsuite name="pytest" tests="{tests}" failures="{failures}" errors="{errors}" '
        f'skipped="{skipped}"></testsuite>'
    )


@pytest.mark.parametrize(
    ("xml", "expected"),
    [
        (f"<testsuites>{_suite(3)}</testsuites>", 0),
        (_suite(3), 0),
        (f"<testsuites>{_suite(3)}{_suite(2, failures=1)}</testsuites>", 1),
        (f"<testsuites>{_suite(3, errors=1)}</testsuites>", 1),
        (f"<testsuites>{_suite(0)}</testsuites>", 1),
        (f"<testsuites>{_suite(2, skipped=2)}</testsuites>", 1),
        ("<testsuites></testsuites>", 1),
        ("not xml at all", 1),
        ('<testsuites><testsuite tests="many"/></testsuites>', 1),
    ],
    ids=["ok", "bare-suite", "a-failure", "an-error", "no-test", "all-skipped", "empty",
         "not-xml", "bad-count"],
)  # fmt: skip
def test_verdicts(tmp_path: Path, xml: str, expected: int, capsys) -> None:
    report = tmp_path / "junit.xml"
    report.write_text(xml)
    assert _checker().main([str(report)]) == expected
    out = capsys.readouterr()
    assert ("check_report: ok" in out.out) == (expected == 0), out


def test_a_missing_report_fails(tmp_path: Path) -> None:
    assert _checker().main([str(tmp_path / "absent.xml")]) == 1


def test_a_real_failing_run_is_caught_even_with_exit_status_0(tmp_path: Path) -> None:
    # A run whose status is lost at teardown (os._exit(0) after pytest's report is written, as
    # Concrete's handler does): the report still says what happened.
    (tmp_path / "test_one.py").write_text(
        "import atexit, os\n"
        "atexit.register(lambda: os._exit(0))\n"
        "def test_passes():\n    pass\n"
        "def test_fails():\n    assert False\n"
    )
    report = tmp_path / "junit.xml"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         f"--junitxml={report}", str(tmp_path / "test_one.py")],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ},
    )  # fmt: skip
    assert done.returncode == 0 and "1 failed, 1 passed" in done.stdout, done.stdout
    checked = subprocess.run(
        [sys.executable, str(CHECKER), str(report)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 1
    assert "1 failures" in checked.stderr and "2 tests" in checked.stderr
