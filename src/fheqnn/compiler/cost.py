"""A cost model of Concrete circuits: estimated seconds per encrypted row, from the lookups'
input precisions (measured on this machine kind, ``fheqnn.bench.lookup_floor``)."""

from __future__ import annotations

from .ir import Layer, Program

#: Seconds per table lookup by lookup input precision (bits): concrete-python 2.11, a large
#: batch of independent lookups on 2 cores (``fheqnn.bench.lookup_floor``), default error
#: probability. Values between the measured points (2, 4, 6, 8 bits) are geometric means.
LOOKUP_COST_S = {1: 0.008, 2: 0.009, 3: 0.0116, 4: 0.015, 5: 0.0315, 6: 0.066, 7: 0.204, 8: 0.63}


#: Fixed seconds per circuit call (encrypted argument handling, key switch set-up).
CALL_COST_S = 0.07


#: Growth of the lookup cost per bit above the table (the polynomial size doubles per bit and
#: more: 6 -> 8 bits measured 9.5 x).
_COST_GROWTH_PER_BIT = 3.1


def lookup_cost_s(bits: int) -> float:
    """Estimated seconds of one table lookup whose input has ``bits`` of precision."""
    bits = max(1, int(bits))
    top = max(LOOKUP_COST_S)
    if bits <= top:
        return LOOKUP_COST_S[bits]
    return LOOKUP_COST_S[top] * _COST_GROWTH_PER_BIT ** (bits - top)


def layer_cost_s(layer: Layer) -> float:
    """Estimated seconds of a layer's lookups per row (a hidden layer's, and the maxima of
    an input max pool).

    Exact rounding of ``r`` bits costs ``r`` extra bootstraps per neuron (Concrete clears the
    bits one bootstrap at a time), each about as dear as the lookup itself: measured on breast
    cancer, 4-bit lookups with 4 bits rounded exactly ran 1.58 s per row against 0.33 s
    approximately (220 bootstraps against 44; 7.1 ms per extra one, 7.5 ms per lookup);
    approximate rounding costs none (the bootstrap's own modulus switch rounds).
    """
    pool = 0.0
    if layer.input_pool is not None:
        # About one lookup per window value, on one bit more than the inputs (differences).
        lookups = layer.input_pool.n_out * layer.input_pool.lookups_per_output
        pool = lookups * lookup_cost_s(layer.input_range.bits + 1)
    if not layer.is_hidden:
        return pool
    cost = lookup_cost_s(layer.lookup_bits())
    if layer.round_lsbs and layer.rounding_exact:
        cost += layer.round_lsbs * lookup_cost_s(layer.lookup_bits())
    return pool + layer.n_outputs * cost


def estimated_cost_s(program: Program) -> float:
    """Estimated seconds of one encrypted row on 2 cores: fixed call cost plus every lookup."""
    return CALL_COST_S + sum(layer_cost_s(layer) for layer in program.layers)
