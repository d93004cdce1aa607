"""adaptx.compat.torch against torch.optim itself (torch 2.13, float32, CPU).

Both sides get the same precomputed gradients (not loss-dependent, so rounding
differences do not feed back), 200 steps, over a pytree with a scalar and an
empty leaf. Each case runs torch's defaults and two random hyperparameter
draws through one compiled scan. The oracle is torch itself in float64 (same
code, same double-precision scalars, step counts and ∏μ in float64): adaptx's
params and comparable state must be within ``harness.rounding_bound`` of it for
200 steps of the algorithm (STEP_COST), and so must torch's own float32 run —
the bound is what float32 promises, not what adaptx happens to give, and torch
checks it — so adaptx and torch differ by at most twice that. Deviations are
each leaf's largest error relative to its largest value
(``harness.relative_deviation``). Measured worst, on x86-64 with AVX-512, AVX2
and SSE4.2 (XLA and ATen alike): 3.2e-5 from float64 (Adam with decoupled weight
decay, torch and adaptx alike: the rounded factor 1 − ηλ) against a bound of
6.2e-4, and 1.4e-5 between adaptx and torch (NAdam on the loss, AVX2) against
1.8e-3 (docs/tolerances.md). Bit-identical where the two perform the same
correctly rounded operations in the same order: Adamax's ``exp_inf`` at
torch's defaults always, plain SGD's params and Adagrad's ``sum`` wherever XLA
and ATen make the same fused-multiply-add choice (BIT_IDENTICAL).
"""
import contextlib
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import adaptx
from adaptx._src.adam import AdamaxMoments, AdamMoments, AmsgradMoments, NadamMoments
from adaptx.compat import torch as compat
from adaptx._src.moments import DampedMomentState, MomentState
from adaptx._src.scaling import AccumulatorState, AdadeltaState, RmsState
from adaptx._src.family import ScaleByRpropState
from harness import (PEER_STEPS as STEPS, TRACES, identical, log_uniform_in, peer_params, relative_deviation,
                     rounding_bound, scan_trajectory, step_cost, uniform_in, wide_gradients)

# The gradient of the loss below, computed by each library's autodiff at every step:
# h·(θ − c) 2, the derivative of log cosh θ as sinh θ · (1/cosh θ) 2 and 2 transcendentals, + 1.
LOSS_GRADIENT = (5, 2)


def bound(name, implementations=1, extra=(0, 0), steps=STEPS):
    """rounding_bound for ``steps`` steps of torch's ``name`` (STEP_COST), plus ``extra`` per step."""
    ops, transcendentals = step_cost(name)
    return rounding_bound(steps, ops + extra[0], transcendentals + extra[1], implementations)

LR, WD, EPS = log_uniform_in(1e-4, 1e-1), log_uniform_in(1e-4, 1e-1), log_uniform_in(1e-10, 1e-3)
MOMENTUM, DAMPENING = uniform_in(0.1, 0.99), uniform_in(0.1, 0.9)
BETAS = lambda rng: (uniform_in(0.0, 0.99)(rng), uniform_in(0.9, 0.9999)(rng))
ADAM = {"lr": LR, "betas": BETAS, "eps": EPS, "weight_decay": WD}

# (torch class, options that change the structure, numbers drawn at random).
# Draw 0 is torch's defaults plus the options; draws 1 and 2 are random.
CASES = [
    ("SGD", {}, {"lr": LR, "weight_decay": WD}),
    ("SGD", {"momentum": 0.9}, {"lr": LR, "weight_decay": WD, "momentum": MOMENTUM, "dampening": DAMPENING}),
    ("SGD", {"momentum": 0.9, "nesterov": True}, {"lr": LR, "weight_decay": WD, "momentum": MOMENTUM}),
    ("SGD", {"momentum": 0.9, "maximize": True},
     {"lr": LR, "weight_decay": WD, "momentum": MOMENTUM, "dampening": DAMPENING}),
    *[("Adagrad", options, {"lr": LR, "lr_decay": log_uniform_in(1e-4, 1.0), "weight_decay": WD,
                            "initial_accumulator_value": uniform_in(0.0, 1.0), "eps": EPS})
      for options in ({}, {"maximize": True})],
    *[("RMSprop", options, {"lr": LR, "alpha": uniform_in(0.5, 0.999), "eps": EPS, "weight_decay": WD,
                            **({"momentum": MOMENTUM} if "momentum" in options else {})})
      for options in ({}, {"centered": True}, {"momentum": 0.9},
                      {"centered": True, "momentum": 0.9, "maximize": True})],
    *[("Adam", options, ADAM) for options in (
        {}, {"amsgrad": True}, {"decoupled_weight_decay": True},
        {"amsgrad": True, "decoupled_weight_decay": True, "maximize": True})],
    *[("AdamW", options, ADAM) for options in ({}, {"amsgrad": True, "maximize": True})],
    *[("Adadelta", options, {"lr": log_uniform_in(0.1, 2.0), "rho": uniform_in(0.5, 0.99), "eps": EPS,
                             "weight_decay": WD}) for options in ({}, {"maximize": True})],
    *[("Adamax", options, ADAM) for options in ({}, {"maximize": True})],
    *[("NAdam", options, {**ADAM, "momentum_decay": log_uniform_in(1e-4, 1e-1)})
      for options in ({}, {"decoupled_weight_decay": True}, {"maximize": True})],
    *[("RAdam", options, ADAM) for options in ({}, {"decoupled_weight_decay": True, "maximize": True})],
    *[("Rprop", options, {"lr": LR, "etas": lambda rng: (uniform_in(0.2, 0.8)(rng), uniform_in(1.05, 1.5)(rng)),
                          "step_sizes": lambda rng: (log_uniform_in(1e-7, 1e-5)(rng), log_uniform_in(1.0, 50.0)(rng))})
      for options in ({}, {"maximize": True})],
]

# torch's state name -> where adaptx keeps the same numbers (state type, field).
STATE = {
    "momentum_buffer": [(DampedMomentState, "mu"), (MomentState, "mu")],
    "sum": [(AccumulatorState, "nu")],
    "square_avg": [(RmsState, "nu"), (AdadeltaState, "nu")],
    "grad_avg": [(RmsState, "mu")],
    "acc_delta": [(AdadeltaState, "delta")],
    "exp_avg": [(AdamMoments, "mu"), (AdamaxMoments, "mu"), (AmsgradMoments, "mu"), (NadamMoments, "mu")],
    "exp_avg_sq": [(AdamMoments, "nu"), (AmsgradMoments, "nu"), (NadamMoments, "nu")],
    "max_exp_avg_sq": [(AmsgradMoments, "nu_max")],
    "exp_inf": [(AdamaxMoments, "nu")],
    "prev": [(ScaleByRpropState, "prev")],
    "step_size": [(ScaleByRpropState, "step_size")],
}


def _case_id(case):
    name, options, _ = case
    return name + "".join(f"-{k}" for k in options)


def _draws(name, options, space, seed):
    """torch's defaults (with ``options``), then two random draws from ``space``."""
    rng = np.random.default_rng(seed)
    yield dict(options)
    for _ in range(2):
        yield {**options, **{k: sample(rng) for k, sample in space.items()}}


@contextlib.contextmanager
def torch_default_dtype(dtype):
    """float64 as torch's default makes it keep its step counts and NAdam's ∏μ in float64 too."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(default)


def torch_float64_trajectory(name, kwargs, params, grads, loss=None):
    """The oracle: torch_trajectory in float64 from the same (float32) params and gradients."""
    as64 = lambda tree: jax.tree.map(lambda x: np.asarray(x, np.float64), tree)  # noqa: E731
    with torch_default_dtype(torch.float64):
        return torch_trajectory(name, kwargs, as64(params), as64(grads), loss)


def torch_trajectory(name, kwargs, params, grads, loss=None):
    """torch.optim's params and state after the same steps; the single-tensor kernels (foreach=False)."""
    leaves, treedef = jax.tree.flatten(params)
    tensors = [torch.nn.Parameter(torch.tensor(np.array(p))) for p in leaves]
    optimizer = getattr(torch.optim, name)(tensors, foreach=False, **kwargs)
    rows = [torch.tensor(np.array(g)) for g in jax.tree.leaves(grads)]
    for t in range(len(rows[0])):
        if loss is None:
            for p, g in zip(tensors, rows):
                p.grad = g[t].clone()
        else:
            optimizer.zero_grad()
            loss(treedef.unflatten(tensors)).backward()
        optimizer.step()
    state = {key: treedef.unflatten([optimizer.state[p][key].numpy() for p in tensors])
             for key in optimizer.state[tensors[0]] if key in STATE}
    return treedef.unflatten([p.detach().numpy() for p in tensors]), state


def adaptx_state(state, torch_key):
    """The adaptx field holding torch's ``torch_key``, or None."""
    types = dict(STATE[torch_key])
    found = []
    jax.tree.map(lambda node: found.append(node) if type(node) in types else None, state,
                 is_leaf=lambda node: type(node) in types)
    fields = [getattr(node, types[type(node)]) for node in found]
    fields = [f for f in fields if f is not None]
    assert len(fields) <= 1, (torch_key, found)
    return fields[0] if fields else None


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(20240613)
    params = peer_params(rng)
    return params, wide_gradients(rng, params)


def deviations(got, torch32, oracle):
    """{entry: (adaptx vs float64, torch vs float64, adaptx vs torch)} for params and each state entry."""
    (got_params, got_state), (want_params, want_state), (exact_params, exact_state) = got, torch32, oracle
    entries = {"params": (got_params, want_params, exact_params)}
    for key, want in want_state.items():
        ours = adaptx_state(got_state, key)
        assert ours is not None, f"adaptx keeps no counterpart of torch's {key}"
        entries[key] = (ours, want, exact_state[key])
    return {key: (relative_deviation(ours, exact), relative_deviation(want, exact), relative_deviation(ours, want))
            for key, (ours, want, exact) in entries.items()}


def assert_within(name, found, kwargs, extra=(0, 0)):
    """Each of adaptx and torch within the bound of float64, so within twice it of each other."""
    within = bound(name, extra=extra)
    for key, (ours, theirs, between) in found.items():
        assert ours <= within, f"{key}: adaptx {ours:.3g} from float64, bound {within:.3g} ({kwargs})"
        assert theirs <= within, (
            f"{key}: torch's own float32 is {theirs:.3g} from float64, beyond the bound {within:.3g}:"
            f" the bound, not adaptx, is wrong ({kwargs})")
        assert between <= 2 * within, f"{key}: adaptx {between:.3g} from torch, bound {2 * within:.3g} ({kwargs})"


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_matches_torch_on_fixed_gradients(case, problem):
    name, options, space = case
    params, grads = problem
    for kwargs in _draws(name, options, space, CASES.index(case)):
        tx = getattr(compat, name)(**kwargs)
        got = scan_trajectory((name, tuple(sorted(options))), tx, params, grads)
        assert_within(name, deviations(got, torch_trajectory(name, kwargs, params, grads),
                                       torch_float64_trajectory(name, kwargs, params, grads)), kwargs)
    # Three sets of numbers, one trace: the hyperparameters are traced state.
    assert TRACES[(name, tuple(sorted(options)))] == 1


# The entries that see the same correctly rounded operations in the same order in both
# libraries, at torch's defaults: (what to compare, its float32 operations per step).
# Adamax's exp_inf = max(β₂·u, |g| + ε) is exact on every IEEE machine: its product and
# its sum feed a max, never each other, so no compiler can fuse them. SGD's θ + (−η)·g
# and Adagrad's G + g·g are one fused multiply-add or a rounded product and a sum, as the
# compiler chooses (XLA fuses where the ISA has FMA; ATen's AVX2 and AVX-512 kernels do,
# its default ones do not): exact wherever XLA and ATen choose alike, which FMA_PROBE
# tells; elsewhere within the bound of those operations.
# Rprop's step sizes are products by η± clamped by min/max: exact on every IEEE machine too.
BIT_IDENTICAL = {"SGD": ("params", 2), "Adagrad": ("sum", 2), "Adamax": ("exp_inf", None), "Rprop": ("step_size", None)}

# X² = 1 + 2⁻¹¹ + 2⁻²⁴ is no float32: rounded by itself it ties to 1 + 2⁻¹¹ (the even
# neighbour), and a sum it enters shows whether it was: (kwargs, start, gradients).
_X = 1 + 2.0 ** -12
FMA_PROBE = {
    "SGD": ({"lr": _X}, -1.0, [-_X]),  # θ − η·g = −1 + X²: 2⁻¹¹ + 2⁻²⁴ fused, 2⁻¹¹ if not
    "Adagrad": ({}, 0.0, [2.0 ** -12, _X]),  # G = 2⁻²⁴, then G + X²: 1 + 2⁻¹¹ + 2⁻²³ fused, 1 + 2⁻¹¹ if not
}


def ours(key, result):
    """``key`` ("params" or a torch state name) of adaptx's (params, state)."""
    params, state = result
    return params if key == "params" else adaptx_state(state, key)


def theirs(key, result):
    """``key`` of torch_trajectory's (params, state)."""
    params, state = result
    return params if key == "params" else state[key]


def fuse_alike(name, params):
    """Whether adaptx (XLA) and torch (ATen) fuse ``name``'s multiply-add alike at every element of ``params``."""
    kwargs, start, rows = FMA_PROBE[name]
    key = BIT_IDENTICAL[name][0]
    probe = jax.tree.map(lambda p: np.full(np.shape(p), start, np.float32), params)
    grads = jax.tree.map(lambda p: np.stack([np.full(np.shape(p), g, np.float32) for g in rows]), params)
    return identical(ours(key, scan_trajectory((name, "fma-probe"), getattr(compat, name)(**kwargs), probe, grads)),
                     theirs(key, torch_trajectory(name, kwargs, probe, grads)))


@pytest.mark.parametrize("name", sorted(BIT_IDENTICAL))
def test_bit_identical_where_the_operation_order_is_torchs(name, problem):
    params, grads = problem
    key, ops = BIT_IDENTICAL[name]
    got = ours(key, scan_trajectory((name, ()), getattr(compat, name)(), params, grads))
    want = theirs(key, torch_trajectory(name, {}, params, grads))
    if ops is None or fuse_alike(name, params):
        assert identical(got, want), key
    else:
        gap, within = relative_deviation(got, want), rounding_bound(STEPS, ops, implementations=2)
        assert gap <= within, f"{key}: XLA and ATen fuse differently here, and differ by {gap:.3g} > {within:.3g}"


def _loss(tree, curvature, centre, log, cosh):
    """Σ ½·h·(θ − c)² + log cosh θ with h < 1: convex, curvature below 2, so every preset's
    fixed point is stable (Adadelta at lr = 1 ends as gradient descent with step 1) and
    rounding differences shrink instead of growing."""
    return sum(((0.5 * h * (p - c) ** 2) + log(cosh(p))).sum()
               for p, h, c in zip(jax.tree.leaves(tree), curvature, centre))


LOSS_CASES = {
    "SGD": {"lr": 0.05, "momentum": 0.9, "dampening": 0.1, "weight_decay": 1e-3},
    "Adagrad": {"lr": 0.1, "lr_decay": 1e-3, "weight_decay": 1e-3, "initial_accumulator_value": 0.1},
    "RMSprop": {"lr": 1e-2, "momentum": 0.5, "centered": True, "weight_decay": 1e-3},
    "Adam": {"lr": 1e-2, "amsgrad": True, "weight_decay": 1e-3},
    "AdamW": {"lr": 1e-2, "weight_decay": 0.1},
    "Adadelta": {"lr": 1.0, "weight_decay": 1e-3},
    "Adamax": {"lr": 1e-2, "weight_decay": 1e-3},
    "NAdam": {"lr": 1e-2, "weight_decay": 1e-2, "decoupled_weight_decay": True},
    "RAdam": {"lr": 1e-2, "weight_decay": 1e-2, "decoupled_weight_decay": True},
    "Rprop": {"lr": 1e-3, "etas": (0.4, 1.1)},
}


@pytest.mark.parametrize("name", sorted(LOSS_CASES))
def test_matches_torch_on_a_loss(name, problem):
    """Gradients from each library's autodiff of the same convex loss, fed back for 200 steps;
    the oracle is torch in float64 on the float64 loss of the same numbers."""
    params, grads = problem
    rng = np.random.default_rng(7)
    leaves = jax.tree.leaves(params)
    curvature = [rng.uniform(0.1, 0.9, np.shape(p)).astype(np.float32) for p in leaves]
    centre = [rng.standard_normal(np.shape(p)).astype(np.float32) for p in leaves]
    kwargs = LOSS_CASES[name]
    jax_loss = lambda tree: _loss(tree, curvature, centre, jnp.log, jnp.cosh)

    def torch_loss(dtype):
        return lambda tree: _loss(tree, [torch.tensor(h, dtype=dtype) for h in curvature],
                                  [torch.tensor(c, dtype=dtype) for c in centre], torch.log, torch.cosh)

    got, _ = scan_trajectory((name, "loss"), getattr(compat, name)(**kwargs), params, grads, loss=jax_loss)
    want, _ = torch_trajectory(name, kwargs, params, grads, loss=torch_loss(torch.float32))
    exact, _ = torch_float64_trajectory(name, kwargs, params, grads, loss=torch_loss(torch.float64))
    deviation = {"params": (relative_deviation(got, exact), relative_deviation(want, exact),
                            relative_deviation(got, want))}
    assert_within(name, deviation, kwargs, extra=LOSS_GRADIENT)


@pytest.mark.parametrize("name", compat.__all__)
def test_arguments_and_defaults_are_torchs(name):
    ours = inspect.signature(getattr(compat, name)).parameters.values()
    theirs = list(inspect.signature(getattr(torch.optim, name).__init__).parameters.values())[2:]
    assert [(p.name, p.default, p.kind) for p in ours] == [(p.name, p.default, p.kind) for p in theirs]


@pytest.mark.parametrize("name", compat.__all__)
def test_kernel_options_change_nothing(name):
    """foreach/fused/capturable/differentiable pick torch kernels: every value traces to the same program."""
    accepted = inspect.signature(getattr(compat, name)).parameters
    variants = [{k: True for k in ("foreach", "capturable", "differentiable") if k in accepted},
                {k: False for k in ("foreach", "fused", "capturable", "differentiable") if k in accepted}]
    if "fused" in accepted:
        variants.append({"fused": True})
    params = {"w": jnp.zeros(3)}

    def program(**flags):
        tx = getattr(compat, name)(**flags)
        return str(jax.make_jaxpr(tx.update)(params, tx.init(params), params))

    assert all(program(**flags) == program() for flags in variants)


@pytest.mark.parametrize("build, error, match", [
    (lambda: compat.Adam(lr=-1.0), ValueError, r"^lr must lie in \[0, inf\)"),
    (lambda: compat.Adam(betas=(1.0, 0.999)), ValueError, r"^betas\[0\] must lie in \[0, 1\)"),
    (lambda: compat.NAdam(betas=(0.9, -0.1)), ValueError, r"^betas\[1\]"),
    (lambda: compat.RMSprop(alpha=1.5), ValueError, r"^alpha"),
    (lambda: compat.Adagrad(lr_decay=-1.0), ValueError, r"^lr_decay"),
    (lambda: compat.Adagrad(initial_accumulator_value=-0.1), ValueError, r"^initial_accumulator_value"),
    (lambda: compat.SGD(dampening=1.5, momentum=0.9), ValueError, r"^dampening"),
    (lambda: compat.SGD(nesterov=True), ValueError, "nesterov momentum requires momentum > 0"),
    (lambda: compat.SGD(momentum=0.9, dampening=0.1, nesterov=True), ValueError, "dampening = 0"),
    (lambda: compat.Adam(fused=True, foreach=True), ValueError, "fused and foreach"),
    (lambda: compat.Adam(fused=True, differentiable=True), ValueError, "drop fused"),
    (lambda: compat.Adadelta(capturable="yes"), TypeError, "capturable must be True or False"),
])
def test_bad_arguments_name_torchs_argument(build, error, match):
    with pytest.raises(error, match=match):
        build()


def test_hyperparameters_are_settable_under_torchs_names():
    params = {"w": jnp.ones(3)}
    moved = adaptx.set_hyperparams(compat.SGD(momentum=0.9).init(params), lr=0.5, momentum=0.5,
                                   dampening=0.25, weight_decay=0.1)
    built = compat.SGD(lr=0.5, momentum=0.5, dampening=0.25, weight_decay=0.1).init(params)
    assert identical(moved, built)
    state = compat.Adam(betas=(0.8, 0.99)).init(params)
    assert sorted(adaptx.hyperparams(state)) == ["beta1", "beta2", "eps", "lr", "weight_decay"]


def test_low_precision_params_keep_float32_moments():
    """A deliberate difference: torch keeps Adam's moments in the param dtype, adaptx in float32."""
    weight = torch.nn.Parameter(torch.ones(3, dtype=torch.bfloat16))
    weight.grad = torch.ones(3, dtype=torch.bfloat16)
    optimizer = torch.optim.Adam([weight], foreach=False)
    optimizer.step()
    assert optimizer.state[weight]["exp_avg"].dtype == torch.bfloat16
    params = jnp.ones(3, jnp.bfloat16)
    state = compat.Adam().init(params)
    assert adaptx_state(state, "exp_avg").dtype == jnp.float32
    updates, _ = compat.Adam().update(params, state, params)
    assert updates.dtype == jnp.bfloat16
