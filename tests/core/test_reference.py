"""Every optimizer, option and block against the float64 NumPy references, over 100 steps.

Inputs: a pytree with a matrix, a scalar, empty leaves and nested
dict/list/tuple containers; float32 gradients spanning six decades with
sparse zeros; hyperparameters drawn at random in their valid ranges, rounded
to float32 so both sides start from identical numbers (what is measured is
adaptx's float32 arithmetic, not the rounding of its inputs).

Pass mark: for every leaf, over its 100 steps of updates,
max|adaptx − reference| / max|reference| within ``harness.rounding_bound`` for
one float32 program over 100 steps of the case's algorithm (its STEP_COST,
``bound`` below); ``harness.relative_error`` and ``harness.worst_error`` say
why it is normalised that way; the reference is float64 so that the gap is
adaptx's own error, see ``reference``. The reference steps on the same params
adaptx saw, so an error cannot hide in (or be blamed on) the params' own
float32 rounding. Measured worst (x86-64, XLA at AVX-512, AVX2 and SSE4.2):
docs/tolerances.md.

Each optimizer runs twice on one compilation: with hyperparameters given at
construction, then with a second draw set through ``set_hyperparams``.
"""
import zlib
from typing import Callable, NamedTuple

import jax
import numpy as np
import pytest

import adaptx
import reference as ref
from harness import (gradient_sequence, log_uniform, random_params, relative_error, rounding_bound, step_cost,
                     trajectory, uniform, worst_error)

STEPS = 100

# Valid ranges narrowed to where each hyperparameter is used in practice. The
# floor of 0.8 on RMSProp's decay keeps the centered variance v − m² away from
# cancellation on the first step (v − m² = ρ(1 − ρ)g² there), where float32 loses
# a factor (2 − ρ)/ρ of precision whatever the implementation.
SAMPLERS = {
    "learning_rate": lambda rng: log_uniform(rng, 1e-4, 1e-1),
    "momentum": lambda rng: uniform(rng, 0.5, 0.99),
    "decay": lambda rng: uniform(rng, 0.8, 0.999),
    "rho": lambda rng: uniform(rng, 0.8, 0.99),
    "b1": lambda rng: uniform(rng, 0.5, 0.99),
    "b2": lambda rng: uniform(rng, 0.9, 0.9999),
    "eps": lambda rng: log_uniform(rng, 1e-10, 1e-3),
    "eps_root": lambda rng: log_uniform(rng, 1e-12, 1e-6),
    "weight_decay": lambda rng: log_uniform(rng, 1e-4, 1e-1),
    "momentum_decay": lambda rng: log_uniform(rng, 1e-3, 1e-1),
    "initial_accumulator": lambda rng: uniform(rng, 0.0, 1.0),
    # Straddles the gradients' global norms (quartiles about 10 to 20): some steps clip, some do not.
    "max_norm": lambda rng: log_uniform(rng, 10.0, 25.0),
}


def decaying(peak):
    """η_t = peak / (1 + t/8): exact in float32 up to the final division, and valid on ints and arrays."""
    return lambda count: peak / (1 + count / 8)


# Large enough beside G ≥ initial_accumulator for ε's place (inside or outside √) to matter.
LARGE_EPS = {"eps": lambda rng: log_uniform(rng, 1e-3, 1e-1)}
SCHEDULED = {"learning_rate": lambda rng: decaying(log_uniform(rng, 1e-3, 1e-1))}


class Case(NamedTuple):
    id: str
    make: Callable  # adaptx factory, called with the drawn values and the options
    reference: Callable  # reference class, called with the param leaves, values and options
    drawn: tuple  # hyperparameter names drawn at random
    options: dict = {}
    samplers: dict = {}
    direction: bool = False  # compare with the reference's direction (a block), not its step

    def draw(self, rng):
        return {name: {**SAMPLERS, **self.samplers}[name](rng) for name in self.drawn}


ADAM = ("learning_rate", "b1", "b2", "eps")
RMS = ("learning_rate", "decay", "eps")

OPTIMIZERS = [
    Case("sgd", adaptx.sgd, ref.SGD, ("learning_rate",)),
    Case("sgd-momentum", adaptx.sgd, ref.SGD, ("learning_rate", "momentum")),
    Case("sgd-nesterov", adaptx.sgd, ref.SGD, ("learning_rate", "momentum"), {"nesterov": True}),
    Case("adagrad", adaptx.adagrad, ref.Adagrad, ("learning_rate", "eps", "initial_accumulator")),
    Case("rmsprop", adaptx.rmsprop, ref.RMSProp, RMS),
    Case("rmsprop-eps_in_sqrt", adaptx.rmsprop, ref.RMSProp, RMS, {"eps_in_sqrt": True}),
    Case("rmsprop-centered", adaptx.rmsprop, ref.RMSProp, RMS, {"centered": True}),
    Case("rmsprop-momentum", adaptx.rmsprop, ref.RMSProp, RMS + ("momentum",)),
    Case("rmsprop-nesterov", adaptx.rmsprop, ref.RMSProp, RMS + ("momentum",), {"nesterov": True}),
    Case("rmsprop-centered-nesterov-eps_in_sqrt", adaptx.rmsprop, ref.RMSProp, RMS + ("momentum",),
         {"centered": True, "nesterov": True, "eps_in_sqrt": True}),
    Case("adam", adaptx.adam, ref.Adam, ADAM),
    Case("adam-amsgrad", adaptx.adam, ref.Adam, ADAM, {"amsgrad": True}),
    Case("adam-schedule", adaptx.adam, ref.Adam, ADAM, samplers=SCHEDULED),
    Case("adamw", adaptx.adamw, ref.Adam, ADAM + ("weight_decay",)),
    Case("adamw-amsgrad", adaptx.adamw, ref.Adam, ADAM + ("weight_decay",), {"amsgrad": True}),
    Case("adadelta", adaptx.adadelta, ref.Adadelta, ("learning_rate", "rho", "eps")),
    Case("adamax", adaptx.adamax, ref.Adamax, ADAM),
    Case("nadam", adaptx.nadam, ref.NAdam, ADAM + ("momentum_decay",)),
    Case("nadam-optax", adaptx.nadam, ref.NAdam, ADAM, {"momentum_decay": None}),
]

BLOCKS = [
    Case(*spec, direction=True) for spec in [
        ("accumulate_squares", adaptx.accumulate_squares, ref.Adagrad, ("eps", "initial_accumulator")),
        ("accumulate_squares-eps_in_sqrt", adaptx.accumulate_squares, ref.Adagrad,
         ("eps", "initial_accumulator"), {"eps_in_sqrt": True}, LARGE_EPS),
        ("scale_by_rms", adaptx.scale_by_rms, ref.RMSProp, ("decay", "eps", "initial_accumulator")),
        ("scale_by_rms-centered-eps_in_sqrt", adaptx.scale_by_rms, ref.RMSProp, ("decay", "eps"),
         {"centered": True, "eps_in_sqrt": True}),
        ("ema", adaptx.ema, ref.EMA, ("decay",)),
        ("trace", adaptx.trace, ref.Momentum, ("decay",)),
        ("trace-nesterov", adaptx.trace, ref.Momentum, ("decay",), {"nesterov": True}),
        ("bias_correction", adaptx.bias_correction, ref.BiasCorrection, ("decay",)),
        ("scale_by_adam", adaptx.scale_by_adam, ref.Adam, ("b1", "b2", "eps", "eps_root")),
        ("scale_by_adam-amsgrad", adaptx.scale_by_adam, ref.Adam, ("b1", "b2", "eps"), {"amsgrad": True}),
        ("scale_by_adamax", adaptx.scale_by_adamax, ref.Adamax, ("b1", "b2", "eps")),
        ("scale_by_nadam", adaptx.scale_by_nadam, ref.NAdam, ("b1", "b2", "eps", "momentum_decay")),
        ("scale_by_adadelta", adaptx.scale_by_adadelta, ref.Adadelta, ("rho", "eps")),
        ("clip_by_global_norm", adaptx.clip_by_global_norm, ref.ClipByGlobalNorm, ("max_norm",)),
        ("add_decayed_weights", adaptx.add_decayed_weights, ref.DecayedWeights, ("weight_decay",)),
    ]
] + [
    Case("scale_by_learning_rate", adaptx.scale_by_learning_rate, ref.Scale, ("learning_rate",)),
    Case("scale_by_learning_rate-schedule", adaptx.scale_by_learning_rate, ref.Scale, ("learning_rate",),
         samplers=SCHEDULED),
]


def bound(case):
    """rounding_bound of one float32 program over STEPS steps of the case (STEP_COST by its id),
    with SCHEDULED's η_t = peak/(1 + t/8) (a sum and a division: t/8 is exact) where it has one."""
    ops, transcendentals = step_cost(case.id)
    if "learning_rate" in case.samplers and not case.id.startswith("scale_by_learning_rate"):
        ops += 2
    return rounding_bound(STEPS, ops, transcendentals)


def problem(case):
    """Params, gradients and a random generator of their own for each case (seeded by its id)."""
    rng = np.random.default_rng(zlib.crc32(case.id.encode()))
    params = random_params(rng)
    return rng, params, gradient_sequence(params, STEPS, rng)


def assert_matches_reference(case, run, state, params, grads, values):
    updates, seen = run(state, params, grads, STEPS)
    model = case.reference(jax.tree.leaves(params), **values, **case.options)
    error, step, leaf = worst_error(updates, seen, grads, model.direction if case.direction else model.step)
    assert error <= bound(case), (
        f"{case.id} with {values}: relative error {error:.3g} > {bound(case):.3g} at step {step}, leaf {leaf}"
    )


@pytest.mark.parametrize("case", OPTIMIZERS, ids=lambda case: case.id)
def test_optimizer_matches_reference(case):
    rng, params, grads = problem(case)
    values = case.draw(rng)
    tx = case.make(**values, **case.options)
    run = trajectory(tx)
    assert_matches_reference(case, run, tx.init(params), params, grads, values)

    state = tx.init(params)
    settable = {k: v for k, v in case.draw(rng).items() if k in adaptx.hyperparams(state) and not callable(v)}
    state = adaptx.set_hyperparams(state, **settable)
    assert_matches_reference(case, run, state, params, grads, {**values, **settable})


@pytest.mark.parametrize("case", BLOCKS, ids=lambda case: case.id)
def test_block_matches_reference(case):
    rng, params, grads = problem(case)
    values = case.draw(rng)
    tx = case.make(**values, **case.options)
    assert_matches_reference(case, trajectory(tx), tx.init(params), params, grads, values)


def test_clipping_case_clips_some_steps_and_not_others():
    """Otherwise clip_by_global_norm's comparison above would only test the identity."""
    (case,) = [case for case in BLOCKS if case.id == "clip_by_global_norm"]
    rng, _, grads = problem(case)
    norms = np.sqrt(sum(np.sum(np.square(g.astype(np.float64)).reshape(STEPS, -1), axis=1)
                        for g in jax.tree.leaves(grads)))
    clipped = np.mean(norms > case.draw(rng)["max_norm"])
    assert 0.1 < clipped < 0.9


# What each option is compared against to show it matters.
OPTION_OFF = {"nesterov": False, "centered": False, "eps_in_sqrt": False, "amsgrad": False, "momentum_decay": 4e-3}


@pytest.mark.parametrize("case", [case for case in OPTIMIZERS + BLOCKS if case.options], ids=lambda case: case.id)
def test_each_option_changes_the_numbers(case):
    """Each option moves the reference by more than twice the case's bound on its case's draw, so the
    comparison tests it: adaptx getting the option wrong would be off by more than gap − bound > bound."""
    rng, params, grads = problem(case)
    values, leaves, grads = case.draw(rng), jax.tree.leaves(params), jax.tree.leaves(grads)
    for option in case.options:
        runs = []
        for options in (case.options, {**case.options, option: OPTION_OFF[option]}):
            model = case.reference(leaves, **values, **options)
            step = model.direction if case.direction else model.step
            runs.append([step([g[t] for g in grads], leaves) for t in range(STEPS)])
        gaps = [relative_error(np.stack([r[i] for r in runs[0]]), np.stack([r[i] for r in runs[1]]))
                for i in range(len(leaves))]
        assert max(gaps) > 2 * bound(case), f"{option} barely matters: {max(gaps):.2g} against {bound(case):.2g}"
