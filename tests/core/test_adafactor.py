"""Adafactor against optax.adafactor, torch.optim.Adafactor and keras.optimizers.Adafactor.

200 float32 steps on precomputed gradients (±10^U(−6, 3)) over a pytree with a
matrix, a rank-3 leaf, a vector and a scalar; one compiled scan per structure.
The tolerance is derived from the step count: TOLERANCE = STEPS · ε_float32
(2.4e-5), each leaf's largest error relative to its largest value
(``harness.relative_deviation``). Measured: ≤ 2e-7 against optax, ≤ 1.5e-7
against torch, ≤ 4.6e-7 against keras.
"""
import inspect
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adaptx
from adaptx._src.factored import factored_axes
from adaptx.compat import keras as kx
from adaptx.compat import torch as ct
from harness import PEER_STEPS as STEPS, relative_deviation, scan_trajectory

TOLERANCE = STEPS * float(np.finfo(np.float32).eps)
# optax factors only axes of ≥ min_dim_size_to_factor elements: 3 here so that both kinds occur.
SHAPES = {"matrix": (5, 7), "rank3": (2, 3, 4), "vector": (6,), "scalar": (), "thin": (2, 9)}


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(12)
    params = {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
    grads = {k: (rng.choice([-1, 1], (STEPS, *s)) * 10.0 ** rng.uniform(-6, 3, (STEPS, *s))).astype(np.float32)
             for k, s in SHAPES.items()}
    return params, grads


@pytest.mark.parametrize("options", [
    dict(),
    # No decay_offset: optax's 1 − (t − offset)^−c is NaN for t ≤ offset (adaptx matches it there too).
    dict(momentum=0.9, weight_decay_rate=1e-3, clipping_threshold=None, decay_rate=0.7),
], ids=["defaults", "momentum-decay-noclip"])
def test_matches_optax(options, problem):
    params, grads = problem
    lr = 0.05
    ours = adaptx.adafactor(lr, 3, relative_step=False, factored_dims="largest", **options)
    theirs = optax.adafactor(lr, 3, **options)
    got, _ = scan_trajectory(("adafactor-optax", tuple(options)), ours, params, grads)
    want, _ = scan_trajectory(("optax.adafactor", tuple(options)), theirs, params, grads)
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(want))
    assert relative_deviation(got, want) <= TOLERANCE


def test_paper_defaults_and_state():
    tx = adaptx.adafactor()
    assert adaptx.hyperparams(tx.init({"w": jnp.ones(3)})) == {
        "learning_rate": 1e-2, "decay_rate": 0.8, "decay_offset": 0.0, "eps": np.float32(1e-30),
        "clipping_threshold": 1.0, "eps_scale": np.float32(1e-3)}
    assert factored_axes((3, 4, 5)) == (1, 2) and factored_axes((7,)) is None
    assert factored_axes((200, 3, 130), min_dim_size_to_factor=128, factored_dims="largest") == (2, 0)


def test_first_step_is_the_relative_step():
    """Step 1: β̂₂₁ = 0, so V̂ = G² (+ε₁) exactly for a rank-1 V̂, u = sign(G), ρ₁ = min(η, 1) = η."""
    w = jnp.full((4, 3), 2.0)
    g = jnp.outer(jnp.array([1.0, -2.0, 3.0, 4.0]), jnp.array([1.0, 2.0, -0.5]))
    tx = adaptx.adafactor(learning_rate=0.01)
    u, _ = tx.update(g, tx.init(w), w)
    np.testing.assert_allclose(u, -0.01 * 2.0 * jnp.sign(g), rtol=1e-6)


def test_factored_state_is_sublinear():
    params = jax.ShapeDtypeStruct((1024, 1024), jnp.float32)
    state = jax.eval_shape(adaptx.adafactor().init, params)
    nbytes = sum(np.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(state))
    assert nbytes / 1024 ** 2 <= 0.01  # (1024 + 1024)·4 bytes + scalars: 0.0078 bytes per parameter


def _torch_run(kwargs, params, grads):
    import torch
    leaves, treedef = jax.tree.flatten(params)
    tensors = [torch.nn.Parameter(torch.tensor(np.array(p))) for p in leaves]
    optimizer = torch.optim.Adafactor(tensors, foreach=False, **kwargs)
    rows = jax.tree.leaves(grads)
    for t in range(STEPS):
        for p, g in zip(tensors, rows):
            p.grad = torch.tensor(g[t])
        optimizer.step()
    state = [optimizer.state[p] for p in tensors]
    return treedef.unflatten([p.detach().numpy() for p in tensors]), state


@pytest.mark.parametrize("kwargs", [
    dict(),
    dict(lr=0.05, beta2_decay=-0.6, eps=(1e-20, 1e-2), d=1.5, weight_decay=0.01, maximize=True),
], ids=["defaults", "drawn"])
@pytest.mark.parity
def test_matches_torch(kwargs, problem):
    params, grads = problem
    got, state = scan_trajectory(("torch.Adafactor", tuple(kwargs)), ct.Adafactor(**kwargs), params, grads)
    want, torch_state = _torch_run(kwargs, params, grads)
    assert relative_deviation(got, want) <= TOLERANCE
    from adaptx._src.factored import FactoredMoments
    moments = next(n for n in jax.tree.leaves(state, is_leaf=lambda n: isinstance(n, FactoredMoments))
                   if isinstance(n, FactoredMoments))
    for leaf, v_row, v_col, v, theirs in zip(jax.tree.leaves(params), *map(jax.tree.leaves, moments), torch_state):
        if leaf.ndim >= 2:
            assert relative_deviation([v_row, v_col], [theirs["row_var"].numpy()[..., 0],
                                                       theirs["col_var"].numpy()[..., 0, :]]) <= TOLERANCE
        else:
            assert relative_deviation([v], [theirs["variance"].numpy()]) <= TOLERANCE


def _keras_run(kwargs, params, grads):
    import keras
    leaves, treedef = jax.tree.flatten(params)
    optimizer = keras.optimizers.Adafactor(**kwargs)
    variables = [keras.Variable(p) for p in leaves]
    optimizer.build(variables)

    def step(carry, g):
        return optimizer.stateless_apply(carry[1], jax.tree.leaves(g), carry[0]), None

    start = ([v.value for v in variables], [v.value for v in optimizer.variables])
    return treedef.unflatten(jax.jit(lambda g: jax.lax.scan(step, start, g)[0][0])(grads))


@pytest.mark.parametrize("kwargs", [
    dict(),
    dict(learning_rate=0.05, beta_2_decay=-0.6, epsilon_1=1e-20, epsilon_2=1e-2, clip_threshold=1.5),
], ids=["defaults", "drawn"])
@pytest.mark.parity
def test_matches_keras(kwargs, problem):
    import keras
    assert keras.backend.backend() == "jax", "keras was imported with another backend: set KERAS_BACKEND=jax"
    params, grads = problem
    got, _ = scan_trajectory(("keras.Adafactor", tuple(kwargs)), kx.Adafactor(**kwargs), params, grads)
    assert relative_deviation(got, _keras_run(kwargs, params, grads)) <= TOLERANCE


@pytest.mark.parity
def test_signatures_are_the_libraries():
    import keras
    import torch
    theirs = inspect.signature(keras.optimizers.Adafactor.__init__).parameters
    theirs = [(p.name, p.default) for p in theirs.values() if p.name != "self" and p.kind != p.VAR_KEYWORD]
    assert [(p.name, p.default) for p in inspect.signature(kx.Adafactor).parameters.values()] == theirs
    theirs = inspect.signature(torch.optim.Adafactor.__init__).parameters
    theirs = [(p.name, p.default) for p in theirs.values() if p.name not in ("self", "params")]
    assert [(p.name, p.default) for p in inspect.signature(ct.Adafactor).parameters.values()] == theirs
    optax_names = list(inspect.signature(optax.adafactor).parameters)
    ours = [n for n in inspect.signature(adaptx.adafactor).parameters if n in optax_names]
    assert ours == [n for n in optax_names if n != "dtype_momentum"]


def test_invalid_arguments_name_the_library_argument():
    with pytest.raises(ValueError, match="beta2_decay"):
        ct.Adafactor(beta2_decay=0.5)
    with pytest.raises(ValueError, match="clipping_threshold"):
        adaptx.adafactor(clipping_threshold=0.5)
    with pytest.raises(ValueError, match="clip_threshold"):
        adaptx.set_hyperparams(kx.Adafactor().init(jnp.ones(2)), clip_threshold=0.5)
