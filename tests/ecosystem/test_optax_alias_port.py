"""optax's own alias tests, ported to adaptx's optimizers.

Source: ``optax/_src/alias_test.py`` of github.com/google-deepmind/optax
(commit 2edbcbe2390da13983b92cbef94ac0460ecde1c5, Apache-2.0), ported test by
test and keeping its structure: ``_OPTIMIZERS_UNDER_TEST``, ``_setup_parabola``
and ``_setup_rosenbrock`` with optax's starting points, targets, learning rates
and tolerances (3e-2 after 10 000 steps), optax's complex convention (gradients
conjugated before the update), and one case per optax test:

- ``test_optimization``: parabola and Rosenbrock, float32 and complex64, the
  state accepted by ``optax.tree.map_params``, no recompilation on the 2nd call;
- ``test_optimizers_accept_extra_args``: ``update(..., unexpected_kwarg=1)``;
- ``test_optimizers_can_be_wrapped_in_inject_hyperparams``;
- ``test_explicit_dtype``, ``test_preserve_dtype``;
- ``test_state_shape_dtype_shard_stability`` (the lax.cond trick);
- ``test_gradient_accumulation`` (``optax.MultiSteps``).

Changes from the original: pytest parametrization instead of absl; chex
assertions instead of optax's ``test_utils``; adaptx's optimizers and argument
names (``mu_dtype`` for sgd's ``accumulator_dtype``; adaptx keeps bfloat16 and
float16 params' moments in float32 by default, where optax keeps the param
dtype); the 10 000 steps run inside one jitted ``lax.fori_loop`` (one compilation
per case, and the "no recompilation on the 2nd call" check is a trace count);
adadelta is not skipped on the complex parabola (adaptx promises optax's complex
semantics, |g|² = g·conj(g), for every optimizer), only on the complex Rosenbrock;
adamw gets optax's default weight decay 1e-4 explicitly (adaptx's default is 1e-2); to keep the compile count
down, the stability test runs bfloat16 and float64 only (float32 and complex64
get the same check from test_optimization's fori_loop; float16 and complex128
take the paths of bfloat16 and float64 / complex64), gradient accumulation
bfloat16 only, and preserve_dtype and the inject_hyperparams equality eagerly
(the jitted inject_hyperparams update is covered by the edited-state test below).

Added beyond optax's file, for the parts of the optax protocol that adaptx's
redesign has to meet:

- ``inject_hyperparams`` with a *schedule* or with an edited
  ``state.hyperparams`` value must change the step, as it does for optax;
- ``chain`` forwards extra keyword arguments to its members;
- ``init`` on ``jax.ShapeDtypeStruct`` leaves and under ``jax.eval_shape``;
- complex64 trajectories equal optax's where the equations agree;
- ``optax.tree.get(state, "count")`` finds one count, and ``optax.tree.set``
  of hyperparameters gives what ``adaptx.set_hyperparams`` gives.
"""
import functools
import inspect

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adaptx

# (name, factory, kwargs): optax's list, restricted to the optimizers adaptx has, with
# optax's learning rates. amsgrad is adaptx.adam(amsgrad=True); nadam is run both with
# adaptx's default (torch's momentum schedule) and with optax's constant momentum.
_OPTIMIZERS_UNDER_TEST = (
    ("adadelta", adaptx.adadelta, {"learning_rate": 0.1}),
    ("adadelta", adaptx.adadelta, {}),
    ("adagrad", adaptx.adagrad, {"learning_rate": 1.0}),
    ("adam", adaptx.adam, {"learning_rate": 1e-1}),
    ("adamax", adaptx.adamax, {"learning_rate": 1e-1}),
    # optax's default weight decay, 1e-4: at adaptx's 1e-2 the decoupled decay moves the
    # Rosenbrock fixed point 0.05-0.08 away from (1, 1) after 10 000 steps, at or past the
    # 3e-2 + 3e-2 tolerance (optax.adamw at 1e-2 misses it: 0.08).
    ("adamw", adaptx.adamw, {"learning_rate": 1e-1, "weight_decay": 1e-4}),
    ("amsgrad", functools.partial(adaptx.adam, amsgrad=True), {"learning_rate": 1e-1}),
    ("nadam", adaptx.nadam, {"learning_rate": 1e-2}),
    ("nadam", adaptx.nadam, {"learning_rate": 1e-2, "momentum_decay": None}),
    ("rmsprop", adaptx.rmsprop, {"learning_rate": 5e-3}),
    ("rmsprop", adaptx.rmsprop, {"learning_rate": 5e-3, "momentum": 0.9}),
    ("sgd", adaptx.sgd, {"learning_rate": 1e-3, "momentum": 0.9}),
    # the adaptive family (issue 13), with optax's learning rates
    ("adabelief", adaptx.adabelief, {"learning_rate": 1e-2}),
    ("adamaxw", adaptx.adamaxw, {"learning_rate": 1e-1}),
    ("lamb", adaptx.lamb, {"learning_rate": 1e-3}),
    ("lion", adaptx.lion, {"learning_rate": 1e-2, "weight_decay": 1e-4}),
    ("nadamw", adaptx.nadamw, {"learning_rate": 1e-2, "momentum_decay": None}),
    ("radam", adaptx.radam, {"learning_rate": 5e-3}),
    ("yogi", adaptx.yogi, {"learning_rate": 1e-1}),
    ("rprop", adaptx.rprop, {"learning_rate": 1e-1}),
    ("novograd", adaptx.novograd, {"learning_rate": 1e-3}),
    ("adan", adaptx.adan, {"learning_rate": 1e-1}),
    ("adopt", adaptx.adopt, {"learning_rate": 1e-2}),
    ("ademamix", adaptx.ademamix, {"learning_rate": 1e-2}),
    ("prodigy", adaptx.prodigy, {}),
)
_IDS = [name + "".join(f"-{k.replace('learning_rate', 'lr')}={v}" for k, v in kwargs.items())
        for name, _, kwargs in _OPTIMIZERS_UNDER_TEST]
assert len(set(_IDS)) == len(_IDS)
_each_optimizer = pytest.mark.parametrize("opt_name, opt_factory, opt_kwargs", _OPTIMIZERS_UNDER_TEST, ids=_IDS)


def _abs_sq(x):
    """optax.numerics.abs_sq: |x|², real for complex x."""
    return (x.conj() * x).real


def _setup_parabola(dtype):
    """Quadratic function as an optimization target."""
    initial_params = jnp.array([-1.0, 10.0, 1.0], dtype=dtype)
    final_params = jnp.array([1.0, -1.0, 1.0], dtype=dtype)

    if jnp.iscomplexobj(dtype):
        final_params *= 1 + 1j

    def objective(params):
        return jnp.sum(_abs_sq(params - final_params))

    return initial_params, final_params, objective


def _setup_rosenbrock(dtype):
    """Rosenbrock function as an optimization target."""
    a = 1.0
    b = 100.0

    if jnp.iscomplexobj(dtype):
        a *= 1 + 1j

    initial_params = jnp.array([0.0, 0.0], dtype=dtype)
    final_params = jnp.array([a, a**2], dtype=dtype)

    def objective(params):
        return _abs_sq(a - params[0]) + b * _abs_sq(params[1] - params[0] ** 2)

    return initial_params, final_params, objective


def _conj_grad(objective, params):
    # Complex gradients need to be conjugated before being added to parameters
    # https://gist.github.com/wdphy16/118aef6fb5f82c49790d7678cf87da29
    value, grads = jax.value_and_grad(objective)(params)
    return value, jax.tree.map(lambda x: x.conj(), grads)


@_each_optimizer
@pytest.mark.parametrize("target", [_setup_parabola, _setup_rosenbrock], ids=["parabola", "rosenbrock"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.complex64], ids=["float32", "complex64"])
def test_optimization(opt_name, opt_factory, opt_kwargs, target, dtype):
    if opt_name == "adadelta" and target is _setup_rosenbrock and jnp.iscomplexobj(dtype):
        # optax skips adadelta on all complex params (it does not support them); adaptx
        # keeps the complex parabola. A reference adadelta with optax's complex semantics
        # (E[|g|²], E[|Δ|²]) ends ~0.3 from the complex Rosenbrock minimum after 10 000 steps
        # at lr 0.1 (and is within only 0.03 of the real one), so this case asks too much.
        pytest.skip(f"{opt_name} does not reach the complex Rosenbrock minimum in 10 000 steps.")
    if opt_name == "prodigy" and target is _setup_rosenbrock and jnp.iscomplexobj(dtype):
        # Measured after 10 000 steps: adaptx at (0.95 + 0.95j, 0.0003 + 1.82j), 0.18 from the
        # minimum (1 + 1j, 2j); optax.contrib.prodigy stalls at ±0.015(1 − j), its complex
        # ⟨g, x₀ − x⟩ being a complex vdot. The complex parabola and real Rosenbrock pass.
        pytest.skip("prodigy's distance estimate does not bring it within 0.03 of the complex Rosenbrock minimum")
    opt = opt_factory(**opt_kwargs)
    initial_params, final_params, objective = target(dtype)
    traces = []

    def step(params, state):
        _, updates = _conj_grad(objective, params)
        updates, state = opt.update(updates, state, params)
        return optax.apply_updates(params, updates), state

    @jax.jit
    def run(params, state, steps):
        traces.append(None)  # once per compilation
        return jax.lax.fori_loop(0, steps, lambda _, carry: step(*carry), (params, state))

    params = initial_params
    state = opt.init(params)

    # Test that tree_map_params works: a no-op change, to verify that tree map works.
    state = optax.tree.map_params(opt, lambda v: v, state)

    # Test that optimization works; the first call takes one step, and the second,
    # with the state that step returned, must not recompile.
    params, state = run(params, state, 1)
    params, state = run(params, state, 9_999)
    assert len(traces) == 1, "Optimizer recompiles on second call to 'update'."

    if opt_name == "adadelta" and "learning_rate" not in opt_kwargs:
        pytest.skip(f"{opt_name} needs a learning rate below 1 for numerically stable optimization in practice.")
    chex.assert_trees_all_close(params, final_params, rtol=3e-2, atol=3e-2)


@_each_optimizer
def test_optimizers_accept_extra_args(opt_name, opt_factory, opt_kwargs):
    opt = opt_factory(**opt_kwargs)
    # intentionally omitted: opt = optax.with_extra_args_support(opt)
    initial_params, _, objective = _setup_rosenbrock(jnp.float32)

    @jax.jit
    def step(params, state):
        _, updates = jax.value_and_grad(objective)(params)
        update_kwargs = {"unexpected_extra_args_your_optimizer_doesnt_expect": 1}
        updates, state = opt.update(updates, state, params, **update_kwargs)
        return optax.apply_updates(params, updates), state

    params = initial_params
    state = opt.init(params)

    # Test that update works with extra values.
    for _ in range(2):
        params, state = step(params, state)
    chex.assert_tree_all_finite(params)


def _scale_by_extra_arg():
    """An optax transformation that needs an extra argument: u = g · gain."""
    def update(updates, state, params=None, *, gain, **extra_args):
        del params, extra_args
        return jax.tree.map(lambda g: g * gain, updates), state

    return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update)


def test_chain_forwards_extra_args():
    """adaptx.chain hands keyword arguments on to its members (as optax.chain does);
    members that take none, adaptx's included, must accept and ignore them."""
    params = {"w": jnp.array([1.0, -2.0])}
    grads = {"w": jnp.array([0.5, 0.25])}
    tx = adaptx.chain(adaptx.clip_by_global_norm(10.0), _scale_by_extra_arg(), adaptx.sgd(1.0))
    updates, _ = tx.update(grads, tx.init(params), params, gain=3.0, unexpected=1)
    chex.assert_trees_all_equal(updates, {"w": jnp.array([-1.5, -0.75])})


@_each_optimizer
def test_optimizers_can_be_wrapped_in_inject_hyperparams(opt_name, opt_factory, opt_kwargs):
    """Checks that optimizers can be wrapped in inject_hyperparams."""
    # See also https://github.com/google-deepmind/optax/issues/412.
    opt = opt_factory(**opt_kwargs)
    if opt_kwargs.get("momentum", 0) == 0 and "momentum" in inspect.signature(opt_factory).parameters:
        # A momentum of exactly 0 builds no momentum buffer; injected, it arrives as an
        # array (traced under jit) and cannot be told from a nonzero one, so it has to be
        # static for the states to match, as optax's test does for adafactor's
        # min_dim_size_to_factor.
        opt_inject = optax.inject_hyperparams(opt_factory, static_args=("momentum",))(**opt_kwargs)
    else:
        opt_inject = optax.inject_hyperparams(opt_factory)(**opt_kwargs)

    params = [jnp.negative(jnp.ones((2, 3))), jnp.ones((2, 5, 2))]
    grads = [jnp.ones((2, 3)), jnp.negative(jnp.ones((2, 5, 2)))]

    state = opt.init(params)
    # Eager, for time, where optax jits all four calls: the jitted inject_hyperparams
    # update is test_inject_hyperparams_edited_state_value_takes_effect's.
    updates, new_state = opt.update(grads, state, params)

    state_inject = opt_inject.init(params)
    updates_inject, new_state_inject = opt_inject.update(grads, state_inject, params)

    # Equality of updates.
    chex.assert_trees_all_close(updates_inject, updates, rtol=1e-3)
    # Equality of new optimizer states. adaptx departs from optax's test here by design:
    # hyperparameters given as numbers are state, those given as jax arrays (as
    # inject_hyperparams passes them) are the caller's and not copied, so the injected inner
    # state holds no hyperparameters; everything else (count, moments) must agree.
    # (inject_hyperparams injects scalars only: prodigy's betas, a tuple, reach it as Python
    # numbers, which adaptx stores as for any optimizer built with numbers)
    left = {"b1", "b2"} if opt_name == "prodigy" else set()
    assert set(new_state_inject.inner_state.hyperparams) == left
    # ademamix's slow EMA weighs g by 1 − β₃ = 1e-4, which inject_hyperparams' float32 β₃
    # moves by 1.7e-4 relative (1 − fl32(0.9999)); adaptx rounds 1 − β₃ from double.
    rtol = 2e-4 if opt_name == "ademamix" else 1e-4
    chex.assert_trees_all_close(new_state_inject.inner_state._replace(hyperparams={}),
                                new_state._replace(hyperparams={}), rtol=rtol)


# Pairs computing the same equation (as the docstrings in adaptx/_src/aliases.py say),
# the adaptx factory built with the options that make it optax's.
_SAME_AS_OPTAX = {
    "sgd": (functools.partial(adaptx.sgd, momentum=0.9), functools.partial(optax.sgd, momentum=0.9)),
    "adagrad": (lambda learning_rate: adaptx.adagrad(learning_rate, 0.1, 1e-7, eps_in_sqrt=True), optax.adagrad),
    "rmsprop": (functools.partial(adaptx.rmsprop, eps_in_sqrt=True), optax.rmsprop),
    "adam": (adaptx.adam, optax.adam),
    "adamw": (functools.partial(adaptx.adamw, weight_decay=1e-4), optax.adamw),
    "adamax": (adaptx.adamax, optax.adamax),
    "nadam": (functools.partial(adaptx.nadam, momentum_decay=None), optax.nadam),
    "adabelief": (adaptx.adabelief, optax.adabelief),
    "adamaxw": (adaptx.adamaxw, optax.adamaxw),
    "lamb": (adaptx.lamb, optax.lamb),
    "lion": (adaptx.lion, optax.lion),
    "nadamw": (functools.partial(adaptx.nadamw, momentum_decay=None), optax.nadamw),
    "radam": (adaptx.radam, optax.radam),
    "yogi": (adaptx.yogi, optax.yogi),
    "novograd": (adaptx.novograd, optax.novograd),
    # optax weighs Adan's gradient difference by 1 − β₂ = 0.08 where the paper has β₂ = 0.92
    "adan": (functools.partial(adaptx.adan, diff_weight=0.08), optax.adan),
    # (adopt is not here: optax.contrib.adopt clips complex values, which jnp.clip refuses, and
    # inject_hyperparams evaluates its clip_value_fn as a schedule; test_family compares it.)
    "ademamix": (adaptx.ademamix, optax.contrib.ademamix),
}

# Tolerance of a float32 adaptx run against a float32 run of the same equation (optax's,
# or adaptx's own with the hyperparameters rounded to float32 first, as inject_hyperparams
# does). Per update, the two differ by
# (i) rounding: ~10 float32 ops per element, each ≤ 2**-24 ≈ 6e-8 relative, ~1e-6 in all;
# (ii) the bias correction 1 − β₂ᵗ where one side computes it in float32 (optax does):
#     β₂ᵗ is then within ~2 ulp of 1 (2 × 2**-24 ≈ 1.2e-7; CPU's repeated squaring does
#     better, an exp∘log pow no worse), against 1 − β₂ᵗ ≥ 2e-3 for t ≥ 2 at β₂ = 0.999:
#     ≤ 6e-5 relative in v̂, ≤ 3e-5 in the update (through the square root); adaptx
#     rounds 1 − β from double (see test_optax_parity.py);
# (iii) β itself rounded to float32 on one side only: ≤ 2**-25 absolute, which moves the
#     normalised moment weights by ~t·2**-25, below 1e-6 over these few steps.
# So each update agrees to 4e-5 of its size (all three, rounded up), and after n steps
# the params agree to 4e-5 × the path length Σₜ max|uₜ| of the reference run. Over the few
# steps compared here the feedback of so small a param difference through the gradient
# is far below that. A misapplied hyperparameter moves the updates by O(1) relative.
PER_UPDATE_RTOL = 4e-5


def _assert_same_trajectory(got, want):
    """``got`` and ``want``: lists of per-step updates (single arrays). Compares the running
    params offsets Σ updates with atol = PER_UPDATE_RTOL × path length so far."""
    path = 0.0
    got_sum = want_sum = 0
    for t, (g, w) in enumerate(zip(got, want), 1):
        path += float(np.max(np.abs(np.asarray(w))))
        got_sum, want_sum = got_sum + np.asarray(g, np.complex128), want_sum + np.asarray(w, np.complex128)
        np.testing.assert_allclose(got_sum, want_sum, rtol=0, atol=PER_UPDATE_RTOL * path, err_msg=f"step {t}")


# A warmup-cosine schedule: 0 at step 0, so an optimizer that ignores the injected
# value (and keeps the one it saw at init) is caught at once.
_SCHEDULE = optax.warmup_cosine_decay_schedule(0.0, 0.1, warmup_steps=3, decay_steps=8)
_SCHEDULE_STEPS = 6


def _updates_along(opt, params, grads_fn, steps):
    """The updates of ``steps`` steps of ``opt`` from ``params``, params moving with them.

    Eager, op by op: a compilation per optimizer would cost more than the steps (the
    jitted path of inject_hyperparams is test_inject_hyperparams_edited_state_value_takes_effect's).
    """
    state, out = opt.init(params), []
    for _ in range(steps):
        updates, state = opt.update(grads_fn(params), state, params)
        params = optax.apply_updates(params, updates)
        out.append(updates)
    return out


def _parabola_grads(params):
    return jax.grad(_setup_parabola(jnp.float32)[2])(params)


@_each_optimizer
def test_inject_hyperparams_schedule_matches_native_schedule(opt_name, opt_factory, opt_kwargs):
    """optax.inject_hyperparams(adaptx.X)(learning_rate=schedule) trains like adaptx.X(learning_rate=schedule):
    the value injected at each step is the one the step uses. inject_hyperparams hands
    every number over as a float32 array (β rounded to float32 before 1 − β is taken), so
    the tolerance is PER_UPDATE_RTOL's, not bit equality."""
    if opt_name == "rprop":
        pytest.skip("rprop's learning rate is its initial step size, read at init (optax's takes no schedule either)")
    params = _setup_parabola(jnp.float32)[0]
    kwargs = {**opt_kwargs, "learning_rate": _SCHEDULE}
    injected = _updates_along(optax.inject_hyperparams(opt_factory)(**kwargs), params, _parabola_grads, _SCHEDULE_STEPS)
    native = _updates_along(opt_factory(**kwargs), params, _parabola_grads, _SCHEDULE_STEPS)
    assert np.any(np.asarray(native[1]) != 0), "the schedule's second value is nonzero"
    _assert_same_trajectory(injected, native)


@pytest.mark.parametrize("name", sorted(_SAME_AS_OPTAX))
def test_inject_hyperparams_schedule_matches_optax(name):
    """optax.inject_hyperparams(adaptx.X)(learning_rate=schedule) trains like
    optax.inject_hyperparams(optax.X)(learning_rate=schedule)."""
    ours, theirs = _SAME_AS_OPTAX[name]
    params = _setup_parabola(jnp.float32)[0]
    got = _updates_along(optax.inject_hyperparams(ours)(learning_rate=_SCHEDULE), params, _parabola_grads,
                         _SCHEDULE_STEPS)
    want = _updates_along(optax.inject_hyperparams(theirs)(learning_rate=_SCHEDULE), params, _parabola_grads,
                          _SCHEDULE_STEPS)
    _assert_same_trajectory(got, want)


@_each_optimizer
def test_inject_hyperparams_edited_state_value_takes_effect(opt_name, opt_factory, opt_kwargs):
    """optax's documented use of inject_hyperparams: edit ``state.hyperparams[name]``
    between steps. A learning rate set to 0 must give a zero update."""
    if opt_name == "rprop":
        pytest.skip("rprop's learning rate is its initial step size, read at init: editing it later changes nothing")
    if opt_name == "adopt":
        pytest.skip("ADOPT's first update only initialises v and is 0 by design (Taniguchi et al., 2024)")
    params = _setup_parabola(jnp.float32)[0]
    opt = optax.inject_hyperparams(opt_factory)(**{**opt_kwargs, "learning_rate": 0.1})
    update = jax.jit(opt.update)
    state = opt.init(params)
    updates, state = update(_parabola_grads(params), state, params)
    assert np.any(np.asarray(updates) != 0)
    state.hyperparams["learning_rate"] = jnp.zeros_like(state.hyperparams["learning_rate"])
    updates, state = update(_parabola_grads(params), state, params)
    chex.assert_trees_all_equal(updates, jnp.zeros_like(updates))


_DTYPES = ("bfloat16", "float32", "complex64", None)


@pytest.mark.parametrize("params_dtype", _DTYPES)
@pytest.mark.parametrize("state_dtype", _DTYPES)
@pytest.mark.parametrize("opt_name", ["sgd_mom", "adam", "adamw"])
def test_explicit_dtype(params_dtype, state_dtype, opt_name):
    if opt_name == "sgd_mom":
        opt = adaptx.sgd(0.1, momentum=0.9, mu_dtype=state_dtype)
    else:
        opt = {"adam": adaptx.adam, "adamw": adaptx.adamw}[opt_name](0.1, mu_dtype=state_dtype)
    attribute_name = "mu"

    params_dtype = jax.dtypes.canonicalize_dtype(params_dtype)
    params = jnp.array([0.0, 0.0], dtype=params_dtype)
    state = opt.init(params)

    # Test that attribute dtype is correct.
    if state_dtype is None:
        # adaptx, unlike optax, keeps the moments of half-precision params in float32.
        expected_dtype = jnp.dtype(jnp.float32) if params_dtype == jnp.bfloat16 else params_dtype
    else:
        expected_dtype = jax.dtypes.canonicalize_dtype(state_dtype)
    attribute = optax.tree.get(state, attribute_name)
    assert attribute.dtype == expected_dtype


@_each_optimizer
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_preserve_dtype(opt_name, opt_factory, opt_kwargs, dtype):
    """Test that the optimizers return updates of same dtype as gradients."""
    dtype = jnp.dtype(dtype)
    opt = opt_factory(**opt_kwargs)
    fun = lambda x: jnp.sum(x**2)  # noqa: E731

    params = jnp.array([1.0, 2.0], dtype=dtype)
    grads = jax.grad(fun)(params)
    state = opt.init(params)
    updates, _ = opt.update(grads, state, params)  # eager: optax jits, but the dtype rules are the same
    assert updates.dtype == grads.dtype


def _avals(tree):
    """Shape, dtype, weak type and sharding of every leaf: what a jitted loop carries."""
    return jax.tree.map(lambda x: (jax.typeof(x), getattr(x, "sharding", None)), tree)


@_each_optimizer
# float32 and complex64 are covered by test_optimization, whose lax.fori_loop carry must keep
# its exact types (weak types included) from step to step.
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float64], ids=["bfloat16", "float64"])
def test_state_shape_dtype_shard_stability(opt_name, opt_factory, opt_kwargs, dtype):
    with jax.enable_x64(dtype == jnp.float64):
        opt = opt_factory(**opt_kwargs)
        initial_params, _, objective = _setup_parabola(dtype)
        traces = []

        @jax.jit
        def step(params, state, cond):
            traces.append(None)  # once per compilation
            _, updates = _conj_grad(objective, params)
            # defeat compiler optimization, use lax.cond to check for stability: its two
            # branches must return the same types, so the state must keep its own. (optax
            # draws ``cond`` with jax.random inside the step; an argument is as opaque to
            # the compiler and saves compiling the PRNG.)
            updates, state = jax.lax.cond(
                cond, lambda: opt.update(updates, state, params), lambda: (params, state))
            params = optax.apply_updates(params, updates)
            return params, state

        params = initial_params
        state = opt.init(params)

        # Test that update is dtype stable. (optax's original also passes the state through
        # an eager lax.cond here; comparing the avals checks the same at a fraction of the cost.)
        for _ in range(2):
            params, new_state = step(params, state, jnp.bool_(True))
            assert jax.tree.leaves(params)[0].dtype == dtype
            chex.assert_trees_all_equal_structs(new_state, state)
            assert _avals(new_state) == _avals(state)
            state = new_state
        assert len(traces) == 1, "the state after an update retraces the step"


@_each_optimizer
@pytest.mark.parametrize("dtype", ["bfloat16"])  # the dtype of optax issue 377 (float32 left out for time)
def test_gradient_accumulation(opt_name, opt_factory, opt_kwargs, dtype):
    """Test that the optimizers can safely be used with optax.MultiSteps."""
    # Checks for issues like https://github.com/google-deepmind/optax/issues/377
    dtype = jnp.dtype(dtype)
    base_opt = opt_factory(**opt_kwargs)
    opt = optax.MultiSteps(base_opt, every_k_schedule=4)

    fun = lambda x: jnp.sum(x**2)  # noqa: E731

    params = jnp.array([1.0, 2.0], dtype=dtype)
    grads = jax.grad(fun)(params)
    state = opt.init(params)
    updates, _ = jax.jit(opt.update)(grads, state, params)
    chex.assert_trees_all_equal(updates, jnp.zeros_like(grads))


# ---- abstract init ------------------------------------------------------------------------

_TREE = {"w": jnp.ones((2, 3), jnp.float32), "b": jnp.zeros((3,), jnp.bfloat16), "s": jnp.float32(2.0)}


@_each_optimizer
def test_init_accepts_shape_dtype_structs(opt_name, opt_factory, opt_kwargs):
    """``init`` of ShapeDtypeStruct leaves (as optax's does) gives the state of the concrete params,
    leaf for leaf in shape and dtype; ``jax.eval_shape(init, params)`` too."""
    opt = opt_factory(**opt_kwargs)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _TREE)
    concrete = opt.init(_TREE)
    chex.assert_trees_all_equal_shapes_and_dtypes(opt.init(abstract), concrete)
    chex.assert_trees_all_equal_shapes_and_dtypes(jax.eval_shape(opt.init, _TREE), concrete)
    chex.assert_trees_all_equal_shapes_and_dtypes(jax.eval_shape(opt.init, abstract), concrete)


# ---- complex params against optax ---------------------------------------------------------

@pytest.mark.parametrize("name", sorted(_SAME_AS_OPTAX))
def test_complex_trajectory_matches_optax(name):
    """On complex64 params adaptx follows optax's semantics: second moments of
    |g|² = g·conj(g) (real), first moments complex. 10 steps on the complex parabola,
    gradients conjugated as in test_optimization; tolerance as explained at PER_UPDATE_RTOL."""
    ours, theirs = _SAME_AS_OPTAX[name]
    params, _, objective = _setup_parabola(jnp.complex64)
    grads_fn = lambda p: _conj_grad(objective, p)[1]  # noqa: E731
    got = _updates_along(ours(learning_rate=1e-2), params, grads_fn, 10)
    want = _updates_along(theirs(learning_rate=1e-2), params, grads_fn, 10)
    assert all(u.dtype == jnp.complex64 for u in got)
    _assert_same_trajectory(got, want)


# ---- optax.tree.get / optax.tree.set on adaptx states -------------------------------------

@_each_optimizer
def test_tree_get_count(opt_name, opt_factory, opt_kwargs):
    """``optax.tree.get(state, "count")`` finds one step count (optax raises on several),
    and it counts the updates taken."""
    opt = opt_factory(**opt_kwargs)
    params = _setup_parabola(jnp.float32)[0]
    state = opt.init(params)
    assert int(optax.tree.get(state, "count")) == 0
    for _ in range(3):
        _, state = opt.update(_parabola_grads(params), state, params)
    assert int(optax.tree.get(state, "count")) == 3


def test_tree_set_hyperparams_equals_set_hyperparams():
    """``optax.tree.set(state, learning_rate=..., b1=...)`` continues the run as
    ``adaptx.set_hyperparams`` does. The two may differ by float32 rounding of 1 − β₁
    (0.2 rounded once or from float32 β₁: ≤ 2**-24/0.2 relative, ~3e-7) and of the ops
    behind it: 3 further steps, rtol 1e-6."""
    opt = adaptx.adam(0.1)
    params = _setup_parabola(jnp.float32)[0]
    step = jax.jit(lambda p, s: opt.update(_parabola_grads(p), s, p))
    state = opt.init(params)
    for _ in range(2):
        updates, state = step(params, state)
        params = optax.apply_updates(params, updates)
    new = {"learning_rate": 0.05, "b1": 0.8}
    via_optax = optax.tree.set(state, **{k: jnp.float32(v) for k, v in new.items()})
    via_adaptx = adaptx.set_hyperparams(state, **new)
    chex.assert_trees_all_close(adaptx.hyperparams(via_optax), adaptx.hyperparams(via_adaptx), rtol=1e-6)
    chex.assert_trees_all_equal_shapes_and_dtypes(via_optax, via_adaptx)
    p_optax, p_adaptx = params, params
    for _ in range(3):
        u_optax, via_optax = step(p_optax, via_optax)
        u_adaptx, via_adaptx = step(p_adaptx, via_adaptx)
        chex.assert_trees_all_close(u_optax, u_adaptx, rtol=1e-6)
        p_optax, p_adaptx = optax.apply_updates(p_optax, u_optax), optax.apply_updates(p_adaptx, u_adaptx)
