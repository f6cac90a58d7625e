"""The estimators' training recipe, built on skorch.

skorch runs the loop (batches, validation split, history, callbacks); we add what a sparse
quantized network needs around it:

- the pruning masks follow the weights (re-chosen in every training forward pass) until
  ``mask_freeze_fraction`` of ``max_epochs``, then stay fixed so the last epochs fine-tune one
  topology (``mask_updates="fixed"`` freezes them from the start, as the reference does);
- AdamW with a linear warm-up then cosine decay of the learning rate, stepped every batch;
- Gaussian noise on the inputs of each training batch (``TrainingConfig.input_noise``);
- early stopping on the validation loss, the best epoch restored. The restored state dict holds
  the dense weights *and* the masks of that epoch (``weight_mask`` buffers), so the restored
  network is the one that was scored and still keeps every neuron within
  ``max_active_neurons()``; ``make_pruning_permanent`` then folds exactly those masks in. With
  ``select_after_freeze`` only epochs after the masks froze compete, so the kept network has
  its final topology and a decayed learning rate (off by default: see
  ``benchmarks/results/accuracy.md`` for what it measured).
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from skorch import NeuralNet
from skorch.callbacks import Callback, EarlyStopping, LRScheduler
from skorch.dataset import ValidSplit
from skorch.history import History
from torch import nn
from tqdm.auto import tqdm

from ..interrupts import STOP_SIGNALS, interrupted_before
from .sparse_base import SparseQuantBase
from .training import TrainingConfig, _warmup_cosine, add_input_noise

logger = logging.getLogger(__name__)


@dataclass
class FitResult:
    """What :func:`fit_with_skorch` hands back."""

    module: nn.Module
    history: History
    best_epoch: int


class _MaskSchedule(Callback):
    """Freeze the pruning masks at the start of epoch ``freeze_epoch + 1`` (1-based)."""

    def __init__(self, freeze_epoch: int) -> None:
        self.freeze_epoch = freeze_epoch

    def on_epoch_begin(self, net: NeuralNet, **kwargs: Any) -> None:
        if len(net.history) > self.freeze_epoch and not net.module_.pruning_masks_frozen:
            net.module_.freeze_pruning_masks()
            logger.debug("pruning masks frozen at epoch %d", len(net.history))


class _EarlyStoppingAfter(EarlyStopping):
    """skorch's EarlyStopping, blind to the first ``start_epoch`` epochs.

    While brevitas' activation quantizers still calibrate from statistics, their learned scale
    is not yet in the state dict: a snapshot from then could not be restored into the trained
    network, and its score says little anyway.
    """

    def __init__(self, start_epoch: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.start_epoch = start_epoch

    def on_epoch_end(self, net: NeuralNet, **kwargs: Any) -> None:
        if len(net.history) > self.start_epoch:
            super().on_epoch_end(net, **kwargs)


class _StopAfterCtrlC(Callback):
    """End training at the next epoch once a Ctrl-C was seen.

    An interrupt that lands inside one of torch's lazy imports can be swallowed there, and
    training went on to the last epoch (measured: 1 run in 3 around the first steps)."""

    def __init__(self, seen: dict[str, bool]) -> None:
        self.seen = seen

    def on_epoch_end(self, net: NeuralNet, **kwargs: Any) -> None:
        # Also one the command-line tool recorded before training began (interrupts.py).
        if self.seen["ctrl_c"] or interrupted_before():
            raise KeyboardInterrupt


class _Net(NeuralNet):
    """skorch's ``NeuralNet``, with Gaussian noise added to the inputs of each training batch.

    Noise of standard deviation ``input_noise`` (in units of the standardized features) is
    added to a copy of the batch, never to the data, and only in training steps: validation and
    scoring see the rows as they are (see ``TrainingConfig.input_noise``). What the network
    learns from the noisy batches includes its input quantizer's scale.
    """

    def __init__(self, *args: Any, input_noise: float = 0.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.input_noise = input_noise

    def train_step_single(self, batch: Any, **fit_params: Any) -> dict[str, Any]:
        if self.input_noise:
            x, y = batch
            batch = (add_input_noise(x, self.input_noise), y)
        return super().train_step_single(batch, **fit_params)


class _Progress(Callback):
    """A progress bar on stderr, one tick per epoch."""

    def on_train_begin(self, net: NeuralNet, **kwargs: Any) -> None:
        self.bar_ = tqdm(total=net.max_epochs, desc="training", unit="epoch", leave=False)

    def on_epoch_end(self, net: NeuralNet, **kwargs: Any) -> None:
        row = net.history[-1]
        postfix = {"loss": f"{row['train_loss']:.4f}"}
        if "valid_loss" in row:
            postfix["valid"] = f"{row['valid_loss']:.4f}"
        self.bar_.set_postfix(postfix)
        self.bar_.update(1)

    def on_train_end(self, net: NeuralNet, **kwargs: Any) -> None:
        self.bar_.close()


@contextlib.contextmanager
def _noticing_ctrl_c(seen: dict[str, bool]) -> Iterator[dict[str, bool]]:
    """Record whether a real Ctrl-C (SIGINT), or a stop signal (SIGTERM, SIGHUP) that the
    application turns into ``KeyboardInterrupt``, arrives while the block runs.

    skorch catches ``KeyboardInterrupt`` inside ``fit`` and returns as if training had ended:
    that is how its ``EarlyStopping`` stops, and its convenience for notebooks. Our ``fit``
    would then restore, prune and save the half-trained network as a finished model (measured
    with ``fheqnn train``: exit 0 with R2 0.24 instead of 0.27, or a crash later on a module
    whose import the interrupt had cut short). A signal, unlike an early stop, is noticed here
    so that ``fit`` can raise it again. Outside the main thread no handler can be installed
    (and no Ctrl-C arrives): nothing is recorded.
    """
    if threading.current_thread() is not threading.main_thread():
        yield seen  # no handler can be installed, and no signal arrives, off the main thread
        return
    # SIG_DFL ends the process and SIG_IGN ignores the signal: nothing for skorch to swallow.
    # A handler installed outside Python (None) is left alone too.
    previous = {
        signum: handler for signum in STOP_SIGNALS if callable(handler := signal.getsignal(signum))
    }

    def handler(signum: int, frame: Any) -> None:
        # The application's own handler decides (Python's raises KeyboardInterrupt at SIGINT;
        # the command-line tool's raises it at SIGTERM too); only an interrupt it raises is
        # recorded, so a handler that merely sets a flag keeps working.
        try:
            previous[signum](signum, frame)
        except KeyboardInterrupt as exc:
            seen["ctrl_c"] = True
            seen.setdefault("stop", exc)
            raise

    for signum in previous:
        signal.signal(signum, handler)
    try:
        yield seen
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def _can_split(y: np.ndarray, fraction: float, stratify: bool) -> bool:
    """Whether a (stratified) validation split of ``fraction`` leaves both parts usable."""
    n_rows = len(y)
    n_valid = math.ceil(fraction * n_rows)
    if n_valid < 1 or n_rows - n_valid < 2:
        return False
    if not stratify:
        return n_valid >= 2
    _, counts = np.unique(y, return_counts=True)
    return bool(counts.min() >= 2 and n_valid >= len(counts) and n_rows - n_valid >= len(counts))


def fit_with_skorch(
    module: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    loss_fn: nn.Module,
    config: TrainingConfig,
    *,
    seed: int,
    validation_fraction: float | None,
    patience: int,
    stratify: bool,
    callbacks: list[Any],
) -> FitResult:
    """Train ``module`` with skorch; restore the best epoch; make pruning permanent.

    Args:
        module: a freshly built network (pruning enabled by its constructor); any other torch
            module (the benchmark's float baseline) is trained as is, without the pruning and
            calibration steps.
        x: standardized inputs, float32, shape ``(n_rows, n_features)``.
        y: class indices (int64) or standardized targets (float32, 2-D).
        loss_fn: the criterion instance.
        config: the estimator's hyper-parameters.
        seed: seeds the validation split (shuffling uses torch's seeded global generator).
        validation_fraction: rows held out for early stopping; ``None`` or 0 trains on every
            row for ``max_epochs`` and keeps the last epoch. Too few rows (or a class with fewer
            than 2) for a split: same, with a log message.
        patience: epochs without a better validation loss before stopping.
        stratify: stratified split (classifiers).
        callbacks: extra skorch callbacks, run after ours.

    Returns:
        The trained module (pruning permanent, eval mode), skorch's history and the epoch kept.
    """
    sparse = isinstance(module, SparseQuantBase)
    if sparse and config.mask_updates == "fixed":
        module.freeze_pruning_masks()
    if sparse:
        module.set_straight_through_masks(config.straight_through_masks)
    validate = _use_validation(y, validation_fraction, stratify)
    schedule = _Schedule.of(config, len(y), validation_fraction if validate else None)
    if sparse:
        module.set_calibration_steps(schedule.calibration_steps)
    seen = {"ctrl_c": False}
    ours, early = _our_callbacks(config, schedule, sparse, validate, patience, seen)
    net = _Net(
        module=module,
        input_noise=config.input_noise,
        criterion=loss_fn,
        optimizer=torch.optim.AdamW,
        optimizer__weight_decay=config.weight_decay,
        lr=config.lr,
        max_epochs=config.max_epochs,
        batch_size=config.batch_size,
        iterator_train__shuffle=True,
        train_split=(
            ValidSplit(float(validation_fraction), stratified=stratify, random_state=seed)
            if validate
            else None
        ),
        callbacks=ours + list(callbacks),
        callbacks__print_log=None,
        verbose=0,
        device="cpu",
    )
    _fit_one_thread(net, x, y, seen)
    return _kept(net, early)


def _use_validation(y: np.ndarray, validation_fraction: float | None, stratify: bool) -> bool:
    """Whether to hold out ``validation_fraction`` of the rows for early stopping (said in the
    log when the fraction was asked for but the rows are too few)."""
    validate = bool(validation_fraction) and _can_split(y, float(validation_fraction), stratify)
    if validation_fraction and not validate:
        logger.info(
            "too few rows (%d) for a %.0f %% validation split: training without early stopping",
            len(y),
            100 * validation_fraction,
        )
    return validate


@dataclass(frozen=True)
class _Schedule:
    """The training's length in optimizer steps, and the epochs at which things change."""

    total_steps: int
    calibration_steps: int
    freeze_epoch: int
    selection_start: int

    @classmethod
    def of(
        cls, config: TrainingConfig, n_rows: int, validation_fraction: float | None
    ) -> _Schedule:
        """``validation_fraction``: the rows held out (``None``: none)."""
        held_out = math.ceil(validation_fraction * n_rows) if validation_fraction else 0
        steps_per_epoch = max(1, math.ceil((n_rows - held_out) / config.batch_size))
        total_steps = config.max_epochs * steps_per_epoch
        # Activation scales: statistics for the first tenth of training at most, then learned.
        calibration_steps = min(300, max(1, total_steps // 10))
        calibration_epochs = math.ceil(calibration_steps / steps_per_epoch)
        freeze_epoch = math.ceil(config.mask_freeze_fraction * config.max_epochs)
        # Only epochs with the final topology (masks frozen) and a decayed learning rate compete
        # for "best": an earlier snapshot would be a network whose masks were still moving,
        # trained at a high learning rate, which the schedule meant to fine-tune further.
        selection_start = calibration_epochs
        if config.mask_updates == "dynamic" and config.select_after_freeze:
            selection_start = max(calibration_epochs, min(freeze_epoch, config.max_epochs - 1))
        return cls(total_steps, calibration_steps, freeze_epoch, selection_start)


def _our_callbacks(
    config: TrainingConfig,
    schedule: _Schedule,
    masks: bool,
    validate: bool,
    patience: int,
    seen: dict[str, bool],
) -> tuple[list[tuple[str, Callback]], _EarlyStoppingAfter | None]:
    """The recipe's skorch callbacks (the learning-rate schedule, the mask schedule when
    ``masks``, early stopping when ``validate``, the Ctrl-C check, the progress bar), and the
    early stopping one."""
    ours: list[tuple[str, Callback]] = [
        (
            "lr_schedule",
            LRScheduler(
                policy=torch.optim.lr_scheduler.LambdaLR,
                lr_lambda=_warmup_cosine(schedule.total_steps),
                step_every="batch",
            ),
        ),
    ]
    if masks:
        ours.append(("mask_schedule", _MaskSchedule(schedule.freeze_epoch)))
    early: _EarlyStoppingAfter | None = None
    if validate:
        early = _EarlyStoppingAfter(
            start_epoch=schedule.selection_start,
            monitor="valid_loss",
            patience=patience,
            load_best=True,
            sink=logger.info,
        )
        ours.append(("early_stopping", early))
    ours.append(("stop_after_ctrl_c", _StopAfterCtrlC(seen)))
    if config.verbose:
        ours.append(("progress", _Progress()))
    return ours, early


def _fit_one_thread(net: NeuralNet, x: np.ndarray, y: np.ndarray, seen: dict[str, bool]) -> None:
    """``net.fit(x, y)`` on one torch thread; a Ctrl-C seen meanwhile is raised again."""
    # These networks are tiny (batches of 64 rows, a few hundred neurons): thread hand-offs cost
    # more than they save, and on a busy 2-core machine 2 intra-op threads made a step ~10x
    # slower (measured 180-300 ms vs 15 ms). Restored afterwards.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with _noticing_ctrl_c(seen):
            net.fit(x, y)
    except Exception:
        # An interrupt that lands in one of torch's lazy imports leaves that module half made;
        # the next use fails (ValueError, AttributeError, measured): the cause is the Ctrl-C.
        if seen["ctrl_c"]:
            raise seen.get("stop", KeyboardInterrupt()) from None
        raise
    finally:
        torch.set_num_threads(threads)
    if seen["ctrl_c"]:
        raise seen.get("stop", KeyboardInterrupt())


def _kept(net: NeuralNet, early: _EarlyStoppingAfter | None) -> FitResult:
    """The trained module (the best epoch's, restored by early stopping), pruning made
    permanent (a sparse network), in eval mode."""
    trained = net.module_
    best_epoch = len(net.history)
    if early is not None and early.best_model_weights_ is not None:
        best_epoch = int(early.best_epoch_)
    if isinstance(trained, SparseQuantBase):
        trained.make_pruning_permanent()
    trained.eval()
    logger.info(
        "trained %d epochs, kept epoch %d (train loss %.4f)",
        len(net.history),
        best_epoch,
        net.history[best_epoch - 1, "train_loss"],
    )
    return FitResult(module=trained, history=net.history, best_epoch=best_epoch)
