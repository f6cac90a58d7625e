"""A training run's folder: what ``fheqnn train`` writes and ``fheqnn compile --from`` reads.

The folder holds the fitted estimator (``estimator.pkl``), its ONNX export, the train/test
split (the training rows calibrate the compilation, with their labels for the accuracy
guard), the client's output spec and standardizer, and ``train.json``: what was trained on
and how it scored. Its layout is written and read here only; ``runtime.artifacts`` knows the
folder's kind by ``train.json`` (or, from older versions, ``estimator.pkl`` with
``model.onnx``) so that ``--overwrite`` replaces a training run only by another.
"""

from __future__ import annotations

import json
import logging
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..runtime.artifacts import TRAIN_INFO_FILE

#: The version of ``train.json`` written here (folders written before it have none: 0).
TRAINING_RUN_FORMAT = 1

ESTIMATOR_FILE = "estimator.pkl"
ONNX_FILE = "model.onnx"
CALIBRATION_FILE = "calibration.npy"
#: Labels of the calibration rows: ``compile --from`` guards accuracy with them.
CALIBRATION_LABELS_FILE = "calibration_labels.npy"
TEST_X_FILE, TEST_Y_FILE = "test_x.npy", "test_y.npy"
OUTPUT_SPEC_FILE = "output_spec.json"
STANDARDIZER_FILE = "standardizer.json"


def write_training_run(
    folder: Path,
    estimator: Any,
    split: tuple[Any, Any, Any, Any],
    info: dict[str, Any],
) -> None:
    """Write a fitted estimator's training run into an (empty, new) ``folder``.

    ``split`` is ``(x_train, x_test, y_train, y_test)``; ``info`` goes into ``train.json``
    beside the module's accumulator budget and widths (the task, the data's source and column
    names, the fit time and the test score).
    """
    x_tr, x_te, y_tr, y_te = split
    (folder / ESTIMATOR_FILE).write_bytes(pickle.dumps(estimator))
    estimator.export_onnx(folder / ONNX_FILE)
    for name, arr in ((CALIBRATION_FILE, x_tr), (TEST_X_FILE, x_te), (TEST_Y_FILE, y_te)):
        np.save(folder / name, np.asarray(arr), allow_pickle=False)
    labels = np.asarray(y_tr)
    np.save(
        folder / CALIBRATION_LABELS_FILE,
        labels.astype(str) if labels.dtype == object else labels,
        allow_pickle=False,
    )
    (folder / OUTPUT_SPEC_FILE).write_text(json.dumps(estimator.output_spec_.to_dict()))
    # The network was trained on standardized rows: the compiled model's client repeats it.
    (folder / STANDARDIZER_FILE).write_text(json.dumps(estimator.standardizer_.to_dict()))
    module = estimator.module_
    record = {"format": TRAINING_RUN_FORMAT, **info, "n_accum_bits": int(module.n_accum_bits)}
    if hasattr(module, "channels"):  # a convolutional network: its bound is per layer
        record["input_shape"] = list(module.input_shape)
        record["channels"] = list(module.channels)
        record["max_active_weights"] = [
            module.max_active_weights(i) for i in range(len(module.masked_layers()))
        ]
    else:
        record["max_active_neurons"] = module.max_active_neurons()
        record["hidden_widths"] = module.hidden_widths()
    (folder / TRAIN_INFO_FILE).write_text(json.dumps(record, indent=2))


@dataclass(frozen=True)
class TrainingRun:
    """A training run's folder, as ``compile --from`` reads it (see :meth:`open`).

    Attributes:
        folder: the folder.
        info: ``train.json`` as a dict; ``None`` when the folder has none (older folders) or
            it is not a JSON object.
        info_error: why ``train.json`` could not be read (``None``: it could, or is absent).
    """

    folder: Path
    info: dict[str, Any] | None = field(default=None, repr=False)
    info_error: str | None = None

    @classmethod
    def open(cls, folder: str | Path) -> TrainingRun:
        """The run in ``folder`` (which must be a folder); ``train.json`` is read once, here."""
        folder = Path(folder)
        info_path = folder / TRAIN_INFO_FILE
        if not info_path.is_file():
            return cls(folder)
        try:
            info = json.loads(info_path.read_text())
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            return cls(folder, None, f"{info_path} is not valid JSON: {exc}")
        return cls(folder, info if isinstance(info, dict) else None)

    @property
    def onnx(self) -> Path:
        return self.folder / ONNX_FILE

    @property
    def calibration(self) -> Path:
        return self.folder / CALIBRATION_FILE

    @property
    def output_spec(self) -> Path:
        return self.folder / OUTPUT_SPEC_FILE

    @property
    def standardizer(self) -> Path | None:
        """The standardizer file; ``None`` for folders written before standardization existed
        (their network takes the rows as they are)."""
        path = self.folder / STANDARDIZER_FILE
        return path if path.is_file() else None

    @property
    def calibration_labels(self) -> Path | None:
        """The calibration rows' labels; ``None`` when the folder has none."""
        path = self.folder / CALIBRATION_LABELS_FILE
        return path if path.is_file() else None

    def feature_names(self) -> tuple[str, ...] | None:
        """The feature columns' names the run recorded (a CSV header), else ``None``."""
        names = None if self.info is None else self.info.get("feature_names")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            return None
        if len(set(names)) != len(names):
            return None  # a header that repeats a name cannot find columns by name
        return tuple(names)

    def n_accum_bits(self) -> tuple[int | None, str]:
        """The accumulator budget the run was trained for, and where it was found.

        ``train.json`` records it; folders written before it did fall back to the pickled
        estimator's module.

        Raises:
            InvalidInputError: ``train.json`` is there but is not valid JSON.
        """
        from ..errors import InvalidInputError

        if self.info_error is not None:
            raise InvalidInputError(self.info_error)
        bits = None if self.info is None else self.info.get("n_accum_bits")
        if isinstance(bits, int) and not isinstance(bits, bool):
            return bits, f"the trained module's, from {self.folder / TRAIN_INFO_FILE}"
        pickled = self.folder / ESTIMATOR_FILE
        if pickled.is_file():
            try:
                bits = pickle.loads(pickled.read_bytes()).module_.n_accum_bits
            except Exception as exc:  # an old or foreign pickle: no budget rather than a crash
                logging.getLogger(__name__).info("no n_accum_bits in %s: %s", pickled, exc)
            else:
                return int(bits), f"the trained module's, from {pickled} (older folder)"
        return None, f"{self.folder} records no n_accum_bits"
