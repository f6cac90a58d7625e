"""Accuracy and encrypted latency across pruning percentages (``fheqnn bench``).

For each data set and ``n_prune_neurons_percentage``: train the default network, compile it, and
measure cost and quality side by side (one JSON line per configuration): accuracy in the clear,
simulated and encrypted, PBS count, lookup precision, accumulator widths against the budget,
compile and key generation time, evaluation key and ciphertext sizes, latency per row (single
row and batch), the float MLP's accuracy, the ratio of latency to a measured lookup floor, and
the encrypted throughput (rows/s) of circuits that take 1, 8 or 32 rows per call.

Models are trained, compiled, saved and run through the public API (estimators, compiled-model
folders, client and server); the lookup-cost floor builds its own small circuits through our
Concrete seam. ``report`` turns the rows into a markdown table and a PNG plot.
"""

from __future__ import annotations

import json
import logging
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

PROFILES = {
    # Simulation only, small: runs in CI in a few minutes.
    "quick": {
        "datasets": ["iris"],
        "prune": [0.0, 0.5],
        "epochs": 40,
        "encrypt_rows": 0,
        "repeats": 0,
        "float_baseline": True,
        "throughput_rows": 0,
    },
    # Real encryption: run by hand on a quiet machine.
    "full": {
        "datasets": ["breast_cancer", "digits", "iris"],
        "prune": [0.0, 0.25, 0.5, 0.75],
        "epochs": 200,
        "encrypt_rows": 10,
        "repeats": 5,
        "float_baseline": True,
        "throughput_rows": 32,
    },
}


#: Rows per circuit call whose encrypted throughput is measured (``throughput_rows`` > 0).
THROUGHPUT_BATCHES = (1, 8, 32)


@dataclass
class BenchOptions:
    """What to measure (see ``PROFILES`` for the presets).

    ``throughput_rows``: test rows over which :func:`throughput` measures encrypted rows/s for
    each of ``throughput_batches`` (0: not measured; each batch size costs a compilation and
    a key generation on top).
    """

    datasets: list[str]
    prune: list[float]
    epochs: int
    encrypt_rows: int
    repeats: int
    float_baseline: bool = True
    seed: int = 0
    rounding: Any = "auto"
    approximate: bool = False
    p_error: float | str | None = "auto"
    throughput_rows: int = 0
    throughput_batches: tuple[int, ...] = THROUGHPUT_BATCHES


def _load(name: str) -> tuple[np.ndarray, ...]:
    from .datasets import load_split

    return load_split(name)


def machine_load() -> float | None:
    """1-minute load average (a benchmark on a busy machine is worth less)."""
    try:
        import os

        return float(os.getloadavg()[0])
    except OSError:  # pragma: no cover
        return None


def float_mlp_accuracy(clf: Any, x_tr, y_tr, x_te, y_te, seed: int) -> float:
    """Test accuracy of a float MLP with the classifier's shape, trained by the same loop."""
    import torch
    from torch import nn

    from .model.training import train_module

    width = max(1, round(x_tr.shape[1] * clf.module__n_hidden_neurons_multiplier))
    classes = np.unique(y_tr)
    widths = [x_tr.shape[1]] + [width] * (clf.module__n_layers - 1) + [len(classes)]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layers: list[nn.Module] = []
        for i in range(clf.module__n_layers):
            layers.append(nn.Linear(widths[i], widths[i + 1]))
            if i < clf.module__n_layers - 1:
                layers.append(clf.module__activation_function())
        model = nn.Sequential(*layers)
        targets = torch.as_tensor(np.searchsorted(classes, y_tr), dtype=torch.int64)
        train_module(
            model,
            torch.as_tensor(x_tr, dtype=torch.float32),
            targets,
            nn.CrossEntropyLoss(),
            clf.training_config(),
            torch.Generator().manual_seed(seed),
        )
    with torch.no_grad():
        pred = model(torch.as_tensor(x_te, dtype=torch.float32)).argmax(1).numpy()
    return float(np.mean(classes[pred] == y_te))


def lookup_floor(
    bits: int, repeats: int = 3, batch: int = 64, p_error: float | None = None
) -> dict[str, float]:
    """Cost of table lookups at ``bits`` input precision, measured in this process.

    A circuit of ``batch`` independent lookups (so every core works) and one of a single lookup,
    both encrypted and run ``repeats`` times; medians. ``p_error``: the error probability per
    lookup of the model it is a floor for (``None``: Concrete's default, as such a model has);
    a stricter one would pick larger parameters and make the floor look slower than it is.

    Returns:
        ``per_lookup_s`` (batched, per lookup), ``single_lookup_s`` (one lookup alone, fixed
        overhead included), ``bits``.
    """
    from .compiler.backend import make_configuration
    from .concrete_seam import fhe as concrete_fhe

    fhe = concrete_fhe()
    rng = np.random.default_rng(0)
    top = 2 ** (bits - 1)
    results = {}
    for name, size in (("batch", batch), ("single", 1)):

        def circuit(x):
            return fhe.univariate(lambda v: (v * 3) % (2 ** max(1, bits - 1)))(x)

        inputset = [rng.integers(-top, top, size=(1, size)) for _ in range(20)]
        inputset += [np.full((1, size), -top), np.full((1, size), top - 1)]
        configuration = make_configuration(**({} if p_error is None else {"p_error": p_error}))
        compiled = fhe.Compiler(circuit, {"x": "encrypted"}).compile(inputset, configuration)
        compiled.keygen()
        sample = rng.integers(-top, top, size=(1, size))
        args = compiled.encrypt(sample)
        compiled.run(args)  # warm-up
        times = []
        for _ in range(max(1, repeats)):
            start = time.perf_counter()
            compiled.run(args)
            times.append(time.perf_counter() - start)
        results[name] = statistics.median(times)
    return {
        "bits": bits,
        "per_lookup_s": results["batch"] / batch,
        "single_lookup_s": results["single"],
    }


def bench_one(dataset: str, prune: float, opts: BenchOptions, floors: dict[Any, dict]) -> dict:
    """Train, compile and measure one configuration; returns its JSON row."""
    from .contract import range_warnings_off

    # A shipped data set's own split: its rare far values (a digits pixel) are the data's.
    with range_warnings_off():
        return _bench_one(dataset, prune, opts, floors)


def _bench_one(dataset: str, prune: float, opts: BenchOptions, floors: dict[Any, dict]) -> dict:
    from . import FheModelClient, FheModelServer, NeuralNetClassifier

    x_tr, x_te, y_tr, y_te = _load(dataset)
    row: dict[str, Any] = {
        "dataset": dataset,
        "prune": prune,
        "seed": opts.seed,
        "epochs": opts.epochs,
        "load_before": machine_load(),
        "python": platform.python_version(),
    }
    clf = NeuralNetClassifier(
        module__n_prune_neurons_percentage=prune,
        max_epochs=opts.epochs,
        random_state=opts.seed,
        verbose=0,
    )
    start = time.perf_counter()
    clf.fit(x_tr, y_tr)
    row["fit_s"] = time.perf_counter() - start
    row["n_accum_bits"] = clf.module_.n_accum_bits
    row["max_active_neurons"] = clf.module_.max_active_neurons()
    row["acc_clear"] = float(clf.score(x_te, y_te))
    if opts.float_baseline:
        row["acc_float_mlp"] = float_mlp_accuracy(clf, x_tr, y_tr, x_te, y_te, opts.seed)
    start = time.perf_counter()
    # Public path: the estimator exports to ONNX and compiles with its own n_accum_bits.
    clf.compile(
        x_tr,
        y_tr,
        rounding=opts.rounding,
        rounding_exact=False if opts.approximate else None,
        p_error=opts.p_error,
    )
    model = clf.fhe_model_
    row["compile_total_s"] = time.perf_counter() - start
    summary = model.summary()
    row.update(
        {
            "compile_s": summary["compile_seconds"],
            "pbs": summary["pbs_count"],
            "hidden_neurons": summary["hidden_neurons"],
            "removed_neurons": summary["removed_neurons"],
            "max_bit_width": summary["max_bit_width"],
            "layers": [
                {
                    k: r[k]
                    for k in (
                        "layer",
                        "neurons",
                        "max_nonzeros",
                        "proven_bits",
                        "measured_bits",
                        "lookup_bits",
                        "round_lsbs",
                        "allowed_bits",
                        "ok",
                    )
                }
                for r in summary["layers"]
            ],
            "rounding": "exact" if summary["rounding_exact"] else "approximate",
            "p_error": summary["p_error"],
            "p_error_curve": summary["p_error_curve"],
            "estimated_s_per_row": summary["estimated_seconds_per_row"],
        }
    )
    lookup_bits = [r["lookup_bits"] for r in summary["layers"] if r["lookup_bits"]]
    row["lookup_bits_max"] = max(lookup_bits) if lookup_bits else None
    row["acc_int"] = float(np.mean(model.predict(x_te, fhe="disable") == y_te))
    start = time.perf_counter()
    row["acc_simulated"] = float(np.mean(model.predict(x_te, fhe="simulate") == y_te))
    row["simulate_s_per_row"] = (time.perf_counter() - start) / len(x_te)
    if opts.encrypt_rows > 0:
        row.update(_encrypted_measures(model, x_te, y_te, opts, FheModelClient, FheModelServer))
    if opts.throughput_rows > 0:
        rows = x_te[: opts.throughput_rows]
        row.update(throughput(model, rows, opts.throughput_batches, FheModelClient, FheModelServer))
    if opts.encrypt_rows > 0 or opts.throughput_rows > 0:
        # Each layer's lookups at their own precision (approximate rounding: one lookup per
        # neuron); exact rounding's extra rounding lookups are counted at the widest precision.
        per_layer = [(r["neurons"], r["lookup_bits"]) for r in row["layers"] if r["lookup_bits"]]
        if sum(n for n, _ in per_layer) != row["pbs"]:
            per_layer = [(row["pbs"], row["lookup_bits_max"] or 1)]
        floor_s = 0.0
        for count, bits in per_layer:
            key = (bits, row["p_error"])
            if key not in floors:
                floors[key] = lookup_floor(
                    bits, repeats=max(1, opts.repeats), p_error=row["p_error"]
                )
            floor_s += count * floors[key]["per_lookup_s"]
        widest = floors[(max(b for _, b in per_layer), row["p_error"])]
        row["lookup_cost_s"] = widest["per_lookup_s"]
        row["lone_lookup_s"] = widest["single_lookup_s"]
        row["floor_s"] = floor_s
        # The most rows per second the lookups alone allow, every core busy.
        row["floor_rows_s"] = 1.0 / row["floor_s"]
        if "latency_single_s" in row:
            row["latency_over_floor"] = row["latency_single_s"] / row["floor_s"]
    row["load_after"] = machine_load()
    return row


def _encrypted_measures(model, x_te, y_te, opts, client_cls, server_cls) -> dict[str, Any]:
    from .runtime import encrypted_predict

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder, keys = Path(tmp) / "model", Path(tmp) / "keys"
        model.save(folder)
        client = client_cls(folder)
        info = client.keygen(keys)
        out["keygen_s"] = info.keygen_seconds
        out["eval_keys_mb"] = info.evaluation_keys_bytes / 1e6
        server = server_cls(folder)
        server.register_evaluation_keys(client.evaluation_keys())
        n = min(opts.encrypt_rows, len(x_te))
        single = client.encrypt(x_te[:1])
        out["ciphertext_in_bytes_per_row"] = len(single)
        times = []
        result = b""
        for _ in range(max(1, opts.repeats)):
            start = time.perf_counter()
            result = server.run(single)
            times.append(time.perf_counter() - start)
        out["latency_single_s"] = statistics.median(times)
        out["ciphertext_out_bytes_per_row"] = len(result)
        trip = encrypted_predict(client, server, x_te[:n], chunk=n)
        out["latency_batch_s_per_row"] = trip.seconds_per_row
        out["batch_rows"] = n
        pred = trip.predictions
        out["acc_encrypted"] = float(np.mean(pred == y_te[:n]))
        out["encrypted_rows"] = n
        out["encrypted_equals_simulated"] = float(
            np.mean(pred == model.predict(x_te[:n], fhe="simulate"))
        )
    return out


def throughput(
    model: Any,
    x: np.ndarray,
    batch_sizes: tuple[int, ...],
    client_cls: Any,
    server_cls: Any,
) -> dict[str, Any]:
    """Encrypted rows per second of ``x`` for circuits that take each of ``batch_sizes`` rows.

    Each batch size is the same lowered program compiled for it (``model`` itself when it
    has that batch size; otherwise :meth:`~fheqnn.compiler.api.CompiledModel.with_batch_size`,
    which keeps its rounding and error probability), saved and given keys (neither timed).
    Then encrypt -> run -> decrypt of every row through the client and server classes, after
    one untimed call: batch size 1 as the single-row loop (one call per row, one after the
    other); larger ones as one request of ceil(n / B) ciphertexts, which the server runs on
    its threads.

    Returns:
        ``throughput_rows`` (n), ``throughput_rows_s`` (rows/s by batch size, keys are strings
        for JSON), ``throughput_agreement`` (share of rows whose prediction, by batch size,
        equals the first batch size's: below 1 only from approximate rounding or bootstrap
        errors).
    """
    rates: dict[str, float] = {}
    agreement: dict[str, float] = {}
    first: np.ndarray | None = None
    for size in batch_sizes:
        compiled = model if model.batch_size == size else model.with_batch_size(size)
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "model"
            compiled.save(folder)
            client = client_cls(folder)
            client.keygen(Path(tmp) / "keys")
            server = server_cls(folder)
            server.register_evaluation_keys(client.evaluation_keys())
            parts = [x[i : i + 1] for i in range(len(x))] if size == 1 else [x]
            client.decrypt(server.run(client.encrypt(x[:1])))  # warm-up, not timed
            start = time.perf_counter()
            predictions = [client.decrypt(server.run(client.encrypt(part))) for part in parts]
            seconds = time.perf_counter() - start
        pred = np.concatenate(predictions)
        first = pred if first is None else first
        rates[str(size)] = len(x) / seconds
        agreement[str(size)] = float(np.mean(pred == first))
        logger.info("throughput, %d row(s) per call: %.3f rows/s", size, rates[str(size)])
    return {
        "throughput_rows": len(x),
        "throughput_rows_s": rates,
        "throughput_agreement": agreement,
    }


def run_bench(opts: BenchOptions, out: Path, progress: Any = None) -> list[dict]:
    """Measure every (data set, pruning) pair; append each row to ``out`` (JSON lines)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    rows, floors = [], {}
    for dataset in opts.datasets:
        for prune in opts.prune:
            if progress:
                progress(f"{dataset}, prune {prune:.2f}")
            row = bench_one(dataset, prune, opts, floors)
            rows.append(row)
            with out.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
    return rows


def read_rows(path: Path) -> list[dict]:
    """Rows of a JSON lines file."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _fmt(value: Any, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def _throughput_cell(rates: dict[str, float] | None) -> str:
    """``1: 1.85, 8: 2.47, 32: 2.61`` (rows per call: rows/s)."""
    if not rates:
        return "-"
    return ", ".join(f"{size}: {rate:.2f}" for size, rate in rates.items())


def markdown_table(rows: list[dict]) -> str:
    """One line per configuration, cost and quality side by side."""
    head = [
        "data set",
        "prune",
        "rounding",
        "p_error",
        "acc float MLP",
        "acc clear",
        "acc sim",
        "acc enc (rows)",
        "PBS",
        "lookup bits",
        "acc bits proven/measured/allowed",
        "compile s",
        "keygen s",
        "eval keys MB",
        "ct in/out B",
        "latency 1 row s",
        "batch s/row",
        "floor s",
        "ratio",
        "rows/s by rows per call",
        "floor rows/s",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        proven = max(layer["proven_bits"] for layer in r["layers"])
        measured = max(layer["measured_bits"] or 0 for layer in r["layers"])
        lookups = "/".join(
            str(layer["lookup_bits"]) for layer in r["layers"] if layer["lookup_bits"]
        )
        enc = (
            "-" if "acc_encrypted" not in r else f"{r['acc_encrypted']:.3f} ({r['encrypted_rows']})"
        )
        cts = (
            "-"
            if "ciphertext_in_bytes_per_row" not in r
            else (f"{r['ciphertext_in_bytes_per_row']}/{r['ciphertext_out_bytes_per_row']}")
        )
        lines.append(
            "| "
            + " | ".join(
                [
                    r["dataset"],
                    f"{r['prune']:.2f}",
                    r.get("rounding", "exact"),
                    "default" if r.get("p_error") is None else f"{r['p_error']:g}",
                    _fmt(r.get("acc_float_mlp")),
                    _fmt(r["acc_clear"]),
                    _fmt(r["acc_simulated"]),
                    enc,
                    str(r["pbs"]),
                    lookups,
                    f"{proven}/{measured}/{r['n_accum_bits']}",
                    _fmt(r["compile_s"], ".1f"),
                    _fmt(r.get("keygen_s"), ".1f"),
                    _fmt(r.get("eval_keys_mb"), ".1f"),
                    cts,
                    _fmt(r.get("latency_single_s")),
                    _fmt(r.get("latency_batch_s_per_row")),
                    _fmt(r.get("floor_s")),
                    _fmt(r.get("latency_over_floor"), ".2f"),
                    _throughput_cell(r.get("throughput_rows_s")),
                    _fmt(r.get("floor_rows_s"), ".2f"),
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    """Latency and accuracy against pruning percentage, one line per data set (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_lat, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2))
    for dataset in sorted({r["dataset"] for r in rows}):
        sel = sorted((r for r in rows if r["dataset"] == dataset), key=lambda r: r["prune"])
        prune = [100 * r["prune"] for r in sel]
        if any("latency_single_s" in r for r in sel):
            ax_lat.plot(prune, [r.get("latency_single_s") for r in sel], "o-", label=dataset)
        else:
            ax_lat.plot(prune, [r["pbs"] for r in sel], "o-", label=dataset)
        ax_acc.plot(
            prune, [100 * r["acc_simulated"] for r in sel], "o-", label=f"{dataset} simulated"
        )
        if any("acc_float_mlp" in r for r in sel):
            ax_acc.plot(
                prune,
                [100 * r.get("acc_float_mlp", np.nan) for r in sel],
                "x--",
                label=f"{dataset} float MLP",
            )
    encrypted = any("latency_single_s" in r for r in rows)
    ax_lat.set_ylabel("encrypted latency per row (s)" if encrypted else "PBS per row")
    ax_lat.set_title("cost" + ("" if encrypted else " (simulation profile: PBS count)"))
    ax_acc.set_ylabel("test accuracy (%)")
    ax_acc.set_title("accuracy")
    for ax in (ax_lat, ax_acc):
        ax.set_xlabel("hidden neurons pruned (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(rows: list[dict], folder: Path, stem: str = "bench") -> tuple[Path, Path]:
    """Write ``<stem>.md`` (table) and ``<stem>.png`` (plot) into ``folder``."""
    from .fileio import atomic_write_bytes

    folder.mkdir(parents=True, exist_ok=True)
    md = folder / f"{stem}.md"
    loads = [r.get("load_before") for r in rows if r.get("load_before") is not None]
    header = (
        f"# fheqnn benchmark\n\n{len(rows)} configurations; machine load (1-min average) "
        f"before runs: {min(loads, default=0):.2f} to {max(loads, default=0):.2f}.\n"
        "ratio = single-row latency / (PBS x measured cost of one lookup at the circuit's "
        "lookup precision, batched). rows/s by rows per call: encrypted throughput (encrypt, "
        "run, decrypt) over the same test rows of circuits compiled for 1, 8, ... rows per "
        "call (1: one call per row); floor rows/s = 1 / floor s.\n\n"
    )
    atomic_write_bytes(md, (header + markdown_table(rows) + "\n").encode())
    png = folder / f"{stem}.png"
    plot(rows, png)
    return md, png


#: Where ``--compare-reference`` finds the reference's own Python (see benchmarks/reference.py).
DEFAULT_REFERENCE_PYTHON = "/work/refenv/bin/python"


def reference_row(python: str, dataset: str, seed: int, epochs: int, prune: float = 0.0) -> dict:
    """Run ``benchmarks/reference.py`` (Concrete ML 1.9) in its own environment; its JSON row.

    Raises:
        FileNotFoundError: no such interpreter (the reference environment is made by hand).
        RuntimeError: the script failed (its last lines of error output are in the message).
    """
    import subprocess

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "reference.py"
    if not Path(python).is_file():
        raise FileNotFoundError(
            f"no reference interpreter at {python}: create it by hand with 'python -m venv "
            f'/work/refenv && /work/refenv/bin/pip install "concrete-ml==1.9.*"\' (see {script})'
        )
    cmd = [python, str(script), "--dataset", dataset, "--seed", str(seed)]
    cmd += ["--epochs", str(epochs), "--prune", str(prune)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {done.returncode}):\n{tail}")
    logger.info("reference: %s", done.stdout.strip().splitlines()[-1])
    return json.loads(done.stdout.strip().splitlines()[-1])


COMPARED = (
    ("latency 1 row s", "latency_single_s"),
    ("keygen s", "keygen_s"),
    ("eval keys MB", "eval_keys_mb"),
    ("PBS", "pbs"),
    ("acc sim", "acc_simulated"),
)


def comparison_table(pairs: list[tuple[dict, dict]]) -> str:
    """Our row and the reference's side by side, with ours / reference ratios."""
    head = ["data set", "seed", "system", *(name for name, _ in COMPARED), "load"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for ours, ref in pairs:
        for label, row in (("fheqnn default", ours), ("Concrete ML 1.9", ref)):
            cells = [_fmt(row.get(key), ".3f") for _, key in COMPARED]
            load = row.get("load_before", row.get("load"))
            lines.append(
                f"| {ours['dataset']} | {ours['seed']} | {label} | "
                + " | ".join(cells)
                + f" | {_fmt(load, '.1f')} |"
            )
        ratios = [
            _fmt(ours[key] / ref[key], ".3f") if ours.get(key) and ref.get(key) else "-"
            for _, key in COMPARED
        ]
        lines.append(
            f"| {ours['dataset']} | {ours['seed']} | ratio | " + " | ".join(ratios) + " | |"
        )
    return "\n".join(lines)


def plot_comparison(pairs: list[tuple[dict, dict]], path: Path) -> None:
    """Latency per row against lookups (PBS) per row, both systems (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for index, name in ((0, "fheqnn default"), (1, "Concrete ML 1.9")):
        points = [(p[index]["pbs"], p[index].get("latency_single_s")) for p in pairs]
        points = [pt for pt in points if pt[1] is not None]
        ax.plot([p[0] for p in points], [p[1] for p in points], "o", label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("table lookups (PBS) per row")
    ax.set_ylabel("encrypted latency per row (s)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
