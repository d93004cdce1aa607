"""adaptx blocks and aliases, with the matching options, reproduce optax's optimizers.

Same precomputed gradients on both sides (magnitudes 1e-6..1e3), 200 steps,
float32, hyperparameters drawn at random within their valid ranges. The oracle
is optax itself in float64 (``jax.enable_x64``): adaptx's float32 params must be
within ``harness.rounding_bound`` of it for 200 steps of the algorithm
(STEP_COST), per leaf (``harness.relative_deviation``), and within twice that of
optax's own float32 run, plus, for the bias-corrected optimizers, what optax's
float32 β costs it (``optax_conditioning``). Measured worst (x86-64, XLA at
AVX-512, AVX2 and SSE4.2): docs/tolerances.md.
"""
import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adaptx
from adaptx._src import numerics as _numerics
from harness import PEER_STEPS as STEPS, float32_beta_ops, log_uniform_in, peer_params, relative_deviation, rounding_bound
from harness import scan_trajectory, step_cost, uniform_in, wide_gradients

LR, EPS = log_uniform_in(1e-4, 1e-1), log_uniform_in(1e-10, 1e-3)
# β₂ up to 0.999 only: beyond it optax's float32 bias correction is off by more than
# adaptx's bound (test_optax_bias_correction_rounds_beta_to_float32, optax_conditioning).
DECAY, B1, B2 = uniform_in(0.5, 0.999), uniform_in(0.0, 0.99), uniform_in(0.9, 0.999)


def _adagrad(h):
    return adaptx.chain(
        adaptx.accumulate_squares(h["eps"], h["initial_accumulator_value"], eps_in_sqrt=True),
        adaptx.scale_by_learning_rate(h["learning_rate"]),
    )


def _rmsprop(**options):
    def build(h):
        return adaptx.rmsprop(h["learning_rate"], h["decay"], h["eps"], momentum=h.get("momentum", 0.0),
                              **options)

    return build


def _adadelta(h):
    return adaptx.chain(
        adaptx.add_decayed_weights(h["weight_decay"]),
        adaptx.scale_by_adadelta(h["rho"], h["eps"]),
        adaptx.scale_by_learning_rate(h["learning_rate"]),
    )


ADAM = {"learning_rate": LR, "b1": B1, "b2": B2, "eps": EPS}

# (id, optax optimizer, the adaptx call that reproduces it, hyperparameters drawn at random).
CASES = [
    ("sgd-nesterov", functools.partial(optax.sgd, nesterov=True),
     lambda h: adaptx.sgd(**h, nesterov=True), {"learning_rate": LR, "momentum": uniform_in(0.1, 0.99)}),
    ("adagrad", optax.adagrad, _adagrad,
     {"learning_rate": LR, "initial_accumulator_value": uniform_in(0.01, 1.0), "eps": EPS}),
    ("adagrad-alias", optax.adagrad,
     lambda h: adaptx.adagrad(h["learning_rate"], h["initial_accumulator_value"], h["eps"], eps_in_sqrt=True),
     {"learning_rate": LR, "initial_accumulator_value": uniform_in(0.01, 1.0), "eps": EPS}),
    *[(f"rmsprop-{name}", functools.partial(optax.rmsprop, **options), _rmsprop(**options),
       {"learning_rate": LR, "decay": DECAY, "eps": EPS,
        **({"momentum": uniform_in(0.1, 0.99)} if "nesterov" in options else {})})
      for name, options in [
          ("eps_in_sqrt", {"eps_in_sqrt": True}),
          ("eps_outside", {"eps_in_sqrt": False}),
          ("centered-eps_in_sqrt", {"eps_in_sqrt": True, "centered": True}),
          ("centered-eps_outside-momentum", {"eps_in_sqrt": False, "centered": True, "nesterov": False}),
          ("eps_in_sqrt-nesterov", {"eps_in_sqrt": True, "nesterov": True}),
      ]],
    ("adam", optax.adam, lambda h: adaptx.adam(**h), ADAM),
    ("adamw", optax.adamw, lambda h: adaptx.adamw(**h), {**ADAM, "weight_decay": log_uniform_in(1e-4, 1e-1)}),
    ("adamax", optax.adamax, lambda h: adaptx.adamax(**h), ADAM),
    ("nadam", optax.nadam, lambda h: adaptx.nadam(**h, momentum_decay=None), ADAM),
    ("adadelta", optax.adadelta, _adadelta,
     {"learning_rate": log_uniform_in(0.1, 2.0), "rho": uniform_in(0.5, 0.99), "eps": EPS,
      "weight_decay": log_uniform_in(1e-4, 1e-1)}),
]


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(1618)
    params = peer_params(rng)
    return params, wide_gradients(rng, params)


def optax_conditioning(name, h) -> float:
    """What optax's bias corrections from a float32 β add per step (harness.float32_beta_ops)."""
    if name not in ("adam", "adamw", "amsgrad", "adamax", "nadam"):
        return 0.0
    return float32_beta_ops(h["b1"], None if name == "adamax" else h["b2"])


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_reproduces_optax(case, problem):
    name, reference, ours, space = case
    rng = np.random.default_rng(CASES.index(case))
    h = {k: sample(rng) for k, sample in space.items()}
    got, _ = scan_trajectory(("adaptx-for-optax", name), ours(h), *problem)
    want, _ = scan_trajectory(("optax", name), reference(**h), *problem)
    with jax.enable_x64(True):
        as64 = lambda tree: jax.tree.map(lambda x: np.asarray(x, np.float64), tree)  # noqa: E731
        exact, _ = scan_trajectory(("optax-float64", name), reference(**h), *map(as64, problem))
    ops, transcendentals = step_cost(name)
    within = rounding_bound(STEPS, ops, transcendentals)
    assert relative_deviation(got, exact) <= within, (relative_deviation(got, exact), within, h)
    extra = optax_conditioning(name, h)
    between = rounding_bound(STEPS, ops + extra, transcendentals, implementations=2)
    assert relative_deviation(got, want) <= between, (relative_deviation(got, want), between, h)


@pytest.mark.parametrize("b2", [0.999, 0.9999])
def test_optax_bias_correction_rounds_beta_to_float32(b2):
    """optax divides by 1 − β^t computed in float32 from β rounded to float32; adaptx (like
    torch, in double) divides by 1 − β^t to a few ulp. At β₂ = 0.9999, t = 1 optax's divisor
    is off by 1.7e-4 relative, which moves Adam's params by up to ~6e-5 over 200 steps at lr 0.1.

    Bounds: adaptx's −expm1(t·log1p(−(1 − β))) is two transcendentals and a division, all
    well conditioned. optax's β¹ is exact for any pow within 1 ulp (the exact result is a
    float32; XLA's, glibc's and SLEEF's are), 1 − β is exact (Sterbenz), then a division:
    so it sits within a rounding of the float32-β value, and the gap to the exact value is
    the rounding of β, amplified by 1/(1 − β).
    """
    nu = jnp.ones([], jnp.float32)
    count = jnp.ones([], jnp.int32)
    exact = 1.0 / (1.0 - b2)
    ours = float(nu / _numerics.bias_correction(b2, count))
    theirs = float(optax.tree.bias_correction(nu, b2, count))
    assert abs(ours - exact) / exact <= rounding_bound(1, 2, 2)
    float32_beta = 1.0 / (1.0 - float(np.float32(b2)))
    assert abs(theirs - float32_beta) / float32_beta <= rounding_bound(1, 2)
    beta_rounding = abs(float32_beta - exact) / exact  # 1.3e-5 at 0.999, 1.7e-4 at 0.9999
    assert beta_rounding > 10 * rounding_bound(1, 2, 2)
    assert abs(theirs - exact) / exact >= beta_rounding - rounding_bound(1, 2)


REQUIRED = inspect.Parameter.empty

# The adaptx and optax defaults that docs/CONVENTIONS.md lists.
DEFAULTS = [
    ("adaptx.sgd", adaptx.sgd, {"learning_rate": REQUIRED, "momentum": 0.0, "nesterov": False}),
    ("optax.sgd", optax.sgd, {"learning_rate": REQUIRED, "momentum": None, "nesterov": False}),
    ("adaptx.adagrad", adaptx.adagrad,
     {"learning_rate": REQUIRED, "initial_accumulator": 0.0, "eps": 1e-10}),
    ("optax.adagrad", optax.adagrad,
     {"learning_rate": REQUIRED, "initial_accumulator_value": 0.1, "eps": 1e-7}),
    ("adaptx.rmsprop", adaptx.rmsprop, {"learning_rate": REQUIRED, "decay": 0.9, "eps": 1e-8,
                                        "eps_in_sqrt": False, "centered": False, "momentum": 0.0}),
    ("optax.rmsprop", optax.rmsprop, {"learning_rate": REQUIRED, "decay": 0.9, "eps": 1e-8,
                                      "eps_in_sqrt": True, "initial_scale": 0.0, "centered": False,
                                      "momentum": None}),
    ("adaptx.adam", adaptx.adam,
     {"learning_rate": 1e-3, "b1": 0.9, "b2": 0.999, "eps": 1e-8, "amsgrad": False}),
    ("optax.adam", optax.adam, {"learning_rate": REQUIRED, "b1": 0.9, "b2": 0.999, "eps": 1e-8}),
    ("adaptx.adamw", adaptx.adamw, {"learning_rate": 1e-3, "eps": 1e-8, "weight_decay": 1e-2}),
    ("optax.adamw", optax.adamw, {"learning_rate": REQUIRED, "eps": 1e-8, "weight_decay": 1e-4}),
    ("optax.amsgrad", optax.amsgrad, {"learning_rate": REQUIRED, "eps": 1e-8}),
    ("adaptx.adadelta", adaptx.adadelta, {"learning_rate": 1.0, "rho": 0.9, "eps": 1e-6}),
    ("optax.adadelta", optax.adadelta, {"learning_rate": None, "rho": 0.9, "eps": 1e-6, "weight_decay": 0.0}),
    ("adaptx.adamax", adaptx.adamax, {"learning_rate": 2e-3, "b1": 0.9, "b2": 0.999, "eps": 1e-8}),
    ("optax.adamax", optax.adamax, {"learning_rate": REQUIRED, "b1": 0.9, "b2": 0.999, "eps": 1e-8}),
    ("adaptx.nadam", adaptx.nadam, {"learning_rate": 2e-3, "eps": 1e-8, "momentum_decay": 4e-3}),
    ("optax.nadam", optax.nadam, {"learning_rate": REQUIRED, "eps": 1e-8, "nesterov": True}),
]


@pytest.mark.parametrize("name, optimizer, defaults", DEFAULTS, ids=[d[0] for d in DEFAULTS])
def test_documented_defaults(name, optimizer, defaults):
    parameters = inspect.signature(optimizer).parameters
    assert {name: parameters[name].default for name in defaults} == defaults
