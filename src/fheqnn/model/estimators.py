"""scikit-learn estimators around :class:`SparseQuantNeuralNetwork`.

``NeuralNetClassifier`` and ``NeuralNetRegressor`` follow scikit-learn's contract: ``__init__``
only stores parameters, ``fit`` returns ``self``, learned state ends in ``_``, ``clone`` and
``GridSearchCV`` work, and ``random_state`` makes a run reproducible. Network parameters are
spelled ``module__<name>`` as in the reference implementation; ``input_dim`` and ``n_outputs``
are inferred from the data in ``fit``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.exceptions import NotFittedError as SklearnNotFittedError
from sklearn.preprocessing import LabelEncoder
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import nn

from ..contract import FeatureRange, Standardizer
from ..errors import InvalidInputError, InvalidParameterError, NotFittedError
from ..validation import check_choice, check_features, check_int, check_number
from .memory import check_training_fits
from .qnn_module import MAX_BITWIDTH_BACKWARD_COMPATIBLE, SparseQuantNeuralNetwork
from .training import TrainingConfig
from .training_recipe import fit_with_skorch

logger = logging.getLogger(__name__)

_MODULE_PREFIX = "module__"
_MASK_UPDATES = ("dynamic", "fixed")
_WEIGHT_QUANTS = ("topk", "a2q", "a2q+")


def _network_class(weight_quant: str) -> type[SparseQuantNeuralNetwork]:
    """The network built for ``weight_quant``: top-k pruning, or brevitas' A2Q / A2Q+."""
    if weight_quant == "topk":
        return SparseQuantNeuralNetwork
    from .a2q_module import A2QNeuralNetwork, A2QPlusNeuralNetwork

    return A2QNeuralNetwork if weight_quant == "a2q" else A2QPlusNeuralNetwork


class EstimatorNotFittedError(NotFittedError, SklearnNotFittedError):
    """The estimators' "fit (or compile) first": fheqnn's :class:`NotFittedError` and
    scikit-learn's at once, so code written for any scikit-learn estimator (``except
    sklearn.exceptions.NotFittedError``) catches it too. (``fheqnn.errors`` itself does not
    import scikit-learn, which encryption clients never load.)"""


def _auto_or_number(
    name: str, value: Any, auto: Any, expected: str, *, high: float | None = None, **bounds: Any
) -> Any:
    """``auto`` if ``value`` is the string "auto", else ``value`` checked as a number >= 0."""
    if isinstance(value, str) and value == "auto":
        return auto
    try:
        return check_number(name, value, 0.0, high, **bounds)
    except InvalidParameterError as exc:
        raise InvalidParameterError(f"{name} must be {expected}, got {value!r}") from exc


class _SparseQuantNetEstimator(BaseEstimator):
    """Shared parameters, validation and training of the two estimators."""

    def __init__(
        self,
        module__n_layers: int = 3,
        module__n_hidden_neurons_multiplier: int = 4,
        module__n_w_bits: int = 3,
        module__n_a_bits: int = 3,
        module__n_accum_bits: int = MAX_BITWIDTH_BACKWARD_COMPATIBLE,
        module__n_prune_neurons_percentage: float = 0.0,
        module__activation_function: type = nn.ReLU,
        module__quant_narrow: bool = False,
        module__quant_signed: bool = True,
        max_epochs: int = 200,
        lr: float = 0.01,
        batch_size: int = 64,
        weight_decay: float = 0.1,
        mask_updates: str = "dynamic",
        mask_freeze_fraction: float = 0.7,
        straight_through_masks: bool = True,
        select_after_freeze: bool = False,
        weight_quant: str = "topk",
        input_noise: float | str = "auto",
        validation_fraction: float | str | None = "auto",
        patience: int = 30,
        callbacks: list[Any] | None = None,
        verbose: int = 1,
        random_state: int | None = None,
    ) -> None:
        self.module__n_layers = module__n_layers
        self.module__n_hidden_neurons_multiplier = module__n_hidden_neurons_multiplier
        self.module__n_w_bits = module__n_w_bits
        self.module__n_a_bits = module__n_a_bits
        self.module__n_accum_bits = module__n_accum_bits
        self.module__n_prune_neurons_percentage = module__n_prune_neurons_percentage
        self.module__activation_function = module__activation_function
        self.module__quant_narrow = module__quant_narrow
        self.module__quant_signed = module__quant_signed
        self.max_epochs = max_epochs
        self.lr = lr
        self.batch_size = batch_size
        self.weight_decay = weight_decay
        self.mask_updates = mask_updates
        self.mask_freeze_fraction = mask_freeze_fraction
        self.straight_through_masks = straight_through_masks
        self.select_after_freeze = select_after_freeze
        self.weight_quant = weight_quant
        self.input_noise = input_noise
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.callbacks = callbacks
        self.verbose = verbose
        self.random_state = random_state

    # scikit-learn reads "a__b" as parameter "b" of a nested estimator "a"; our "module__*"
    # names are flat attributes, so they are set directly.
    def set_params(self, **params: Any) -> _SparseQuantNetEstimator:
        valid = self.get_params(deep=False)
        for key, value in params.items():
            if key not in valid:
                raise InvalidParameterError(
                    f"invalid parameter {key!r} for {type(self).__name__}; "
                    f"valid parameters are: {sorted(valid)}"
                )
            setattr(self, key, value)
        return self

    def __getstate__(self) -> dict[str, Any]:
        # A compiled circuit lives in Concrete's runtime and does not pickle: save it with
        # fhe_model_.save(folder) instead; a pickled estimator comes back uncompiled.
        state = dict(self.__dict__)
        if state.get("fhe_model_") is not None:
            state["fhe_model_"] = None
        return state

    # ------------------------------------------------------------------ helpers
    def module_params(self) -> dict[str, Any]:
        """The ``module__*`` parameters without their prefix."""
        return {
            key[len(_MODULE_PREFIX) :]: value
            for key, value in self.get_params(deep=False).items()
            if key.startswith(_MODULE_PREFIX)
        }

    #: What ``validation_fraction="auto"`` and ``input_noise="auto"`` mean for this estimator
    #: (see the class docstrings).
    _auto_validation_fraction: float | None = None
    _auto_input_noise: float = 0.0

    def _validation_fraction(self) -> float | None:
        """The validation share in force: ``None`` (train on every row) or a number in [0, 1)."""
        if self.validation_fraction is None:
            return None
        return _auto_or_number(
            "validation_fraction",
            self.validation_fraction,
            self._auto_validation_fraction,
            "'auto', None or a number in [0, 1)",
            high=1.0,
            high_open=True,
        )

    def _input_noise(self) -> float:
        """The input noise in force (standard deviation, in units of standardized features)."""
        return _auto_or_number(
            "input_noise", self.input_noise, self._auto_input_noise, "'auto' or a number >= 0"
        )

    def _training_config(self) -> TrainingConfig:
        self._validation_fraction()
        check_int("patience", self.patience, 1)
        if self.callbacks is not None and not isinstance(self.callbacks, list | tuple):
            raise InvalidParameterError(
                f"callbacks must be None or a list of skorch callbacks, got {self.callbacks!r}"
            )
        return TrainingConfig(
            max_epochs=check_int("max_epochs", self.max_epochs, 1),
            lr=check_number("lr", self.lr, 0.0, low_open=True),
            batch_size=check_int("batch_size", self.batch_size, 1),
            weight_decay=check_number("weight_decay", self.weight_decay, 0.0),
            mask_updates=check_choice("mask_updates", self.mask_updates, _MASK_UPDATES),
            mask_freeze_fraction=check_number(
                "mask_freeze_fraction", self.mask_freeze_fraction, 0.0, 1.0
            ),
            straight_through_masks=bool(self.straight_through_masks),
            select_after_freeze=bool(self.select_after_freeze),
            input_noise=self._input_noise(),
            verbose=bool(self.verbose),
        )

    def _seed(self) -> int:
        if self.random_state is None:
            return int(np.random.default_rng().integers(0, 2**31 - 1))
        return check_int("random_state", self.random_state)

    def _validate_x(self, X: Any, *, reset: bool) -> np.ndarray:
        try:
            return validate_data(self, X, reset=reset, dtype=np.float64, ensure_min_samples=1)
        except ValueError as exc:
            raise InvalidInputError(f"invalid X: {exc}") from exc

    def _validate_xy(self, X: Any, y: Any, *, y_numeric: bool) -> tuple[np.ndarray, np.ndarray]:
        try:
            return validate_data(
                self,
                X,
                y,
                dtype=np.float64,
                multi_output=True,
                y_numeric=y_numeric,
                ensure_min_samples=2,
            )
        except ValueError as exc:
            raise InvalidInputError(f"invalid X or y: {exc}") from exc

    def _check_fitted(self) -> None:
        try:
            check_is_fitted(self, "module_")
        except Exception as exc:  # sklearn's NotFittedError
            raise EstimatorNotFittedError(
                f"this {type(self).__name__} is not fitted yet: call fit(X, y) first"
            ) from exc

    @contextlib.contextmanager
    def _all_or_nothing(self) -> Iterator[None]:
        """A ``fit`` that fails or is interrupted (Ctrl-C) leaves the estimator as it was.

        ``fit`` sets the standardization and the classes before training; without this, a
        refit interrupted mid-training kept the old network with the new data's
        standardization and labels, and predicted wrong answers without an error.
        """
        before = dict(self.__dict__)
        try:
            yield
        except BaseException:
            self.__dict__.clear()
            self.__dict__.update(before)
            raise

    def _fit_module(
        self, x: np.ndarray, y: torch.Tensor, n_outputs: int, loss_fn: Any, stratify: bool
    ) -> None:
        config = self._training_config()
        seed = self._seed()
        params = self.module_params()
        build = self._module_builder(x, n_outputs, params, config.batch_size)
        self._learn_input_scaling(x)
        x_std = self._standardize(x)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            module = build()
            result = fit_with_skorch(
                module,
                x_std.astype(np.float32),
                y.numpy(),
                loss_fn,
                config,
                seed=seed,
                validation_fraction=self._validation_fraction(),
                patience=int(self.patience),
                stratify=stratify,
                callbacks=list(self.callbacks or []),
            )
        self.module_ = result.module
        self.history_ = result.history
        self.best_epoch_ = result.best_epoch
        self.fhe_model_ = None

    def _module_builder(
        self, x: np.ndarray, n_outputs: int, params: dict[str, Any], batch_size: int
    ) -> Any:
        """A function that builds the untrained network; the parameters and the memory the
        training needs are checked first, before the rows are copied or the module is built."""
        network = _network_class(check_choice("weight_quant", self.weight_quant, _WEIGHT_QUANTS))
        self._check_memory(x, n_outputs, params, batch_size)
        return lambda: network(input_dim=x.shape[1], n_outputs=n_outputs, **params)

    def _learn_input_scaling(self, x: np.ndarray) -> None:
        """The standardization applied to raw rows and the feature range warned about."""
        mean = x.mean(axis=0)
        scale = x.std(axis=0)
        # One quantization scale serves every input feature, so features must share a range:
        # learned here, applied in the clear before quantization (constant columns: scale 1).
        self.x_mean_ = mean
        self.x_scale_ = np.where(scale > 1e-12 * np.maximum(1.0, np.abs(mean)), scale, 1.0)
        # Rows far outside this range are warned about at prediction (see FeatureRange).
        self.feature_range_ = FeatureRange.of_rows(x)

    def _feature_rows(self, X: Any, what: str = "X") -> np.ndarray:
        """``X`` checked against the fitted input, as flat float rows (n_rows, n_features)."""
        return check_features(X, self.n_features_in_, what=what)

    @staticmethod
    def _check_memory(
        x: np.ndarray, n_outputs: int, params: dict[str, Any], batch_size: int
    ) -> None:
        """Refuse a network whose training cannot fit in memory, before the rows are copied
        or the module is built (:func:`~fheqnn.model.memory.check_training_fits`)."""
        n_layers = params.get("n_layers", 3)
        multiplier = params.get("n_hidden_neurons_multiplier", 4)
        check_int("n_layers", n_layers, 1)
        check_number("n_hidden_neurons_multiplier", multiplier, 0, low_open=True)
        check_training_fits(
            x.shape[1],
            n_layers,
            n_outputs,
            multiplier,
            batch_size=batch_size,
            n_rows=len(x),
            multiplier_name="module__n_hidden_neurons_multiplier (--multiplier)",
        )

    def _standardize(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, dtype=np.float64) - self.x_mean_) / self.x_scale_

    @property
    def output_spec_(self) -> Any:
        """What the network's outputs mean (:class:`~fheqnn.contract.OutputSpec`: the classes,
        or one value), as a compiled model's client decodes them. Set by ``fit``."""
        self._check_fitted()
        return self._output_spec()

    @property
    def standardizer_(self) -> Standardizer:
        """The per-feature standardization learned in ``fit``, as a compiled model's client
        applies it to raw rows (:class:`~fheqnn.contract.Standardizer`)."""
        return Standardizer(*self._input_standardization())

    def training_config(self) -> TrainingConfig:
        """The training configuration these parameters give (validated), as ``fit`` uses it.

        Raises:
            InvalidParameterError: a training parameter out of its range.
        """
        return self._training_config()

    def _input_standardization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The per-feature standardization learned in ``fit``: ``(mean, scale)`` tuples.

        A raw row ``x`` reaches the network as ``(x - mean) / scale``; this happens in the
        clear, before input quantization, so it costs nothing under encryption.
        """
        self._check_fitted()
        return tuple(self.x_mean_.tolist()), tuple(self.x_scale_.tolist())

    def _output_spec(self) -> Any:
        raise NotImplementedError

    def _raw_outputs(self, X: Any, fhe: str | None = None) -> np.ndarray:
        """Float network outputs: torch (``fhe=None``) or the compiled model in a FHE mode."""
        self._check_fitted()
        if fhe is not None:
            # The compiled model's client contract standardizes the raw rows itself.
            return self._compiled().predict_raw(self._feature_rows(X), fhe)
        x = self._validate_x(X, reset=False)
        feature_range = getattr(self, "feature_range_", None)  # None: pickled before it existed
        if feature_range is not None:
            names = getattr(self, "feature_names_in_", None)
            feature_range.warn_outside(x, None if names is None else list(names))
        x = self._standardize(x)
        self.module_.eval()
        with torch.no_grad():
            return self.module_(torch.as_tensor(x, dtype=torch.float32)).numpy().astype(np.float64)

    def _compiled(self) -> Any:
        if getattr(self, "fhe_model_", None) is None:
            raise EstimatorNotFittedError(
                f"this {type(self).__name__} is not compiled: call compile(X) before predicting "
                "with fhe='disable', 'simulate' or 'execute'"
            )
        return self.fhe_model_

    def export_onnx(self, path: Any = None) -> Any:
        """Export the trained network to QCDQ ONNX (opset 14, dynamic batch).

        Args:
            path: file to write (atomically); ``None`` only returns the model.

        Returns:
            The ``onnx.ModelProto``.
        """
        from .export import export_module_to_onnx

        self._check_fitted()
        return export_module_to_onnx(self.module_, path)

    def compile(self, X: Any, y: Any = None, **compile_options: Any) -> _SparseQuantNetEstimator:
        """Compile the trained network to a Concrete circuit, calibrated on rows ``X``.

        The network goes through its ONNX export and our compiler (``fheqnn.compile_onnx``),
        with ``n_accum_bits`` taken from the module; ``compile_options`` are passed on
        (``rounding``, ``rounding_exact``, ``p_error``, ``strict``, ...). With labels ``y``
        the rounding guard keeps the calibration accuracy (R2) of the unrounded network within
        ``max_accuracy_loss``. The result is ``fhe_model_``; its bit-width report is
        ``fhe_model_.report``.

        Returns:
            self.
        """
        from ..compiler.api import compile_onnx
        from ..compiler.options import CompileOptions

        self._check_fitted()
        options = CompileOptions.from_kwargs(
            **{"n_accum_bits": self.module_.n_accum_bits, **compile_options}
        )
        x = self._feature_rows(X, what="calibration inputs")
        # The learned standardization becomes part of the client contract: the compiled model
        # takes raw rows, like the estimator, and standardizes them on the client.
        self.fhe_model_ = compile_onnx(
            self.export_onnx(),
            x,
            options=options,
            output_spec=self.output_spec_,
            standardizer=self.standardizer_,
            calibration_labels=y,
        )
        return self


class NeuralNetClassifier(ClassifierMixin, _SparseQuantNetEstimator):
    """A sparse quantized MLP classifier trained with quantization-aware training.

    Accepts any class labels (strings included); the network has one output per class and is
    trained with cross-entropy. Parameters are documented on :class:`SparseQuantNeuralNetwork`
    (``module__*``), :class:`~fheqnn.model.training.TrainingConfig` (the optimizer and mask
    schedule) and :func:`~fheqnn.model.training_recipe.fit_with_skorch` (``validation_fraction``:
    rows held out, stratified, for early stopping on the validation loss with the best epoch
    restored; ``None`` trains on every row for ``max_epochs`` and keeps the last epoch;
    ``"auto"``, the default, is ``None``, which measured better at the seed's sizes: see
    ``benchmarks/results/accuracy.md``;
    ``patience``: epochs without improvement before
    stopping; ``select_after_freeze``: only epochs after the masks froze compete for "best";
    ``callbacks``: extra skorch callbacks; ``input_noise``: standard deviation of the Gaussian
    noise added to the standardized inputs of each training batch, a regularizer; ``"auto"``,
    the default, is 0.3 for the classifier, which raised compiled accuracy on cross-validation
    of breast cancer, wine and digits and stayed within a row on iris). ``weight_quant``
    chooses how accumulators are kept within ``module__n_accum_bits``: ``"topk"`` (the seed's
    pruning: at most ``max_active_neurons()`` non-zero weights per neuron), ``"a2q"`` or
    ``"a2q+"`` (brevitas' accumulator-aware quantizers: a bounded L1 norm of each neuron's
    integer weights, no pruning; see :mod:`fheqnn.model.a2q_module`). Raw features are fine:
    a per-feature standardization is learned in ``fit`` and applied before the network.

    Attributes:
        classes_: the class labels, sorted.
        module_: the trained :class:`SparseQuantNeuralNetwork` (pruning made permanent).
        history_: skorch's ``History``, one dict per epoch (``epoch``, ``train_loss``,
            ``valid_loss`` when validating, ``dur``, ...).
        best_epoch_: the epoch whose weights were kept (lowest validation loss; the last epoch
            without validation).
        x_mean_, x_scale_: the input standardization learned in ``fit``, shape (n_features,).
        feature_range_: each feature's range in the training rows (:class:`FeatureRange`);
            prediction warns (``InputRangeWarning``) about rows far outside it.
        n_features_in_: number of features seen in ``fit``.
    """

    _auto_input_noise = 0.3

    def fit(self, X: Any, y: Any) -> NeuralNetClassifier:
        """Train on ``X`` (n_rows, n_features) and labels ``y`` (n_rows,); return ``self``.

        If training fails or is interrupted, the estimator is left as it was before."""
        with self._all_or_nothing():
            return self._fit_classifier(X, y)

    def _fit_classifier(self, X: Any, y: Any) -> NeuralNetClassifier:
        x, y_arr = self._validate_xy(X, y, y_numeric=False)
        if y_arr.ndim != 1:
            raise InvalidInputError(f"y must be 1-D class labels, got shape {y_arr.shape}")
        try:
            check_classification_targets(y_arr)
        except ValueError as exc:
            raise InvalidInputError(f"invalid y: {exc}") from exc
        encoder = LabelEncoder().fit(y_arr)
        if len(encoder.classes_) < 2:
            raise InvalidInputError(
                f"y has {len(encoder.classes_)} class ({encoder.classes_!r}); "
                "a classifier needs at least 2"
            )
        self.classes_ = encoder.classes_
        targets = torch.as_tensor(encoder.transform(y_arr), dtype=torch.int64)
        self._fit_module(x, targets, len(self.classes_), nn.CrossEntropyLoss(), stratify=True)
        return self

    def _output_spec(self) -> Any:
        from ..contract import OutputSpec

        return OutputSpec(kind="classifier", classes=tuple(self.classes_.tolist()))

    def decision_function(self, X: Any, fhe: str | None = None) -> np.ndarray:
        """Raw network outputs (logits), shape (n_rows, n_classes).

        ``fhe``: ``None`` runs the torch module; ``"disable"`` (integer interpreter),
        ``"simulate"`` or ``"execute"`` (real encryption) run the compiled model.
        """
        return self._raw_outputs(X, fhe)

    def predict_proba(self, X: Any, fhe: str | None = None) -> np.ndarray:
        """Class probabilities (softmax of the logits), shape (n_rows, n_classes)."""
        from ..contract import softmax

        return softmax(self._raw_outputs(X, fhe))

    def predict(self, X: Any, fhe: str | None = None) -> np.ndarray:
        """Predicted class labels, shape (n_rows,); ``fhe`` as in ``decision_function``."""
        logits = self._raw_outputs(X, fhe)
        return self.classes_[np.argmax(logits, axis=1)]


class NeuralNetRegressor(RegressorMixin, _SparseQuantNetEstimator):
    """A sparse quantized MLP regressor trained with quantization-aware training.

    Targets are standardized for training (mean 0, variance 1 per output) and mapped back in
    ``predict``; ``y`` may be 1-D or 2-D (several targets). Parameters as for
    :class:`NeuralNetClassifier` (a validation split is not stratified), but
    ``input_noise="auto"`` (the default) is 0.5: with it, training on every row for
    ``max_epochs`` (``validation_fraction="auto"``, i.e. ``None``) gave diabetes R2 0.50 mean
    over seeds and splits of its training part, against 0.47 for the previous default (15 %
    held out for early stopping, no noise), and less than half the spread between seeds
    (``benchmarks/results/accuracy.md``).

    Attributes:
        module_: the trained :class:`SparseQuantNeuralNetwork` (pruning made permanent).
        history_: skorch's ``History``, one dict per epoch (``epoch``, ``train_loss``,
            ``valid_loss`` when validating, ``dur``, ...).
        best_epoch_: the epoch whose weights were kept (lowest validation loss; the last epoch
            without validation).
        x_mean_, x_scale_: the input standardization learned in ``fit``, shape (n_features,).
        feature_range_: each feature's range in the training rows (:class:`FeatureRange`);
            prediction warns (``InputRangeWarning``) about rows far outside it.
        n_features_in_: number of features seen in ``fit``.
        y_mean_, y_scale_: the target standardization, shape (n_outputs,).
    """

    _auto_input_noise = 0.5

    def fit(self, X: Any, y: Any) -> NeuralNetRegressor:
        """Train on ``X`` (n_rows, n_features) and ``y`` (n_rows,) or (n_rows, n_targets).

        If training fails or is interrupted, the estimator is left as it was before."""
        with self._all_or_nothing():
            return self._fit_regressor(X, y)

    def _fit_regressor(self, X: Any, y: Any) -> NeuralNetRegressor:
        x, y_arr = self._validate_xy(X, y, y_numeric=True)
        y2 = np.asarray(y_arr, dtype=np.float64)
        self.y_is_1d_ = y2.ndim == 1
        y2 = y2.reshape(len(y2), -1)
        self.y_mean_ = y2.mean(axis=0)
        scale = y2.std(axis=0)
        self.y_scale_ = np.where(scale > 0, scale, 1.0)
        targets = torch.as_tensor((y2 - self.y_mean_) / self.y_scale_, dtype=torch.float32)
        self._fit_module(x, targets, y2.shape[1], nn.MSELoss(), stratify=False)
        return self

    def _output_spec(self) -> Any:
        from ..contract import OutputSpec

        return OutputSpec(
            kind="regressor",
            y_mean=tuple(self.y_mean_.tolist()),
            y_scale=tuple(self.y_scale_.tolist()),
            squeeze=self.y_is_1d_,
        )

    def predict(self, X: Any, fhe: str | None = None) -> np.ndarray:
        """Predicted values, shape (n_rows,) or (n_rows, n_targets) as ``y`` was in ``fit``.

        ``fhe``: ``None`` runs the torch module; ``"disable"``, ``"simulate"`` or ``"execute"``
        run the compiled model (see ``compile``).
        """
        out = self._raw_outputs(X, fhe) * self.y_scale_ + self.y_mean_
        return out[:, 0] if self.y_is_1d_ else out
