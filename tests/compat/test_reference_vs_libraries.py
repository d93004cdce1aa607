"""The NumPy references themselves against torch.optim and optax, in float64.

A reference that misread a paper would pass adaptx's tests if adaptx made
the same mistake; checking it against two independent libraries, where they
implement the same equation, rules that out. torch covers every optimizer but
RMSProp's ``eps_in_sqrt``/Nesterov options and NAdam without the momentum
schedule, which optax covers.

Both sides are float64, so the bound is ``harness.rounding_bound`` for two
float64 programs over 30 steps of the algorithm (STEP_COST), about 1e-13; torch's
updates are recovered as θ_after − θ_before, which adds the rounding of θ_after,
half an ulp of θ, to an update that may be 1e4 times smaller (``cancellation``).
"""
import zlib

import jax
import numpy as np
import optax
import pytest
import torch

import reference as ref
from harness import gradient_sequence, log_uniform, random_params, relative_error, rounding_bound, step_cost, uniform

STEPS = 30


def draw(rng):
    return {
        "lr": log_uniform(rng, 1e-4, 1e-1), "momentum": uniform(rng, 0.5, 0.99),
        "decay": uniform(rng, 0.8, 0.999), "b1": uniform(rng, 0.5, 0.99), "b2": uniform(rng, 0.9, 0.999),
        "eps": log_uniform(rng, 1e-8, 1e-3), "weight_decay": log_uniform(rng, 1e-4, 1e-1),
        "psi": log_uniform(rng, 1e-3, 1e-1), "accumulator": uniform(rng, 0.0, 1.0),
    }


TORCH = {
    "sgd-nesterov": (
        lambda p, h: torch.optim.SGD(p, lr=h["lr"], momentum=h["momentum"], nesterov=True),
        lambda p, h: ref.SGD(p, h["lr"], h["momentum"], nesterov=True)),
    "adagrad": (
        lambda p, h: torch.optim.Adagrad(p, lr=h["lr"], eps=h["eps"], initial_accumulator_value=h["accumulator"]),
        lambda p, h: ref.Adagrad(p, h["lr"], h["eps"], h["accumulator"])),
    "rmsprop-centered-momentum": (
        lambda p, h: torch.optim.RMSprop(p, lr=h["lr"], alpha=h["decay"], eps=h["eps"], centered=True,
                                         momentum=h["momentum"]),
        lambda p, h: ref.RMSProp(p, h["lr"], h["decay"], h["eps"], centered=True, momentum=h["momentum"])),
    "adam-amsgrad": (
        lambda p, h: torch.optim.Adam(p, lr=h["lr"], betas=(h["b1"], h["b2"]), eps=h["eps"], amsgrad=True),
        lambda p, h: ref.Adam(p, h["lr"], h["b1"], h["b2"], h["eps"], amsgrad=True)),
    "adamw": (
        lambda p, h: torch.optim.AdamW(p, lr=h["lr"], betas=(h["b1"], h["b2"]), eps=h["eps"],
                                       weight_decay=h["weight_decay"]),
        lambda p, h: ref.Adam(p, h["lr"], h["b1"], h["b2"], h["eps"], weight_decay=h["weight_decay"])),
    "adadelta": (
        lambda p, h: torch.optim.Adadelta(p, lr=h["lr"], rho=h["decay"], eps=h["eps"]),
        lambda p, h: ref.Adadelta(p, h["lr"], h["decay"], h["eps"])),
    "adamax": (
        lambda p, h: torch.optim.Adamax(p, lr=h["lr"], betas=(h["b1"], h["b2"]), eps=h["eps"]),
        lambda p, h: ref.Adamax(p, h["lr"], h["b1"], h["b2"], h["eps"])),
    "nadam": (
        lambda p, h: torch.optim.NAdam(p, lr=h["lr"], betas=(h["b1"], h["b2"]), eps=h["eps"],
                                       momentum_decay=h["psi"]),
        lambda p, h: ref.NAdam(p, h["lr"], h["b1"], h["b2"], h["eps"], h["psi"])),
}

OPTAX = {
    "rmsprop-eps_in_sqrt-centered-nesterov": (
        lambda h: optax.rmsprop(h["lr"], h["decay"], h["eps"], eps_in_sqrt=True, centered=True,
                                momentum=h["momentum"], nesterov=True),
        lambda p, h: ref.RMSProp(p, h["lr"], h["decay"], h["eps"], eps_in_sqrt=True, centered=True,
                                 momentum=h["momentum"], nesterov=True)),
    "nadam-constant-momentum": (
        lambda h: optax.nadam(h["lr"], h["b1"], h["b2"], h["eps"]),
        lambda p, h: ref.NAdam(p, h["lr"], h["b1"], h["b2"], h["eps"], momentum_decay=None)),
    "adagrad-eps_in_sqrt": (
        lambda h: optax.chain(optax.scale_by_rss(h["accumulator"], h["eps"]), optax.scale(-h["lr"])),
        lambda p, h: ref.Adagrad(p, h["lr"], h["eps"], h["accumulator"], eps_in_sqrt=True)),
}


def problem(name):
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    params = jax.tree.leaves(random_params(rng, np.float64))
    values = draw(rng)
    return values, params, jax.tree.leaves(gradient_sequence(params, STEPS, rng, np.float64))


def cancellation(params, expected):
    """Per leaf, what rounding θ_after to float64 adds to an update recovered as θ_after − θ_before,
    relative to the leaf's largest update: an ulp of the largest |θ| (half for the rounding, half spare)."""
    eps = float(np.finfo(np.float64).eps)
    return [eps * max(np.max(np.abs(p[i]), initial=0.0) for p in params)
            / max(np.max(np.abs(e[i]), initial=0.0) for e in expected) if np.size(params[0][i]) else 0.0
            for i in range(len(expected[0]))]


def assert_close(name, actual, expected, extra=None):
    """Each leaf over the run within rounding_bound of two float64 programs, plus ``extra[leaf]``."""
    within = rounding_bound(STEPS, *step_cost(name), implementations=2, dtype=np.float64)
    for i in range(len(expected[0])):
        error = relative_error(np.stack([a[i] for a in actual]), np.stack([e[i] for e in expected]))
        bound = within + (extra[i] if extra else 0.0)
        assert error <= bound, f"{name}: leaf {i} relative error {error:.3g} > {bound:.3g}"


@pytest.fixture
def torch_float64():
    """float64 as torch's default: it then keeps its step counts and NAdam's ∏μ in float64 too."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(default)


@pytest.mark.parametrize("name", sorted(TORCH))
def test_reference_matches_torch(name, torch_float64):
    make_torch, make_reference = TORCH[name]
    values, params, grads = problem(name)
    tensors = [torch.tensor(p, requires_grad=True) for p in params]
    optimizer, model = make_torch(tensors, values), make_reference(params, values)
    actual, expected, seen = [], [], []
    for t in range(STEPS):
        before = [x.detach().clone() for x in tensors]
        for x, g in zip(tensors, grads):
            x.grad = torch.tensor(g[t])
        optimizer.step()
        actual.append([(x.detach() - b).numpy() for x, b in zip(tensors, before)])
        expected.append(model.step([g[t] for g in grads], [b.numpy() for b in before]))
        seen.append([x.detach().numpy().copy() for x in tensors])
    assert_close(name, actual, expected, cancellation(seen, expected))


@pytest.mark.parametrize("name", sorted(OPTAX))
def test_reference_matches_optax(name):
    make_optax, make_reference = OPTAX[name]
    with jax.enable_x64(True):
        values, params, grads = problem(name)
        tx, model = make_optax(values), make_reference(params, values)
        state, update, actual, expected = tx.init(params), jax.jit(tx.update), [], []
        for t in range(STEPS):
            step_grads = [np.asarray(g[t]) for g in grads]
            updates, state = update(step_grads, state, params)
            actual.append(jax.device_get(updates))
            expected.append(model.step(step_grads, params))
    assert_close(name, actual, expected)
