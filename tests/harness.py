"""The suite's one helper module: random pytrees, gradient sequences, hyperparameter draws, the error
measure and its float32 bounds, and the peer-parity runs (one compiled scan per optimizer structure)."""
import collections

import jax
import jax.numpy as jnp
import numpy as np

import adaptx


def random_params(rng, dtype=np.float32):
    """A pytree (NumPy leaves) of mixed shapes and containers: a matrix, a scalar, a vector, empty leaves, nesting."""
    def leaf(*shape):
        return rng.normal(size=shape).astype(dtype)

    return {"w": leaf(3, 4), "scalar": leaf(), "nested": [leaf(0), (leaf(5), {"deep": leaf(2, 0)})]}


def gradient_sequence(params, steps, rng, dtype=np.float32):
    """``steps`` gradients per leaf, stacked on a leading axis (NumPy arrays).

    Each coordinate gets a fixed scale drawn log-uniformly over six decades
    (1e-4 to 1e2), an envelope shrinking from 2 to 1 (so the second moment falls
    and AMSGrad's maximum matters) and 20% exact zeros (sparse gradients,
    Adagrad's motivating case, and the √0 path of every block).
    """
    envelope = 1 + np.exp(-np.arange(steps) / 15)

    def leaf(p):
        shape = np.shape(p)
        scale = 10.0 ** rng.uniform(-4, 2, size=shape)
        noise = rng.normal(size=(steps, *shape)) * (rng.uniform(size=(steps, *shape)) > 0.2)
        return (envelope.reshape(-1, *[1] * len(shape)) * scale * noise).astype(dtype)

    return jax.tree.map(leaf, params)


def representable(x, dtype=np.float32):
    """``x`` rounded to ``dtype`` and back, so both sides of a comparison start from the same number."""
    return float(np.asarray(x, dtype))


def uniform(rng, low, high):
    return representable(rng.uniform(low, high))


def log_uniform(rng, low, high):
    return representable(np.exp(rng.uniform(np.log(low), np.log(high))))


def relative_error(actual, expected):
    """max|a − b| / max|b| over one leaf: 0 for an empty leaf, ∞ if b is all zero but a is not.

    Normalising by the leaf's largest entry (not entry by entry) is the
    float32 meaning of "agrees to 1e-6": an entry 1e6 times smaller than its
    neighbours is held to the absolute precision of the leaf.
    """
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"shape {actual.shape}, expected {expected.shape}"
    if expected.size == 0:
        return 0.0
    gap, size = np.max(np.abs(actual - expected)), np.max(np.abs(expected))
    if np.isnan(gap):
        return np.inf
    if size == 0:
        return 0.0 if gap == 0 else np.inf
    return gap / size


def leaves_with_paths(tree):
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [jax.tree_util.keystr(path) for path, _ in flat], [leaf for _, leaf in flat]


def trajectory(tx):
    """``run(state, params, grads, steps) -> (updates, seen)``: each step's updates and the params it saw.

    One jitted step serves every state (and so every hyperparameter value);
    a Python loop over it compiles in about half the time of a ``lax.scan``.
    """
    @jax.jit
    def step(grads, state, params):
        updates, state = tx.update(grads, state, params)
        return updates, state, adaptx.apply_updates(params, updates)

    def run(state, params, grads, steps):
        all_updates, seen = [], []
        for t in range(steps):
            seen.append(params)
            updates, state, params = step(jax.tree.map(lambda g: g[t], grads), state, params)
            all_updates.append(updates)
        return jax.device_get(all_updates), jax.device_get(seen)

    return run


def worst_error(updates, seen, grads, reference):
    """Step ``reference`` on the gradients and params adaptx saw; the worst leaf's error, the step and leaf.

    Each leaf is measured over its whole run (steps × its shape): float32 is
    accurate relative to the size of the numbers it adds, and a momentum
    buffer that sums ± gradients to near zero at one step has no accurate
    float32 digits of its own at that step, in any implementation.
    """
    names, _ = leaves_with_paths(updates[0])
    grads = jax.tree.leaves(grads)
    expected = [reference([g[t] for g in grads], jax.tree.leaves(p)) for t, p in enumerate(seen)]
    worst = (0.0, None, None)
    for i, name in enumerate(names):
        actual = np.stack([jax.tree.leaves(u)[i] for u in updates])
        want = np.stack([step[i] for step in expected])
        error = relative_error(actual, want)
        if error > worst[0]:
            gap = np.abs(actual.astype(np.float64) - want).reshape(len(seen), -1).max(axis=1)
            worst = (error, int(np.argmax(gap)) + 1, name)
    return worst


# ---------------------------------------------------------------------------------------------
# The tolerance rule: what IEEE arithmetic promises on any CPU, not what one CPU happened to give.

TRANSCENDENTAL_ULPS = 4
"""Error budget of one exp, log, expm1, log1p, pow, tanh, sinh or cosh, in ulps of its result.

None of them is correctly rounded, and each library has its own: XLA's CPU
polynomials, SLEEF in torch's vectorised kernels (its u10 functions ≤ 1 ulp),
glibc in torch's scalar ones (≤ 1–2 ulp), the u35 class of vector libraries
(≤ 3.5 ulp). Which one runs depends on the ISA XLA and ATen detect at start.
"""

# (rounded operations, transcendental functions) on the longest dependency chain of one step,
# from (gradient, params, state) to a new param or state entry, with every option of the
# algorithm on (weight decay coupled or decoupled with its factor rounded, momentum, Nesterov,
# centering, AMSGrad) and the float32 hyperparameter products on the chain. Counted from
# torch 2.13's single-tensor code; keras', optax's and adaptx's forms of the same formula
# have no longer chain. Maxima, negation and |·| are exact and do not count.
STEP_COST = {
    # g + λθ 2, b ← μb + (1 − τ)g 3, Nesterov g + μb 2, −η·d 1, θ + u 1
    "sgd": (9, 0),
    # g + λθ 2, η/(1 + (t − 1)·decay) 3, G + g² 2, √G + ε 2, g/· 1, ·η 1, θ + u 1
    "adagrad": (12, 0),
    # g + λθ 2, v ← ρv + (1 − ρ)g² 4, centred a 3 and v − a² 2, √· + ε 2, g/· 1,
    # b ← μb + s 2, ·η 1, θ + u 1
    "rmsprop": (18, 0),
    # decay 3, m 3, v 4, η/(1 − β₁ᵗ) 2, √v/√(1 − β₂ᵗ) 3, + ε 1, m/· 1, ·step 1, θ + u 1, spare 1;
    # each of the two bias corrections −expm1(t·log1p(−(1 − β))) 2 transcendentals
    "adam": (20, 4),
    # g + λθ 2, v 4, √(v + ε) 2, √(Δ + ε) 2, ÷ 1, ·g 1, Δ ← ρΔ + (1 − ρ)d² 4
    "adadelta": (16, 0),
    # g + λθ 2, m 3, max(β₂u, |g| + ε) 2, η/(1 − β₁ᵗ) 2, m/u 1, ·step 1, θ + u 1; 1 − β₁ᵗ 2
    "adamax": (12, 2),
    # decay 3, m 3, v 4, √(v/(1 − β₂ᵗ)) + ε 3, μₜ₊₁ = β₁(1 − ½·0.96^((t+1)ψ)) 3, ∏μ 1,
    # 1 − ∏μ·μₜ₊₁ 2, ημₜ₊₁/· 2, ·m/· 2, θ + u 1; 0.96^(tψ), 0.96^((t+1)ψ), 1 − β₂ᵗ 4
    "nadam": (24, 4),
    # g + λθ 2, c = β₁m + (1 − β₁)g 3, sign(c) exact, ·η 1, θ + u 1, m ← β₂m + (1 − β₂)g 3
    "lion": (10, 0),
    # adam's chain 20 and 4, plus ρₜ = ρ∞ − 2tβ₂ᵗ/(1 − β₂ᵗ) 4 and 1, rₜ = √((ρₜ − 4)(ρₜ − 2)ρ∞ /
    # ((ρ∞ − 4)(ρ∞ − 2)ρₜ)) 8 and its use 2; βᵗ by a power 1
    "radam": (34, 6),
    # sign products and step size η± products, clamped: exact but θ − sign·step 1
    "rprop": (2, 0),
    # the blocks alone
    "ema": (3, 0),  # βm + (1 − β)g
    "trace": (4, 0),  # βm + g, Nesterov g + βm
    "bias_correction": (2, 2),  # g / (1 − βᵗ)
    "add_decayed_weights": (2, 0),  # g + λθ
    "learning_rate": (4, 0),  # a schedule η/(1 + t/8) 3, −η·g 1
    # a global norm over at most 20 elements (the test pytrees): Σg² 20, √ 1, c/‖g‖ 1, g·min(1, ·) 1
    "clip_by_global_norm": (23, 0),
}

# Aliases: the blocks, and the names torch, keras and optax give the same algorithm.
_COST_ALIASES = {"adamw": "adam", "amsgrad": "adam", "accumulate_squares": "adagrad", "rms": "rmsprop",
                 "scale_by_learning_rate": "learning_rate"}


def step_cost(name: str) -> tuple:
    """(ops, transcendentals) of one step of ``name``: "NAdam", "Nadam", "nadam", "scale_by_nadam",
    "rmsprop-centered" (the options after "-" are all counted already) are all STEP_COST["nadam"]."""
    key = name.lower().split("-")[0]
    key = _COST_ALIASES.get(key, key)
    if key not in STEP_COST:
        key = key.removeprefix("scale_by_")
        key = _COST_ALIASES.get(key, key)
    return STEP_COST[key]


def rounding_bound(steps, ops_per_step, transcendentals=0, implementations=1, dtype=np.float32) -> float:
    """The largest relative deviation ``dtype`` arithmetic allows after ``steps`` steps, on any CPU:

        implementations · steps · (ops_per_step / 2 + TRANSCENDENTAL_ULPS · transcendentals) · eps

    with eps = finfo(dtype).eps, one ulp of 1.0 (2⁻²³ for float32). It is the tolerance of
    every comparison in the suite between floating-point programs; tests give it the step
    count and STEP_COST's count for what they run, and add what their own problem brings
    (a loss's gradient, a norm, a cancellation), saying so where they do.

    Derivation.

    1. One operation. IEEE 754 rounds + − × ÷ √ (and a fused multiply-add, which rounds
       once where a·b + c rounds twice) correctly: the result is the exact one times
       (1 + δ), |δ| ≤ eps/2. A transcendental function is within TRANSCENDENTAL_ULPS ulps.
    2. One step. Relative errors add up through products and quotients, and absolute
       ones through sums, relative to the size of the terms; so a value computed from
       exact inputs by a chain of k rounded operations and j transcendental functions is
       off by at most (k/2 + TRANSCENDENTAL_ULPS·j)·eps relative to its scale (to first
       order: the product of k factors (1 + δ) is within k·eps/2 of 1 up to k²eps²).
    3. Many steps. Each step adds its error to what the state and params already carry,
       and carries that on unamplified: moving averages (β ≤ 1), sums (Adagrad's Σg²,
       θ + u), maxima, and gradients of a loss chosen so that the iteration contracts.
       The step errors need not cancel: a rounded constant such as 1 − ηλ errs the same
       way at every step (torch's and adaptx's float32 decoupled weight decay are both 3e-5
       off float64 after 200 steps, 2.6 half-ulps per step). So the bound grows
       linearly in ``steps`` (Higham's γₙ for recursive summation, "Accuracy and Stability
       of Numerical Algorithms", §4.2), not as √steps, which is only likely.
    4. Two implementations. Against a float64 oracle (its own error ~1e-16 · steps,
       negligible) a float32 program carries the bound once (``implementations=1``). Two
       float32 programs of the same formula each carry it, in either direction, and may
       differ by twice as much (``implementations=2``). This is where CPUs come in: XLA
       and ATen choose vector widths, FMA contractions, summation orders and
       transcendental kernels by ISA (AVX-512, AVX2, SSE, NEON), so any two of them differ
       by up to this, and a test tuned to the gap measured on one machine fails on another
       (torch NAdam on a loss: 1.6e-6 from adaptx with AVX-512, 1.4e-5 with AVX2).

    The measure is each leaf's largest deviation over its largest magnitude
    (relative_error): an operation's error is relative to its operands, which the leaf's
    largest value bounds as long as updates are no larger than the values they change.
    What the rule does not cover, the test must add: cancellation, where a difference of
    close numbers (1 − β from a float32 β, an update recovered as θ_after − θ_before)
    multiplies the error of its inputs by the condition number.
    """
    eps = float(jnp.finfo(dtype).eps)
    return implementations * steps * (ops_per_step / 2 + TRANSCENDENTAL_ULPS * transcendentals) * eps


def leaf_bound(dtype, steps, ops_per_step, transcendentals=0, implementations=1) -> float:
    """rounding_bound for a leaf of ``dtype``: float32 arithmetic (adaptx computes half-precision
    params' updates in float32), plus, for bfloat16/float16 leaves, the param's own rounding to
    its dtype at every step; float64 arithmetic for float64 leaves."""
    dtype = jnp.dtype(dtype)
    if dtype == jnp.float64:
        return rounding_bound(steps, ops_per_step, transcendentals, implementations, np.float64)
    bound = rounding_bound(steps, ops_per_step, transcendentals, implementations)
    if jnp.finfo(dtype).eps > jnp.finfo(jnp.float32).eps:
        bound += rounding_bound(steps, 1, 0, implementations, dtype)
    return bound


def assert_trees_within(got, want, steps, ops_per_step, transcendentals=0, implementations=2, what=""):
    """Same tree structure and dtypes; floating leaves within leaf_bound (relative_error), others equal."""
    assert jax.tree.structure(got) == jax.tree.structure(want), (jax.tree.structure(got), jax.tree.structure(want))
    names, wanted = leaves_with_paths(want)
    for name, a, b in zip(names, jax.tree.leaves(got), wanted):
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype, f"{what}{name}: dtype {a.dtype}, expected {b.dtype}"
        if not jnp.issubdtype(b.dtype, jnp.floating):
            np.testing.assert_array_equal(a, b, err_msg=f"{what}{name}")
            continue
        bound = leaf_bound(b.dtype, steps, ops_per_step, transcendentals, implementations)
        error = relative_error(a, b)
        assert error <= bound, f"{what}{name}: relative error {error:.3g} > float bound {bound:.3g}"


def gradient_condition(loss_fn, params_along, batches_along) -> float:
    """κ of a batch gradient as a sum over the batch's rows, along a run, for rounding_bound.

    A sum's rounding error is relative to Σ|terms|, and two programs may add the rows in
    different orders (a vmapped matmul, micro-batches); relative to the gradient leaf's
    largest value that is κ = max Σᵢ|∇ℓᵢ| / max |Σᵢ ∇ℓᵢ| times more, both maxima over the
    leaf's elements and the run's steps, worst leaf. ``loss_fn(params, batch)`` is a mean
    over the rows (axis 0) of each array in ``batch``.
    """
    def per_row(params, batch):
        return jax.vmap(lambda row: jax.grad(loss_fn)(params, jax.tree.map(lambda a: a[None], row)))(batch)

    absolute, summed = {}, {}
    for params, batch in zip(params_along, batches_along):
        names, leaves = leaves_with_paths(per_row(params, batch))
        for name, rows in zip(names, leaves):
            rows = np.asarray(rows, np.float64).reshape(len(rows), -1)
            absolute[name] = max(absolute.get(name, 0.0), np.max(np.abs(rows).sum(0), initial=0.0))
            summed[name] = max(summed.get(name, 0.0), np.max(np.abs(rows.sum(0)), initial=0.0))
    return max([absolute[name] / summed[name] for name in absolute if summed[name] > 0], default=1.0)


def tanh_regression_loss_bound(params_bound, params_along, batches_along, implementations=2) -> float:
    """rounding_bound of the loss mean((tanh(x·w + b) − y)²) of the sweep and train-step tests, at
    params within ``params_bound`` (relative_error) of each other, along a run.

    A relative change δ of every weight and pre-activation (the params' own deviation, and the
    dot product's rounding, which is one of w) moves the loss by at most
    κ_L·δ, κ_L = Σᵢ 2|rᵢ|·(Σⱼ|xᵢⱼwⱼ| + |b|) / Σᵢ rᵢ² (|tanh'| ≤ 1), worst step; tanh, the
    residual and the square err relative to |pred|, which enters as κ_L does with |pred| for
    the pre-activation; the mean of positive squares errs by a rounding per row.
    """
    worst = 1.0
    for params, (x, y) in zip(params_along, batches_along):
        x, w, b, y = (np.asarray(a, np.float64) for a in (x, params["w"], params["b"], y))
        x, w = x.reshape(len(x), -1), w.reshape(x.shape[1] if x.ndim > 1 else 1, -1)
        r = np.tanh(x @ w + b) - y.reshape(len(y), -1)
        scale = np.abs(x) @ np.abs(w) + np.abs(b)
        worst = max(worst, float(np.sum(2 * np.abs(r) * np.maximum(scale, 1.0)) / np.sum(r * r)))
    rows = int(np.size(batches_along[0][1]))
    dot = rounding_bound(1, int(np.shape(batches_along[0][0])[-1]) + 1, implementations=implementations)
    pointwise = rounding_bound(1, 3, 1, implementations=implementations)  # tanh, − y, square
    return worst * (params_bound + dot + pointwise) + rounding_bound(1, rows, implementations=implementations)


def float32_beta_ops(b1=None, b2=None) -> float:
    """Half-ulps per step that bias corrections 1 − βᵗ computed from β rounded to float32 add
    to an update m/(1 − β₁ᵗ) / √(v/(1 − β₂ᵗ)) (optax's, keras'), for rounding_bound's ops.

    β off by eps/2 puts βᵗ off by t·βᵗ⁻¹·eps/2, which is β/(1 − β) · t(1 − β)βᵗ⁻¹/(1 − βᵗ) ≤
    β/(1 − β) half-ulps of 1 − βᵗ: a cancellation, so 1000 of them at β = 0.999. The update
    divides by 1 − β₁ᵗ and by the square root of 1 − β₂ᵗ (half the relative error).
    """
    ops = 0.0 if b1 is None else b1 / (1 - b1)
    return ops + (0.0 if b2 is None else 0.5 * b2 / (1 - b2))


# Peer parity (optax, torch, keras): PEER_STEPS steps on gradients spanning nine decades,
# through one compiled scan per optimizer structure.
PEER_STEPS = 200

# Several ranks, a scalar and an empty leaf, in nested containers.
# Few leaves because each one adds to every compilation.
PEER_SHAPES = {"kernel": (4, 6), "bias": [(5,), ()], "empty": (0,)}


def peer_params(rng: np.random.Generator) -> dict:
    return jax.tree.map(lambda shape: rng.standard_normal(shape).astype(np.float32), PEER_SHAPES,
                        is_leaf=lambda x: isinstance(x, tuple))


def wide_gradients(rng: np.random.Generator, params, steps: int = PEER_STEPS) -> dict:
    """``steps`` gradients per leaf, of random sign and magnitude log-uniform in [1e-6, 1e3]."""
    def draw(p):
        shape = (steps, *np.shape(p))
        return (rng.choice([-1.0, 1.0], shape) * 10.0 ** rng.uniform(-6, 3, shape)).astype(np.float32)

    return jax.tree.map(draw, params)


def uniform_in(low: float, high: float):
    """A sampler ``rng -> value`` for hyperparameter spaces: :func:`uniform` with its bounds bound."""
    return lambda rng: uniform(rng, low, high)


def log_uniform_in(low: float, high: float):
    return lambda rng: log_uniform(rng, low, high)


# How many times each key's scan was traced: the hyperparameters are state, so once.
TRACES = collections.Counter()
_COMPILED = {}


def scan_trajectory(key, tx: adaptx.GradientTransformation, params, grads, loss=None):
    """Params and optimizer state after one update per row of ``grads`` (or of ``loss``'s gradient).

    One jitted ``lax.scan`` per ``key``: optimizers built with the same
    structural options but other numbers reuse it, because their numbers
    travel in the state. ``loss``, when given, replaces ``grads`` by
    ``jax.grad(loss)`` at the current params; ``grads`` then only sets the step count.
    """
    if key not in _COMPILED:
        def run(state, params, grads):
            TRACES[key] += 1

            def step(carry, g):
                p, s = carry
                if loss is not None:
                    g = jax.grad(loss)(p)
                u, s = tx.update(g, s, p)
                return (adaptx.apply_updates(p, u), s), None

            return jax.lax.scan(step, (params, state), grads)[0]

        _COMPILED[key] = jax.jit(run)
    return _COMPILED[key](tx.init(params), params, grads)


def relative_deviation(got, want) -> float:
    """max over leaves of :func:`relative_error`: each leaf's max|got − want| / max|want|.

    Per leaf rather than per element: a coordinate that a long path of large
    updates brought near 0 carries rounding error of the size of those
    updates, so its own relative error says nothing about the optimizer.
    """
    return max((relative_error(g, w) for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True)),
               default=0.0)


def identical(got, want) -> bool:
    return all(np.array_equal(np.asarray(g), np.asarray(w))
               for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True))


# Prodigy (issue 13): d·g 1, m 3, v 4; c = √(1 − β₂ᵗ)/(1 − β₁ᵗ) 2 and 4 transcendentals, d·γ·c 2,
# d/d₀ 1; r ← β₃r + (d/d₀)·dlr·⟨g, x₀ − x⟩: x₀ − x 1, ·g 1, a sum over at most 30 elements (the
# test pytrees) 30, the weights 2, the EMA 2; d' = κ·r/‖s‖₁ 2 (‖s‖₁'s sum is as long as r's);
# the step: d'·ε, √v, +, ÷ 4, + λθ 2, ·d·c 2, ·(−γ) 1, θ + u 1.
STEP_COST.update(prodigy=(58, 4))
# LAMB: Adam's chain 20 and 4, the decay inside r 2, then the trust ratio: ‖θ‖ and ‖r‖ over at
# most 30 elements (Σx² 30, √ 1), the ratio 1 and its product 1; keras' ratio reads θ − θλη 2.
STEP_COST.update(lamb=(58, 4))
# The rest of the adaptive family, counted as above (decay λθ 2 where the alias has one):
STEP_COST.update(
    adabelief=(22, 4),  # adam's chain, plus g − m 1 and its square 1
    yogi=(20, 4),  # m 3, g² 1, v − g² 1 (sign exact), (1 − β₂)·sign·g² 2, v − · 1, then adam's divisions
    nadamw=(26, 4),  # nadam's chain and the decay
    adamaxw=(14, 2),  # adamax's chain and the decay
    novograd=(42, 0),  # ‖g‖² over ≤ 30 elements 30, v 3, √ + ε 2, g/· 1, + λθ 2, β₁m + · 2, ·η 1, θ + u 1
    adan=(24, 6),  # Δ 1, m 3, v 3, g + cΔ 2, ² 1, n 3, n̂ √ + ε 3, m̂ + c·v̂ 3, ÷ 1, decay 2, η 1, θ 1; 3 corrections
    adopt=(12, 1),  # √v 1, g/· 1 (max, clip exact), k^¼ 1 transcendental, m 3, v 4, ·η 1, θ + u 1
    ademamix=(27, 4),  # adam's chain, the slow EMA 3, + α·m₂ 2, the decay 2
    # v 4, √v̂ + ε 3, g/· 1, decay 2, ·η 1, z + 1, x from y and z 3, x + c(z − x) 3, c = w/Σw 2 and the
    # power 1 transcendental, y 3, y_new − y 1, θ + u 1; 1 − β₂ᵗ 2 transcendentals
    schedule_free_adamw=(28, 3),
)
