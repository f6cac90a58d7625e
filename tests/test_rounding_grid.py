"""Per-neuron rounding grids: chosen on calibration rows, honoured by the interpreter, by
Concrete's circuit (simulated and encrypted) and by saved programs."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from fheqnn.compiler import backend
from fheqnn.compiler.ir import Elementwise, ElementwiseNode, Layer, Program, Quantizer
from fheqnn.compiler.passes import _expected_lookup_change, align_rounding_grid, lossless_round_lsbs
from fheqnn.compiler.rounding_search import choose_rounding
from fheqnn.compiler.serialize import program_from_dict, program_to_dict
from fheqnn.contract import ClientContract
from fheqnn.intervals import IntRange

RELU = Elementwise((ElementwiseNode("Relu", "relu", ("a",), "b"),), "a", "b", {})


def _steps_mid_cell_program() -> Program:
    """One hidden neuron whose output steps sit in the middle of 8-wide rounding cells.

    Accumulator ``a`` in [0, 47] (one input, weight 1); the next integer is
    ``round(a / 8 - 0.47)`` clipped to [0, 3], so it steps at a = 8, 16, 24, which are the
    centres of the cells that rounding 3 bits makes ([-4, 4), [4, 12), ...): half of each cell
    around a step lands on the wrong side. Moved by 4, the cells become [0, 8), [8, 16), ... and
    every step falls on an edge: rounding then changes nothing.
    """
    hidden = Layer(
        "h",
        np.array([[1]]),
        IntRange(0, 47),
        0,
        1 / 8,
        -0.5 + 1 / 32,  # no ties: the output is 1 from a = 8 (pre 0.53), 0 at a = 7 (0.41)
        RELU,
        Quantizer(1.0, 0, -4, 3),
    )
    out = Layer("o", np.array([[1]]), IntRange(-4, 3), 0, 1.0, 0.0, None, None)
    return Program(Quantizer(1.0, 0, 0, 47), (hidden, out))


def _random_hidden_layer(rng: np.random.Generator, n_out: int, n_in: int) -> Layer:
    """A hidden ReLU layer of 3-bit weights and inputs, random scales and biases."""
    return Layer(
        "h",
        rng.integers(-4, 4, size=(n_out, n_in)),
        IntRange(-4, 3),
        0,
        rng.uniform(0.02, 0.1, n_out),
        rng.normal(size=n_out),
        RELU,
        Quantizer(0.3, 0, -4, 3),
    )


def test_moved_grid_puts_every_step_on_a_cell_edge() -> None:
    program = _steps_mid_cell_program()
    hidden = program.layers[0]
    acc = np.arange(48).reshape(-1, 1)
    assert lossless_round_lsbs(hidden) == 0
    offsets = align_rounding_grid(hidden, acc, 3)
    np.testing.assert_array_equal(offsets, [4])
    every_input = np.arange(48).reshape(-1, 1)
    plain = program.with_rounding([3])
    moved = program.with_rounding([3], grid_offsets=[offsets])
    unrounded = program.run_integer(every_input)
    assert np.sum(plain.run_integer(every_input) != unrounded) >= 8
    np.testing.assert_array_equal(moved.run_integer(every_input), unrounded)
    # The clear addition fits the proven width: the lookup keeps 3 bits of input.
    assert moved.layers[0].circuit_bits() <= hidden.proven_range().bits
    assert moved.layers[0].lookup_bits() == plain.layers[0].lookup_bits() == 3


def test_alignment_never_does_worse_than_the_unmoved_grid_on_its_rows() -> None:
    rng = np.random.default_rng(0)
    for trial in range(6):
        n_out = 12
        hidden = _random_hidden_layer(rng, n_out, 7)
        acc = hidden.accumulate(rng.integers(-4, 4, size=(300, 7)))
        for lsbs in (2, 3, 4):
            for exact in (True, False):
                offsets = align_rounding_grid(hidden, acc, lsbs, exact)
                assert offsets.shape == (n_out,) and offsets.dtype == np.int64
                assert np.all(np.abs(offsets) < 2**lsbs)
                chosen = _expected_lookup_change(hidden, acc, lsbs, offsets, exact)
                unmoved = _expected_lookup_change(hidden, acc, lsbs, 0, exact)
                assert np.all(chosen <= unmoved + 1e-9), (trial, lsbs, exact)
                moved = replace(hidden, round_lsbs=lsbs, rounding_exact=exact, grid_offset=offsets)
                same = replace(hidden, round_lsbs=lsbs, rounding_exact=exact)
                # No wider circuit: no larger shift, and the width the proof allows.
                assert moved.shift <= same.shift
                assert moved.circuit_bits() <= hidden.proven_range().bits
    # Nothing to move without rounding.
    assert not align_rounding_grid(hidden, acc, 0).any()


def test_rounding_choice_carries_its_grid_and_can_do_without() -> None:
    program = _steps_mid_cell_program()
    calibration = np.arange(48).reshape(-1, 1)
    aligned = choose_rounding(program, calibration, target_bits=3, exact=True)
    plain = choose_rounding(program, calibration, target_bits=3, exact=True, align=False)
    assert aligned.lsbs == plain.lsbs == [3]
    np.testing.assert_array_equal(aligned.grid_offsets[0], [4])
    assert plain.grid_offsets is None
    assert aligned.agreement == 1.0 > plain.agreement
    np.testing.assert_array_equal(
        aligned.apply(program).run_integer(calibration), program.run_integer(calibration)
    )


def test_saved_programs_keep_their_grid_and_old_ones_load_unmoved() -> None:
    program = _steps_mid_cell_program().with_rounding([3], grid_offsets=[np.array([4])])
    saved = program_to_dict(program)
    # Format 2, which versions that ignore grid offsets refuse instead of misreading.
    assert saved["format"] == 2
    assert program_to_dict(_steps_mid_cell_program())["format"] == 1
    np.testing.assert_array_equal(program_from_dict(saved).layers[0].grid_offset, [4])
    for layer in saved["layers"]:
        del layer["grid_offset"]  # a program saved before grids could move
    saved["format"] = 1
    np.testing.assert_array_equal(program_from_dict(saved).layers[0].grid_offset, [0])
    with pytest.raises(ValueError, match="unsupported program format 4"):
        program_from_dict({**saved, "format": 4})
    with pytest.raises(ValueError, match="outside"):
        _steps_mid_cell_program().with_rounding([3], grid_offsets=[np.array([8])])


@pytest.mark.parametrize("exact", [True, False])
def test_concrete_circuit_rounds_on_the_moved_grid(exact: bool) -> None:
    """Concrete's simulation of every input: bit-exact with the interpreter under exact
    rounding; under approximate rounding, equal wherever the accumulator is not next to a cell
    edge (there the random step may cross it, which is where the moved grid put the steps)."""
    program = _steps_mid_cell_program().with_rounding(
        [3], exact=exact, grid_offsets=[np.array([4])]
    )
    every_input = [np.array([[v]]) for v in range(48)]
    circuit = backend.compile_circuit(program, every_input, backend.make_configuration())
    contract = ClientContract.from_program(program)
    simulated = np.concatenate([contract.unshift(circuit.simulate(q)) for q in every_input])
    expected = program.run_integer(np.arange(48).reshape(-1, 1))
    if exact:
        np.testing.assert_array_equal(simulated, expected)
    else:
        # Cell edges of the moved grid are at multiples of 8; 3 units (3/8 of a step) away, a
        # flip is far rarer than one in a million.
        near_edge = np.isin(np.arange(48) % 8, [0, 1, 2, 6, 7])
        np.testing.assert_array_equal(simulated[~near_edge], expected[~near_edge])


@pytest.mark.encrypted
def test_encrypted_run_rounds_on_the_moved_grid() -> None:
    program = _steps_mid_cell_program().with_rounding([3], grid_offsets=[np.array([4])])
    inputs = [np.array([[v]]) for v in range(48)]
    circuit = backend.compile_circuit(program, inputs, backend.make_configuration())
    circuit.keygen()
    contract = ClientContract.from_program(program)
    for v in (7, 8, 15, 16, 23, 24, 40):
        q = np.array([[v]])
        executed = contract.unshift(circuit.decrypt(circuit.run(circuit.encrypt(q))))
        np.testing.assert_array_equal(executed, program.run_integer(q))


def test_grids_move_by_default_and_auto_keeps_the_precision_found_without() -> None:
    """Through the lowering of a trained network: by default grids move, with an explicit
    ``rounding=<bits>`` and with "auto" (whose precision is the one found without moving them);
    ``False`` moves none."""
    from fheqnn import CompileOptions, NeuralNetClassifier
    from fheqnn.compiler.lowering import lower_onnx
    from helpers import blobs

    x, y = blobs(3, 240, 6, 0.8)
    model = NeuralNetClassifier(module__n_layers=2, max_epochs=15, verbose=0, random_state=0).fit(
        x, y
    )
    onnx_model = model.export_onnx()

    def lowered(**options):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a forced precision may break the guard: measured
            return lower_onnx(onnx_model, x, CompileOptions(**options)).program

    def moved(**options) -> int:
        program = lowered(**options)
        return sum(int(np.count_nonzero(layer.grid_offset)) for layer in program.layers)

    def bits(program) -> list[int]:
        return [layer.lookup_bits() for layer in program.layers if layer.is_hidden]

    assert moved(rounding=3) > 0
    assert moved(rounding=3, align_rounding=False) == 0
    assert moved(align_rounding=False) == 0
    # "auto" with moved grids keeps the precision chosen without them.
    assert bits(lowered()) == bits(lowered(align_rounding=False))
    assert CompileOptions().align_rounding is True


def test_auto_rounding_with_grids_keeps_the_precision_found_without() -> None:
    """The precision search judges unmoved grids; moving the chosen one's grids afterwards
    changes neither its cost nor whether it keeps the guard (it falls back to unmoved grids)."""
    rng = np.random.default_rng(7)
    for _ in range(4):
        n_hidden = 10
        hidden = _random_hidden_layer(rng, n_hidden, 6)
        out = Layer(
            "o", rng.integers(-4, 4, size=(3, n_hidden)), IntRange(-4, 3), 0, 0.1, 0.0, None, None
        )
        program = Program(Quantizer(1.0, 0, -4, 3), (hidden, out))
        calibration = rng.integers(-4, 4, size=(400, 6))
        with_grids = choose_rounding(program, calibration, exact=None, align=True)
        without = choose_rounding(program, calibration, exact=None, align=False)
        assert with_grids.lsbs == without.lsbs and with_grids.exact == without.exact
        assert with_grids.estimated_cost_s == without.estimated_cost_s
        assert with_grids.guard_ok == without.guard_ok
