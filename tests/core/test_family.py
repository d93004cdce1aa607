"""The adaptive family (issue 13) against float64 references from the papers and against optax.

Reference: the inputs of ``test_reference`` (a mixed pytree, gradients over six
decades with sparse zeros, hyperparameters drawn at random and rounded to
float32), 100 steps, every leaf's worst error relative to its largest value,
bound STEPS·2⁻²⁴·4 ≈ 2.4e-5: float32 rounding compounding over the steps a
moment remembers. Measured worst per case in ``MEASURED``.

optax: ``harness.scan_trajectory``'s 200 steps on fixed gradients (1e-6..1e3), params to 1e-5
per leaf as in test_optax_parity.
"""
import functools
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adaptx
import reference_family as ref
from harness import (float32_beta_ops, gradient_sequence, log_uniform, log_uniform_in, peer_params, random_params,
                     relative_deviation, rounding_bound, scan_trajectory, step_cost, trajectory, uniform, uniform_in,
                     wide_gradients, worst_error)
from test_reference import SAMPLERS, Case

STEPS = 100
TOLERANCE = STEPS * 2.0 ** -24 * 4

FAMILY_SAMPLERS = {
    **SAMPLERS,
    "threshold": lambda rng: uniform(rng, 4.5, 8.0),
    "initial_accumulator_value": lambda rng: log_uniform(rng, 1e-8, 1e-4),
    "eps_root": lambda rng: log_uniform(rng, 1e-16, 1e-8),
    "eta_minus": lambda rng: uniform(rng, 0.2, 0.8),
    "eta_plus": lambda rng: uniform(rng, 1.05, 1.5),
    "min_step_size": lambda rng: log_uniform(rng, 1e-7, 1e-5),
    "max_step_size": lambda rng: log_uniform(rng, 1.0, 50.0),
    "b3": lambda rng: uniform(rng, 0.9, 0.999),
    "alpha": lambda rng: uniform(rng, 1.0, 10.0),
    "weight_lr_power": lambda rng: uniform(rng, 0.0, 3.0),
}

ADAM = ("learning_rate", "b1", "b2", "eps")

CASES = [
    Case("radam", adaptx.radam, ref.RAdam, ADAM + ("eps_root", "threshold")),
    Case("radam-nesterov", adaptx.radam, ref.RAdam, ADAM + ("threshold",), {"nesterov": True}),
    Case("adabelief", adaptx.adabelief, ref.AdaBelief, ADAM + ("eps_root",)),
    Case("adabelief-nesterov", adaptx.adabelief, ref.AdaBelief, ADAM, {"nesterov": True}),
    Case("yogi", adaptx.yogi, ref.Yogi, ADAM + ("initial_accumulator_value",)),
    Case("yogi-paper", adaptx.yogi, ref.Yogi, ADAM, {"bias_correction": False}),
    Case("lion", adaptx.lion, ref.Lion, ("learning_rate", "b1", "b2", "weight_decay")),
    Case("lamb", adaptx.lamb, ref.Lamb, ADAM + ("eps_root", "weight_decay")),
    Case("nadamw", adaptx.nadamw, ref.NAdamW, ADAM + ("weight_decay", "momentum_decay")),
    Case("nadamw-optax", adaptx.nadamw, ref.NAdamW, ADAM + ("weight_decay",), {"momentum_decay": None}),
    Case("adamaxw", adaptx.adamaxw, ref.AdaMaxW, ADAM + ("weight_decay",)),
    Case("novograd", adaptx.novograd, ref.NovoGrad, ("learning_rate", "b1", "b2", "eps", "weight_decay"),
         samplers={"b2": lambda rng: uniform(rng, 0.1, 0.9)}),
    Case("adan", adaptx.adan, ref.Adan, ADAM + ("b3", "eps_root", "weight_decay"),
         samplers={"b1": lambda rng: uniform(rng, 0.9, 0.99), "b2": lambda rng: uniform(rng, 0.8, 0.99)}),
    Case("adan-optax", adaptx.adan, ref.Adan, ADAM + ("b3",), {"diff_weight": 0.08}),
    Case("adopt", adaptx.adopt, ref.Adopt, ADAM, samplers={"eps": lambda rng: log_uniform(rng, 1e-8, 1e-4)}),
    Case("adopt-nesterov-unclipped", adaptx.adopt, ref.Adopt, ADAM, {"nesterov": True, "use_clipping": False},
         samplers={"eps": lambda rng: log_uniform(rng, 1e-8, 1e-4)}),
    Case("ademamix", adaptx.ademamix, ref.AdEMAMix, ADAM + ("b3", "alpha", "eps_root", "weight_decay")),
    Case("rprop", adaptx.rprop, ref.Rprop,
         ("learning_rate", "eta_minus", "eta_plus", "min_step_size", "max_step_size")),
]
BLOCKS = [
    Case("scale_by_radam", adaptx.scale_by_radam, ref.RAdam, ("b1", "b2", "eps", "eps_root", "threshold"),
         direction=True),
    Case("scale_by_radam-torch", functools.partial(adaptx.scale_by_radam, eps_before_correction=True),
         functools.partial(ref.RAdam, torch=True), ("b1", "b2", "eps"), direction=True),
]


def _draw(case, rng):
    return {name: {**FAMILY_SAMPLERS, **case.samplers}[name](rng) for name in case.drawn}


def _problem(case):
    rng = np.random.default_rng(zlib.crc32(case.id.encode()))
    params = random_params(rng)
    return rng, params, gradient_sequence(params, STEPS, rng)


def _error(case, run, state, params, grads, values):
    updates, seen = run(state, params, grads, STEPS)
    model = case.reference(jax.tree.leaves(params), **values, **case.options)
    return worst_error(updates, seen, grads, model.direction if case.direction else model.step)


@pytest.mark.parametrize("case", CASES + BLOCKS, ids=lambda case: case.id)
def test_matches_paper_reference(case):
    """Hyperparameters at construction, then a second draw through set_hyperparams, one compilation."""
    rng, params, grads = _problem(case)
    values = _draw(case, rng)
    tx = case.make(**values, **case.options)
    run = trajectory(tx)
    error, step, leaf = _error(case, run, tx.init(params), params, grads, values)
    assert error <= TOLERANCE, f"{case.id} with {values}: {error:.3g} at step {step}, leaf {leaf}"
    if case.direction:
        return
    state = tx.init(params)
    settable = {k: v for k, v in _draw(case, rng).items() if k in adaptx.hyperparams(state)}
    state = adaptx.set_hyperparams(state, **settable)
    error, step, leaf = _error(case, run, state, params, grads, {**values, **settable})
    assert error <= TOLERANCE, f"{case.id} with {settable}: {error:.3g} at step {step}, leaf {leaf}"


# Schedule-free updates are differences y_new − y of O(1) params, so float32 holds them only to
# ulp(y): these cases compare the params themselves, each leaf relative to its own scale.
SCHEDULE_FREE = [
    Case("schedule_free_adamw", adaptx.schedule_free_adamw, ref.ScheduleFreeAdamW,
         ADAM + ("weight_decay", "weight_lr_power")),
    Case("schedule_free_adamw-warmup", adaptx.schedule_free_adamw, ref.ScheduleFreeAdamW, ADAM + ("weight_decay",),
         {"warmup_steps": 30}),
]


@pytest.mark.parametrize("case", SCHEDULE_FREE, ids=lambda case: case.id)
def test_schedule_free_params_match_paper_reference(case):
    rng, params, grads = _problem(case)
    values = _draw(case, rng)
    tx = case.make(**values, **case.options)
    _, seen = trajectory(tx)(tx.init(params), params, grads, STEPS)
    model = case.reference(jax.tree.leaves(params), **values, **case.options)
    leaves = jax.tree.leaves(grads)
    worst = 0.0
    for t in range(STEPS - 1):
        model.step([g[t] for g in leaves])
        for i, y in enumerate(jax.tree.leaves(seen[t + 1])):
            want = (1 - model.b1) * model.z[i] + model.b1 * model.x[i]
            if want.size:
                worst = max(worst, np.max(np.abs(y - want)) / np.max(np.abs(want)))
    assert worst <= TOLERANCE, f"{case.id} with {values}: {worst:.3g}"


LR, EPS = log_uniform_in(1e-4, 1e-1), log_uniform_in(1e-10, 1e-3)
B1, B2 = uniform_in(0.0, 0.99), uniform_in(0.9, 0.999)
WD = log_uniform_in(1e-4, 1e-1)
ADAM_SPACE = {"learning_rate": LR, "b1": B1, "b2": B2, "eps": EPS}

ALPHA_WARMUP = lambda count: 8.0 * jnp.minimum(count / 100.0, 1.0)  # noqa: E731
B3_WARMUP = lambda count: 0.9 + 0.0999 * jnp.minimum(count / 150.0, 1.0)  # noqa: E731

# (id, optax optimizer, the adaptx call that reproduces it, hyperparameters drawn at random).
OPTAX_CASES = [
    ("radam", optax.radam, lambda h: adaptx.radam(**h), ADAM_SPACE),
    ("radam-nesterov", functools.partial(optax.radam, nesterov=True),
     lambda h: adaptx.radam(**h, nesterov=True), ADAM_SPACE),
    ("adabelief", optax.adabelief, lambda h: adaptx.adabelief(**h), ADAM_SPACE),
    ("adabelief-nesterov", functools.partial(optax.adabelief, nesterov=True),
     lambda h: adaptx.adabelief(**h, nesterov=True), ADAM_SPACE),
    ("yogi", optax.yogi, lambda h: adaptx.yogi(**h), {**ADAM_SPACE, "eps": log_uniform_in(1e-4, 1e-2)}),
    ("lion", optax.lion, lambda h: adaptx.lion(**h),
     {"learning_rate": LR, "b1": B1, "b2": B2, "weight_decay": WD}),
    ("lamb", optax.lamb, lambda h: adaptx.lamb(**h), {**ADAM_SPACE, "weight_decay": WD}),
    ("nadamw", optax.nadamw, lambda h: adaptx.nadamw(**h, momentum_decay=None), {**ADAM_SPACE, "weight_decay": WD}),
    ("adamaxw", optax.adamaxw, lambda h: adaptx.adamaxw(**h), {**ADAM_SPACE, "weight_decay": WD}),
    ("novograd", optax.novograd, lambda h: adaptx.novograd(**h),
     {**ADAM_SPACE, "b2": uniform_in(0.1, 0.9), "eps": log_uniform_in(1e-8, 1e-4), "weight_decay": WD}),
    ("adan", optax.adan, lambda h: adaptx.adan(**h, diff_weight=1 - h["b2"]),
     {**ADAM_SPACE, "b1": uniform_in(0.9, 0.99), "b2": uniform_in(0.8, 0.99), "b3": uniform_in(0.9, 0.999),
      "weight_decay": WD}),
    ("adopt", optax.contrib.adopt, lambda h: adaptx.adopt(**h), {**ADAM_SPACE, "eps": log_uniform_in(1e-8, 1e-4)}),
    ("adopt-nesterov", functools.partial(optax.contrib.adopt, nesterov=True),
     lambda h: adaptx.adopt(**h, nesterov=True), {**ADAM_SPACE, "eps": log_uniform_in(1e-8, 1e-4)}),
    ("ademamix", optax.contrib.ademamix, lambda h: adaptx.ademamix(**h),
     {**ADAM_SPACE, "b3": uniform_in(0.99, 0.9999), "alpha": uniform_in(1.0, 10.0), "weight_decay": WD}),
    ("schedule_free_adamw", optax.contrib.schedule_free_adamw, lambda h: adaptx.schedule_free_adamw(**h),
     {**ADAM_SPACE, "weight_decay": WD, "weight_lr_power": uniform_in(0.0, 3.0)}),
    # the paper's warm-ups as schedules of the step (read at the updates applied so far, both sides)
    ("ademamix-schedules", lambda **h: optax.contrib.ademamix(**h, alpha=ALPHA_WARMUP, b3=B3_WARMUP),
     lambda h: adaptx.ademamix(**h, alpha=ALPHA_WARMUP, b3=B3_WARMUP), ADAM_SPACE),
]


@pytest.fixture(scope="module")
def optax_problem():
    rng = np.random.default_rng(1318)
    params = peer_params(rng)
    return params, wide_gradients(rng, params)


@pytest.mark.parametrize("case", OPTAX_CASES, ids=[c[0] for c in OPTAX_CASES])
def test_reproduces_optax(case, optax_problem):
    name, theirs, ours, space = case
    rng = np.random.default_rng(OPTAX_CASES.index(case))
    h = {k: sample(rng) for k, sample in space.items()}
    want, _ = scan_trajectory(("optax-family", name), theirs(**h), *optax_problem)
    got, _ = scan_trajectory(("adaptx-family", name), ours(h), *optax_problem)
    assert relative_deviation(got, want) <= 1e-5, h


def test_optax_rprop_is_the_same_rule_one_step_late():
    """optax.rprop returns the step its rule proposed at the previous update (0 first); adaptx and
    torch apply it at once. With signs that never flip, optax's update t + 1 is adaptx's update t."""
    rng = np.random.default_rng(5)
    sign = rng.choice([-1.0, 1.0], 6)
    grads = [(sign * 10.0 ** rng.uniform(-3, 1, 6)).astype(np.float32) for _ in range(8)]
    params = np.zeros(6, np.float32)
    ours, theirs = adaptx.rprop(0.01), optax.rprop(0.01)
    s_ours, s_theirs = ours.init(params), theirs.init(params)
    got, want = [], []
    for g in grads:
        u, s_ours = ours.update(g, s_ours, params)
        got.append(np.asarray(u))
        u, s_theirs = theirs.update(g, s_theirs, params)
        want.append(np.asarray(u))
    assert not np.any(want[0])
    np.testing.assert_allclose(np.stack(want[1:]), np.stack(got[:-1]), rtol=1e-6)


def test_schedule_free_eval_params_match_optax(optax_problem):
    """x = (y − (1 − β₁)z)/β₁ after 200 steps, from adaptx's state and from optax's."""
    h = {"learning_rate": 1e-2, "b1": 0.8, "weight_decay": 1e-3}
    params, grads = optax_problem
    want, want_state = scan_trajectory(("optax-family", "schedule_free_adamw-eval"),
                                    optax.contrib.schedule_free_adamw(**h), params, grads)
    got, got_state = scan_trajectory(("adaptx-family", "schedule_free_adamw-eval"),
                                  adaptx.schedule_free_adamw(**h), params, grads)
    assert relative_deviation(adaptx.schedule_free_eval_params(got_state, got),
                              optax.contrib.schedule_free_eval_params(want_state, want)) <= 1e-5


# --- Prodigy -----------------------------------------------------------------------------------

def prodigy_gradients(params, steps, rng):
    """Per coordinate a fixed scale 10^U(−6, 3) (so ε·d meets √v at the small ones) times |N(0, 1)|
    per step, 20% exact zeros, and a sign that agrees with a fixed per-coordinate sign 80% of
    the time: a drift, so ⟨g, x₀ − x⟩ builds up and d grows through decades (with signs at
    random it would barely leave d₀; the test checks that it grows)."""
    def leaf(p):
        shape = (steps, *np.shape(p))
        drift = rng.choice([-1.0, 1.0], np.shape(p))
        sign = np.where(rng.uniform(size=shape) < 0.8, drift, -drift)
        keep = rng.uniform(size=shape) > 0.2
        scale = 10.0 ** rng.uniform(-6, 3, np.shape(p))
        return (sign * keep * scale * np.abs(rng.normal(size=shape))).astype(np.float32)

    return jax.tree.map(leaf, params)


PRODIGY_SAMPLERS = {
    "learning_rate": lambda rng: log_uniform(rng, 0.1, 1.0),  # a multiplier on d
    "b1": lambda rng: uniform(rng, 0.5, 0.95),
    "b2": lambda rng: uniform(rng, 0.9, 0.999),
    "b3": lambda rng: uniform(rng, 0.9, 0.999),
    "eps": lambda rng: log_uniform(rng, 1e-10, 1e-6),
    "estim_lr0": lambda rng: log_uniform(rng, 1e-7, 1e-5),
    "estim_lr_coef": lambda rng: uniform(rng, 0.5, 2.0),
    "weight_decay": lambda rng: log_uniform(rng, 1e-4, 1e-1),
}
PRODIGY_SETTABLE = ("learning_rate", "b1", "b2", "eps", "estim_lr_coef", "weight_decay")
# (id, construction options, drawn names beyond the settable ones, the reference's departures
# from adaptx's choice that this case's draw tells apart: they move the reference by > 2 bounds,
# samplers of its own)
PRODIGY_CASES = [
    ("prodigy", {}, ("estim_lr0",), (), {}),
    ("prodigy-paper", {"bias_correction": False}, ("estim_lr0",), ("eps_with_new_d",), {}),
    # without γ·c in s, d grows about γ times slower: γ near the recommended 1 lets it leave d₀
    ("prodigy-safeguard-b3", {"safeguard_warmup": True}, ("b3",), ("bias_correction",),
     {"learning_rate": lambda rng: uniform(rng, 0.5, 1.0)}),
]


def _prodigy(values, options):
    values = dict(values)
    b1, b2 = values.pop("b1"), values.pop("b2")
    if "b3" in values:
        values["beta3"] = values.pop("b3")
    return adaptx.prodigy(betas=(b1, b2), **values, **options)


def _prodigy_reference(params, values, options):
    return ref.Prodigy(jax.tree.leaves(params), **values, eps_with_new_d=True,
                       bias_correction=options.get("bias_correction", True),
                       safeguard_warmup=options.get("safeguard_warmup", False))


def _prodigy_problem(name):
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    params = random_params(rng)
    return rng, params, prodigy_gradients(params, STEPS, rng)


# the reference's attribute for each departure that a case may pin
_REFERENCE_FLAG = {"eps_with_new_d": "new_d", "bias_correction": "bias"}


@pytest.mark.parametrize("case", PRODIGY_CASES, ids=[c[0] for c in PRODIGY_CASES])
def test_prodigy_matches_paper_reference(case):
    """100 steps against the float64 box, then a second draw through set_hyperparams (one
    compilation). d must have grown from d₀ (else the estimate went untested), and the listed
    departures from the box must be told apart from adaptx's choice by more than twice the bound."""
    name, options, extra, pinned, samplers = case
    rng, params, grads = _prodigy_problem(name)
    draw = lambda: {k: {**PRODIGY_SAMPLERS, **samplers}[k](rng) for k in PRODIGY_SETTABLE + extra}  # noqa: E731
    values = draw()
    tx = _prodigy(values, options)
    run = trajectory(tx)
    bound = rounding_bound(STEPS, *step_cost("prodigy"))
    d0 = values.get("estim_lr0", 1e-6)
    for state, settable in ((tx.init(params), {}), (None, {k: v for k, v in draw().items() if k in PRODIGY_SETTABLE})):
        if settable:
            state = adaptx.set_hyperparams(tx.init(params), **settable)
            values = {**values, **settable}
        updates, seen = run(state, params, grads, STEPS)
        model = _prodigy_reference(params, values, options)
        error, step, leaf = worst_error(updates, seen, grads, model.step)
        assert error <= bound, f"{name} with {values}: {error:.3g} > {bound:.3g} at step {step}, leaf {leaf}"
        assert model.d >= 2 * d0, f"{name} with {values}: d stayed at {model.d:.3g} (d0 {d0:.3g})"
        if settable:
            continue
        for departure in pinned:
            other, flag = _prodigy_reference(params, values, options), _REFERENCE_FLAG[departure]
            setattr(other, flag, not getattr(other, flag))
            apart, _, _ = worst_error(updates, seen, grads, other.step)
            assert apart > 2 * bound, f"{name}: {departure} flipped moves the reference by only {apart:.3g}"


PRODIGY_OPTAX_CASES = [
    ("prodigy", {}),
    ("prodigy-weight_decay-beta3", {"weight_decay": True, "beta3": True}),
    ("prodigy-safeguard", {"safeguard_warmup": True}),
]


@pytest.mark.parametrize("case", PRODIGY_OPTAX_CASES, ids=[c[0] for c in PRODIGY_OPTAX_CASES])
def test_prodigy_reproduces_optax(case):
    """200 steps against optax.contrib.prodigy in float32: params and d within twice the bound,
    plus what optax's float32 β powers cost its c = √(1 − β₂ᵗ)/(1 − β₁ᵗ).

    Not against optax in float64: both float32 programs compute x₀ − x from params that moved
    by as little as d₀ from x₀, so ⟨g, x₀ − x⟩ carries the cancellation Σ|g||x| / |⟨g, x₀ − x⟩|
    (up to 5e7 along these runs), and d = max(d, ·) keeps every upward error; optax's own
    float32 run ends 1.8e-3 to 0.78 from its float64 one (benchmarks/family_deviation.py), as
    far as adaptx's. The per-step comparison with the float64 box
    (test_prodigy_matches_paper_reference) feeds both sides the same params, which takes that
    conditioning out.
    """
    name, options = case
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    params = peer_params(rng)
    grads = prodigy_gradients(params, 200, rng)
    draw = {k: PRODIGY_SAMPLERS[k](rng) for k in ("learning_rate", "b1", "b2", "eps", "estim_lr0", "estim_lr_coef",
                                                   "weight_decay", "b3")}
    h = {"learning_rate": draw["learning_rate"], "betas": (draw["b1"], draw["b2"]), "eps": draw["eps"],
         "estim_lr0": draw["estim_lr0"], "estim_lr_coef": draw["estim_lr_coef"]}
    if options.get("weight_decay"):
        h["weight_decay"] = draw["weight_decay"]
    if options.get("beta3"):
        h["beta3"] = draw["b3"]
    if options.get("safeguard_warmup"):
        h["safeguard_warmup"] = True
    got, got_state = scan_trajectory(("adaptx-family", name), adaptx.prodigy(**h), params, grads)
    want, want_state = scan_trajectory(("optax-family", name), optax.contrib.prodigy(**h), params, grads)
    d = float(want_state.estim_lr)
    assert d >= 2 * h["estim_lr0"], f"d stayed at {d:.3g}: the estimate went untested"
    ops, transcendentals = step_cost("prodigy")
    between = rounding_bound(200, ops + float32_beta_ops(*h["betas"]), transcendentals, implementations=2)
    assert relative_deviation(got, want) <= between, (relative_deviation(got, want), between, h)
    ours_d = float(got_state.inner_state[0].estim_lr)
    assert abs(ours_d - d) <= between * d, (ours_d, d, h)


def test_prodigy_keeps_d_where_optax_turns_nan():
    """A first gradient of zeros leaves ‖s‖₁ = 0: optax's d becomes 0/0 = NaN and so do the
    params; adaptx keeps d (the authors' code skips the step) and takes the zero step."""
    params = {"w": jnp.ones(3)}
    zero = {"w": jnp.zeros(3)}
    ours, theirs = adaptx.prodigy(), optax.contrib.prodigy()
    u, state = ours.update(zero, ours.init(params), params)
    assert np.all(np.asarray(u["w"]) == 0)
    assert float(state.inner_state[0].estim_lr) == np.float32(1e-6)
    u, _ = theirs.update(zero, theirs.init(params), params)
    assert np.all(np.isnan(np.asarray(u["w"])))


@pytest.mark.parametrize("kwargs, message", [
    (dict(betas=(1.0, 0.999)), r"b1 must lie in \[0, 1\)"),
    (dict(betas=(0.9, -0.1)), r"b2 must lie in \[0, 1\)"),
    (dict(beta3=1.5), r"b3 must lie in \[0, 1\)"),
    (dict(estim_lr0=0.0), r"estim_lr0 must lie in \(0, inf\)"),
    (dict(estim_lr_coef=-1.0), r"estim_lr_coef must lie in \(0, inf\)"),
    (dict(eps=-1e-8), r"eps must lie in \[0, inf\)"),
    (dict(weight_decay=-1.0), r"weight_decay must lie in \[0, inf\)"),
    (dict(learning_rate=-1.0), r"learning_rate must lie in \[0, inf\)"),
    (dict(betas=0.9), "betas must be a pair"),
])
def test_prodigy_rejects_invalid_hyperparameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        adaptx.prodigy(**kwargs)


def test_prodigy_accepts_traced_hyperparameters():
    """Traced values are never range-checked: set under jit, the state steps as built with them."""
    params = {"w": jnp.linspace(-1.0, 1.0, 4)}
    grads = {"w": jnp.linspace(0.5, -1.5, 4)}
    tx = adaptx.prodigy()

    @jax.jit
    def step(coef, b2):
        state = adaptx.set_hyperparams(tx.init(params), estim_lr_coef=coef, b2=b2)
        for _ in range(3):
            u, state = tx.update(grads, state, params)
        return u

    built = adaptx.prodigy(betas=(0.9, float(np.float32(0.99))), estim_lr_coef=2.0)
    state = built.init(params)
    for _ in range(3):
        want, state = built.update(grads, state, params)
    np.testing.assert_allclose(step(2.0, 0.99)["w"], want["w"], rtol=1e-6)


def test_prodigy_signature_is_optax():
    """optax.contrib.prodigy's arguments, order and defaults; adaptx's additions are keyword-only.
    (optax after 0.2.8 appends weight_decay_mask, which adaptx already takes in that place.)"""
    import inspect

    theirs = [(p.name, p.default) for p in inspect.signature(optax.contrib.prodigy).parameters.values()]
    ours = [(p.name, p.default) for p in inspect.signature(adaptx.prodigy).parameters.values()
            if p.kind != p.KEYWORD_ONLY]
    assert ours[:len(theirs)] == theirs and ours[len(theirs):] in ([], [("weight_decay_mask", None)])


def test_prodigy_weight_decay_mask_decays_only_where_true():
    """Masked leaves step as with no decay at all, the others as with the decay (same program)."""
    params = {"w": jnp.linspace(-1.0, 1.0, 6).reshape(2, 3), "b": jnp.linspace(0.5, 1.5, 3)}
    grads = jax.tree.map(lambda p: 0.3 * p + 0.1, params)

    def run(tx):
        state, p = tx.init(params), params
        for _ in range(4):
            u, state = tx.update(grads, state, p)
            p = adaptx.apply_updates(p, u)
        return p

    # d₀ = 0.1: large enough that 4 steps of decay move the params visibly
    decayed, plain = run(adaptx.prodigy(weight_decay=0.5, estim_lr0=0.1)), run(adaptx.prodigy(estim_lr0=0.1))
    masked = run(adaptx.prodigy(weight_decay=0.5, estim_lr0=0.1, weight_decay_mask={"w": True, "b": False}))
    by_function = run(adaptx.prodigy(weight_decay=0.5, estim_lr0=0.1,
                                     weight_decay_mask=lambda p: {"w": True, "b": False}))
    assert np.max(np.abs(decayed["b"] - plain["b"])) > 1e-2
    np.testing.assert_allclose(masked["w"], decayed["w"], rtol=1e-6)
    np.testing.assert_allclose(masked["b"], plain["b"], rtol=1e-6)
    jax.tree.map(np.testing.assert_array_equal, by_function, masked)
    with pytest.raises(ValueError, match="weight_decay_mask must be a tree"):
        run(adaptx.prodigy(weight_decay=0.5, weight_decay_mask={"w": True}))
