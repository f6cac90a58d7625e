"""Judge a test run by pytest's JUnit XML report, not by the process's exit status alone.

A process can lose its exit status at teardown (concrete-python's exit handler turned every
status into 0 until fheqnn took it out): the report is written before that, by pytest itself.
Exit status 0 only if the report exists, counts at least one test, and no failure or error.

Usage: python .ci/check_report.py REPORT.xml
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path

COUNTS = ("tests", "failures", "errors", "skipped")


def totals(report: Path) -> dict[str, int]:
    """Sum of each count over the report's test suites.

    Raises:
        OSError: the report cannot be read.
        ET.ParseError: it is not XML.
        ValueError: it holds no test suite, or a count that is not an integer.
    """
    root = ET.parse(report).getroot()
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    if not suites:
        raise ValueError(f"no <testsuite> element in {report}")
    return {name: sum(int(suite.get(name, "0")) for suite in suites) for name in COUNTS}


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python .ci/check_report.py REPORT.xml", file=sys.stderr)
        return 2
    report = Path(argv[0])
    try:
        found = totals(report)
    except (OSError, ET.ParseError, ValueError) as exc:
        print(f"check_report: no usable test report at {report}: {exc}", file=sys.stderr)
        return 1
    summary = ", ".join(f"{found[name]} {name}" for name in COUNTS)
    ran = found["tests"] - found["skipped"]
    if found["failures"] or found["errors"] or ran < 1:
        print(f"check_report: FAILED ({summary}; tests run: {ran})", file=sys.stderr)
        return 1
    print(f"check_report: ok ({summary})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
