"""Exceptions raised by fheqnn.

Every error the library raises on purpose derives from :class:`FheqnnError`, and also from the
builtin exception a caller would expect (an invalid parameter is a ``ValueError`` too), so that
``except ValueError`` keeps working for users who do not know about this package.
"""

from __future__ import annotations


class FheqnnError(Exception):
    """Root of every exception raised on purpose by fheqnn."""


class InvalidParameterError(FheqnnError, ValueError):
    """A constructor or function argument has a value outside of what is allowed."""


class InvalidInputError(FheqnnError, ValueError):
    """Data given to fit / predict has the wrong shape, dtype, or non-finite values."""


class NotFittedError(FheqnnError, ValueError, AttributeError):
    """A method that needs a trained model was called before ``fit``.

    Same builtin bases as scikit-learn's ``NotFittedError`` (``ValueError`` and
    ``AttributeError``), without importing scikit-learn into every process that reports errors.
    """


class AccumulatorOverflowError(FheqnnError, ValueError):
    """An integer accumulator is wider than the allowed ``n_accum_bits``."""


class InvalidModelError(FheqnnError, ValueError):
    """The ONNX model cannot be read or is not a quantized MLP that fheqnn can compile."""


class UnsupportedOperatorError(InvalidModelError):
    """The ONNX graph uses an operator, or an operator form, that the compiler does not lower."""


class InsufficientMemoryError(FheqnnError, MemoryError):
    """A network too large to train in the memory available, refused before it is built."""


class InternalError(FheqnnError, RuntimeError):
    """A guarantee that fheqnn itself should uphold was broken: a bug, please report it."""


class AccuracyLossError(FheqnnError, ValueError):
    """Compile-time choices (rounding, error probability) cost more accuracy than allowed, and
    ``strict`` compilation was asked for."""


class CompileAccuracyWarning(UserWarning):
    """Compile-time choices cost agreement with the unrounded program, or calibration accuracy,
    beyond the guard's threshold (or the calibration rows are too few to tell)."""


class InputRangeWarning(UserWarning):
    """Rows given for prediction hold values far outside the range of the rows the model was
    trained (or calibrated) on: a column in other units, or columns in another order. The
    model clips its inputs to its quantization range, so such rows get an answer that says
    little about them."""
