"""The protocol is optax's: transformations compose across the two libraries, in both directions.

Chained runs are compared bit for bit with the same transformations applied
one after the other by hand; both run eagerly, op by op, so equal numbers
mean the chain did exactly the same arithmetic.
"""
import jax
import numpy as np
import optax
import pytest

import adaptx
from harness import float32_beta_ops, relative_error, rounding_bound, step_cost

PARAMS = {"w": np.array([[0.5, -1.0], [2.0, 0.25]], np.float32), "b": (np.float32(-1.5), np.zeros(0, np.float32))}
GRADS = [jax.tree.map(lambda p, t=t: np.sin(4.0 * p + t).astype(np.float32) * (1 + 3 * t), PARAMS) for t in range(3)]


def run(tx):
    """Eager updates of ``tx`` along GRADS, params moving with them."""
    params, state, out = PARAMS, tx.init(PARAMS), []
    for grads in GRADS:
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        out.append(updates)
    return out


def by_hand(*txs):
    """The same as ``run(chain(*txs))``, with the chain written out."""
    params, states, out = PARAMS, [tx.init(PARAMS) for tx in txs], []
    for grads in GRADS:
        updates = grads
        for i, tx in enumerate(txs):
            updates, states[i] = tx.update(updates, states[i], params)
        params = optax.apply_updates(params, updates)
        out.append(updates)
    return out


CHAINS = {
    "adaptx-adam-in-optax-chain": (optax.chain, lambda: (optax.clip_by_global_norm(1.0), adaptx.adam(0.01))),
    "adaptx-blocks-in-optax-chain": (optax.chain, lambda: (
        adaptx.scale_by_rms(0.9, centered=True), optax.trace(0.9), adaptx.scale_by_learning_rate(0.01))),
    "optax-clip-in-adaptx-chain": (
        adaptx.chain, lambda: (optax.clip_by_global_norm(1.0), adaptx.rmsprop(0.01, momentum=0.9))),
    "optax-adam-in-adaptx-chain": (adaptx.chain, lambda: (
        optax.scale_by_adam(), adaptx.add_decayed_weights(0.1), adaptx.scale_by_learning_rate(0.01))),
}


@pytest.mark.parametrize("name", sorted(CHAINS))
def test_chain_across_libraries_equals_the_transformations_applied_by_hand(name):
    # Bit for bit: both run eagerly, one operation at a time, the same operations on the same numbers.
    chain, parts = CHAINS[name]
    jax.tree.map(np.testing.assert_array_equal, run(chain(*parts())), by_hand(*parts()))


def test_apply_updates_agree():
    # θ + u, one correctly rounded addition on both sides: exact on any IEEE machine.
    updates = run(adaptx.adam(0.1))[-1]
    ours, theirs = adaptx.apply_updates(PARAMS, updates), optax.apply_updates(PARAMS, updates)
    jax.tree.map(np.testing.assert_array_equal, ours, theirs)


# Where the two libraries implement the same equation, as the optimizers' docstrings say:
# (adaptx, optax, tolerance): two float32 programs over the 3 steps (harness.rounding_bound),
# and for the bias-corrected ones what optax's 1 − βᵗ from a float32 β adds (at the default
# β₁ = 0.9, β₂ = 0.999; 6.7e-6 measured here), where adaptx rounds 1 − β from double, as torch does.
def _bound(name, beta_ops=0.0):
    ops, transcendentals = step_cost(name)
    return rounding_bound(len(GRADS), ops + beta_ops, transcendentals, implementations=2)


SAME_EQUATION = {
    "adam": (lambda: adaptx.adam(0.01), lambda: optax.adam(0.01), _bound("adam", float32_beta_ops(0.9, 0.999))),
    "nadam-constant-momentum": (lambda: adaptx.nadam(0.01, momentum_decay=None), lambda: optax.nadam(0.01),
                                _bound("nadam", float32_beta_ops(0.9, 0.999))),
    "sgd-nesterov": (lambda: adaptx.sgd(0.01, 0.9, nesterov=True), lambda: optax.sgd(0.01, 0.9, nesterov=True),
                     _bound("sgd")),
    "rmsprop-eps_in_sqrt-centered": (lambda: adaptx.rmsprop(0.01, eps_in_sqrt=True, centered=True),
                                     lambda: optax.rmsprop(0.01, centered=True), _bound("rmsprop")),
}


@pytest.mark.parametrize("name", sorted(SAME_EQUATION))
def test_same_numbers_as_optax_where_the_equations_agree(name):
    ours, theirs, tolerance = SAME_EQUATION[name]
    for a, b in zip(jax.tree.leaves(run(ours())), jax.tree.leaves(run(theirs()))):
        assert relative_error(a, b) <= tolerance, (relative_error(a, b), tolerance)
