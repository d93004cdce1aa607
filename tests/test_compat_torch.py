"""adaptx.compat.torch against torch.optim itself (torch 2.13, float32, CPU).

Both sides get the same precomputed gradients (not loss-dependent, so rounding
differences do not feed back), 200 steps, over a pytree with a scalar and an
empty leaf. Each case runs torch's defaults and two random hyperparameter
draws through one compiled scan; params and the comparable state must agree to
1e-5, each leaf's largest error relative to its largest value
(``_parity.relative_deviation``). Measured: at most 2.1e-6 on params and
1.4e-6 on state. Plain SGD is bit-identical, and so are Adagrad's ``sum`` and
Adamax's ``exp_inf`` at torch's defaults (BIT_IDENTICAL). Elsewhere torch's
lerp, addcdiv and double-precision scalars round differently from adaptx's
blocks, so exact equality is not expected.
"""
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import adaptx
from adaptx._src.adam import AdamMoments, AmsgradMoments, NadamMoments
from adaptx.compat import torch as compat
from adaptx._src.moments import DampedMomentState, MomentState
from adaptx._src.scaling import AccumulatorState, AdadeltaState, RmsState
from adaptx._src.family import ScaleByRpropState
from _parity import (TRACES, identical, log_uniform, random_grads, random_params,
                     relative_deviation, trajectory, uniform)

TOLERANCE = 1e-5

LR, WD, EPS = log_uniform(1e-4, 1e-1), log_uniform(1e-4, 1e-1), log_uniform(1e-10, 1e-3)
MOMENTUM, DAMPENING = uniform(0.1, 0.99), uniform(0.1, 0.9)
BETAS = lambda rng: (uniform(0.0, 0.99)(rng), uniform(0.9, 0.9999)(rng))
ADAM = {"lr": LR, "betas": BETAS, "eps": EPS, "weight_decay": WD}

# (torch class, options that change the structure, numbers drawn at random).
# Draw 0 is torch's defaults plus the options; draws 1 and 2 are random.
CASES = [
    ("SGD", {}, {"lr": LR, "weight_decay": WD}),
    ("SGD", {"momentum": 0.9}, {"lr": LR, "weight_decay": WD, "momentum": MOMENTUM, "dampening": DAMPENING}),
    ("SGD", {"momentum": 0.9, "nesterov": True}, {"lr": LR, "weight_decay": WD, "momentum": MOMENTUM}),
    ("SGD", {"momentum": 0.9, "maximize": True},
     {"lr": LR, "weight_decay": WD, "momentum": MOMENTUM, "dampening": DAMPENING}),
    *[("Adagrad", options, {"lr": LR, "lr_decay": log_uniform(1e-4, 1.0), "weight_decay": WD,
                            "initial_accumulator_value": uniform(0.0, 1.0), "eps": EPS})
      for options in ({}, {"maximize": True})],
    *[("RMSprop", options, {"lr": LR, "alpha": uniform(0.5, 0.999), "eps": EPS, "weight_decay": WD,
                            **({"momentum": MOMENTUM} if "momentum" in options else {})})
      for options in ({}, {"centered": True}, {"momentum": 0.9},
                      {"centered": True, "momentum": 0.9, "maximize": True})],
    *[("Adam", options, ADAM) for options in (
        {}, {"amsgrad": True}, {"decoupled_weight_decay": True},
        {"amsgrad": True, "decoupled_weight_decay": True, "maximize": True})],
    *[("AdamW", options, ADAM) for options in ({}, {"amsgrad": True, "maximize": True})],
    *[("Adadelta", options, {"lr": log_uniform(0.1, 2.0), "rho": uniform(0.5, 0.99), "eps": EPS,
                             "weight_decay": WD}) for options in ({}, {"maximize": True})],
    *[("Adamax", options, ADAM) for options in ({}, {"maximize": True})],
    *[("NAdam", options, {**ADAM, "momentum_decay": log_uniform(1e-4, 1e-1)})
      for options in ({}, {"decoupled_weight_decay": True}, {"maximize": True})],
    *[("RAdam", options, ADAM) for options in ({}, {"decoupled_weight_decay": True, "maximize": True})],
    *[("Rprop", options, {"lr": LR, "etas": lambda rng: (uniform(0.2, 0.8)(rng), uniform(1.05, 1.5)(rng)),
                          "step_sizes": lambda rng: (log_uniform(1e-7, 1e-5)(rng), log_uniform(1.0, 50.0)(rng))})
      for options in ({}, {"maximize": True})],
]

# torch's state name -> where adaptx keeps the same numbers (state type, field).
STATE = {
    "momentum_buffer": [(DampedMomentState, "mu"), (MomentState, "mu")],
    "sum": [(AccumulatorState, "nu")],
    "square_avg": [(RmsState, "nu"), (AdadeltaState, "nu")],
    "grad_avg": [(RmsState, "mu")],
    "acc_delta": [(AdadeltaState, "delta")],
    "exp_avg": [(AdamMoments, "mu"), (AmsgradMoments, "mu"), (NadamMoments, "mu")],
    "exp_avg_sq": [(AdamMoments, "nu"), (AmsgradMoments, "nu"), (NadamMoments, "nu")],
    "max_exp_avg_sq": [(AmsgradMoments, "nu_max")],
    "exp_inf": [(AdamMoments, "nu")],
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
    params = random_params(rng)
    return params, random_grads(rng, params)


def compare(name, options, space, seed, params, grads):
    """Deviations of params and of each comparable state entry, and whether each draw was bit-identical."""
    report = []
    for kwargs in _draws(name, options, space, seed):
        tx = getattr(compat, name)(**kwargs)
        got_params, got_state = trajectory((name, tuple(sorted(options))), tx, params, grads)
        want_params, want_state = torch_trajectory(name, kwargs, params, grads)
        entries = {"params": (got_params, want_params)}
        for key, want in want_state.items():
            got = adaptx_state(got_state, key)
            assert got is not None, f"adaptx keeps no counterpart of torch's {key}"
            entries[key] = (got, want)
        report.append((kwargs, {k: relative_deviation(*pair) for k, pair in entries.items()},
                       identical(got_params, want_params)))
    return report


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_matches_torch_on_fixed_gradients(case, problem):
    name, options, space = case
    report = compare(name, options, space, CASES.index(case), *problem)
    for kwargs, deviations, _ in report:
        assert max(deviations.values()) <= TOLERANCE, (kwargs, deviations)
    # Three sets of numbers, one trace: the hyperparameters are traced state.
    assert TRACES[(name, tuple(sorted(options)))] == 1


# Bit-identical on this x86-64 CPU (XLA and torch both fuse a·b + c into an FMA
# where one is written): plain SGD's params, and the state that sees the same
# operations in the same order at torch's defaults.
BIT_IDENTICAL = {"SGD": ["params"], "Adagrad": ["sum"], "Adamax": ["exp_inf"], "Rprop": ["params", "step_size"]}


@pytest.mark.parametrize("name", sorted(BIT_IDENTICAL))
def test_bit_identical_where_the_operation_order_is_torchs(name, problem):
    params, grads = problem
    tx = getattr(compat, name)()
    got_params, got_state = trajectory((name, ()), tx, params, grads)
    want_params, want_state = torch_trajectory(name, {}, params, grads)
    for key in BIT_IDENTICAL[name]:
        if key == "params":
            assert identical(got_params, want_params)
        else:
            assert identical(adaptx_state(got_state, key), want_state[key]), key


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
LOSS_TOLERANCE = 1e-5


@pytest.mark.parametrize("name", sorted(LOSS_CASES))
def test_matches_torch_on_a_loss(name, problem):
    """Gradients from each library's autodiff of the same convex loss, fed back for 200 steps."""
    params, grads = problem
    rng = np.random.default_rng(7)
    leaves = jax.tree.leaves(params)
    curvature = [rng.uniform(0.1, 0.9, np.shape(p)).astype(np.float32) for p in leaves]
    centre = [rng.standard_normal(np.shape(p)).astype(np.float32) for p in leaves]
    kwargs = LOSS_CASES[name]
    jax_loss = lambda tree: _loss(tree, curvature, centre, jnp.log, jnp.cosh)
    torch_loss = lambda tree: _loss(tree, [torch.tensor(h) for h in curvature],
                                    [torch.tensor(c) for c in centre], torch.log, torch.cosh)
    got, _ = trajectory((name, "loss"), getattr(compat, name)(**kwargs), params, grads, loss=jax_loss)
    want, _ = torch_trajectory(name, kwargs, params, grads, loss=torch_loss)
    assert relative_deviation(got, want) <= LOSS_TOLERANCE


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
