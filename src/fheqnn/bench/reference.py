"""The comparison with the reference (Concrete ML 1.9, run by ``benchmarks/reference.py`` in
its own environment): its row, and both side by side as a table and a plot."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from .report import _fmt

# One logger for the whole benchmark (``fheqnn.bench``), as before its split into modules.
logger = logging.getLogger(__package__)

#: Where ``--compare-reference`` finds the reference's own Python (see benchmarks/reference.py).
DEFAULT_REFERENCE_PYTHON = "/work/refenv/bin/python"


def reference_row(
    python: str,
    dataset: str,
    seed: int,
    epochs: int,
    prune: float = 0.0,
    *,
    width: int = 4,
    rows: int = 5,
) -> dict:
    """Run ``benchmarks/reference.py`` (Concrete ML 1.9) in its own environment; its JSON row.

    ``width``: the hidden-width multiplier; ``rows``: encrypted rows timed (0: none).

    Raises:
        FileNotFoundError: no such interpreter (the reference environment is made by hand).
        RuntimeError: the script failed (its last lines of error output are in the message).
    """
    args = ["--dataset", dataset, "--seed", str(seed), "--epochs", str(epochs)]
    args += ["--prune", str(prune), "--width", str(width), "--rows", str(rows)]
    return run_reference_script(python, "reference.py", args)


def run_reference_script(python: str, script_name: str, args: list[str]) -> dict:
    """Run ``benchmarks/<script_name>`` with the reference environment's ``python``; the JSON
    row it prints last.

    Raises:
        FileNotFoundError: no such interpreter (the reference environment is made by hand).
        RuntimeError: the script failed (its last lines of error output are in the message).
    """
    import subprocess

    # src/fheqnn/bench/reference.py -> the repository's benchmarks/ folder.
    script = Path(__file__).resolve().parents[3] / "benchmarks" / script_name
    if not Path(python).is_file():
        raise FileNotFoundError(
            f"no reference interpreter at {python}: create it by hand with 'python -m venv "
            f'/work/refenv && /work/refenv/bin/pip install "concrete-ml==1.9.*"\' (see {script})'
        )
    cmd = [python, str(script), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {done.returncode}):\n{tail}")
    logger.info("reference: %s", done.stdout.strip().splitlines()[-1])
    return json.loads(done.stdout.strip().splitlines()[-1])


#: (column, our row's key, the reference row's key).
COMPARED = (
    ("latency 1 row s", "latency_single_s", "latency_single_s"),
    ("keygen s", "keygen_s", "keygen_s"),
    ("eval keys MB", "eval_keys_mb", "eval_keys_mb"),
    ("compile s", "compile_total_s", "compile_s"),
    ("PBS", "pbs", "pbs"),
    ("acc sim", "acc_simulated", "acc_simulated"),
    ("rows changed in 10 sims", "simulate_unstable_rows", "simulate_unstable_rows"),
)


def comparison_table(pairs: list[tuple[dict, dict]]) -> str:
    """Our row and the reference's side by side, with ours / reference ratios."""
    head = ["data set", "width", "prune", "seed", "system", *(n for n, _, _ in COMPARED), "load"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for ours, ref in pairs:
        label = f"fheqnn {ours.get('profile', 'default')}"
        for name, row, side in ((label, ours, 1), ("Concrete ML 1.9", ref, 2)):
            cells = [_fmt(row.get(keys[side]), ".3f") for keys in COMPARED]
            load = row.get("load_before", row.get("load"))
            lines.append(
                f"| {ours['dataset']} | x{ours.get('width', 4)} | {100 * ours['prune']:.0f} % "
                f"| {ours['seed']} | {name} | " + " | ".join(cells) + f" | {_fmt(load, '.1f')} |"
            )
        ratios = [
            _fmt(ours[mine] / ref[theirs], ".3f") if ours.get(mine) and ref.get(theirs) else "-"
            for _, mine, theirs in COMPARED
        ]
        lines.append(
            f"| {ours['dataset']} | x{ours.get('width', 4)} | {100 * ours['prune']:.0f} % "
            f"| {ours['seed']} | ratio | " + " | ".join(ratios) + " | |"
        )
    return "\n".join(lines)
