"""adaptx.monitor: effective-learning-rate diagnostics against hand-computed Adagrad rates."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adaptx
from harness import rounding_bound, step_cost

LR, EPS, THRESHOLD = 0.5, 1e-10, 0.095
CURVATURE = np.array([1.0, 2.0, 3.0, 0.5], np.float32)
# x[3] = 0 has a zero gradient forever: it must drop out of the rate statistics.
START = {"x": jnp.array([1.0, -2.0, 0.3, 0.0]), "frozen": jnp.ones(2)}


def loss_fn(params):
    return 0.5 * jnp.sum(CURVATURE * params["x"] ** 2) + 0.0 * jnp.sum(params["frozen"])


def train(tx, steps):
    """Run ``steps`` jitted updates, returning each step's monitor_stats."""
    @jax.jit
    def step(params, state):
        updates, state = tx.update(jax.grad(loss_fn)(params), state, params)
        return adaptx.apply_updates(params, updates), state

    params, state, history = START, tx.init(START), []
    for _ in range(steps):
        params, state = step(params, state)
        history.append(jax.device_get(adaptx.monitor_stats(state)))
    return params, state, history


def hand_computed_adagrad(steps):
    """Per step: the rates lr / (√G + ε) where g ≠ 0, and the update and gradient."""
    x, G, out = np.array(START["x"], np.float64), np.zeros(4), []
    for _ in range(steps):
        g = CURVATURE * x
        G += g * g
        rate = LR / (np.sqrt(G) + EPS)
        out.append((rate[g != 0], rate * g, g))
        x = x - rate * g
    return out


# float32 against the float64 hand computation over 4 steps of Adagrad, its gradient c·x (1
# rounding per step) and a statistic over the 4 coordinates (a mean, or a norm: 4 squares, 3
# sums and a root, or a ratio of two): rounding_bound of one float32 program.
STATS_BOUND = rounding_bound(4, step_cost("adagrad")[0] + 1 + 9)


def test_adagrad_rates_match_lr_over_root_of_accumulated_squares():
    _, _, history = train(adaptx.monitor(adaptx.adagrad(LR, eps=EPS), threshold=THRESHOLD), 4)
    for stats, (rate, update, grad) in zip(history, hand_computed_adagrad(4)):
        assert rate.size == 3
        np.testing.assert_allclose(stats["rate_mean"]["x"], rate.mean(), rtol=STATS_BOUND)
        np.testing.assert_allclose(stats["rate_min"]["x"], rate.min(), rtol=STATS_BOUND)
        np.testing.assert_allclose(stats["rate_max"]["x"], rate.max(), rtol=STATS_BOUND)
        # a count, exact only if no rate lies within rounding of the threshold
        assert np.min(np.abs(rate - THRESHOLD)) > STATS_BOUND * THRESHOLD
        np.testing.assert_allclose(stats["frac_below"]["x"], np.mean(rate < THRESHOLD))
        np.testing.assert_allclose(stats["update_norm"]["x"], np.linalg.norm(update), rtol=STATS_BOUND)
        np.testing.assert_allclose(stats["grad_norm"]["x"], np.linalg.norm(grad), rtol=STATS_BOUND)
        np.testing.assert_allclose(stats["global_grad_norm"], np.linalg.norm(grad), rtol=STATS_BOUND)
        ratio = np.linalg.norm(update) / np.linalg.norm(grad)
        np.testing.assert_allclose(stats["norm_ratio"]["x"], ratio, rtol=STATS_BOUND)
    # Adagrad's rates only shrink, and the threshold catches more coordinates as they do.
    means = [stats["rate_mean"]["x"] for stats in history]
    assert all(a > b for a, b in zip(means, means[1:]))
    fractions = [stats["frac_below"]["x"] for stats in history]
    assert fractions[0] == 0 and fractions[-1] > 0


def test_a_leaf_without_gradient_reports_nan_rates_and_zero_norms():
    _, state, _ = train(adaptx.monitor(adaptx.adagrad(LR)), 1)
    stats = adaptx.monitor_stats(state)
    for name in ("rate_mean", "rate_min", "rate_max", "frac_below", "norm_ratio"):
        assert np.isnan(stats[name]["frozen"])
    assert stats["update_norm"]["frozen"] == 0 and stats["grad_norm"]["frozen"] == 0


def test_updates_pass_through_unchanged_and_sgd_rate_is_the_learning_rate():
    wrapped, _, history = train(adaptx.monitor(adaptx.sgd(0.1, momentum=0.9)), 2)
    plain, _, _ = train(adaptx.chain(adaptx.monitor(adaptx.identity()), adaptx.sgd(0.1, momentum=0.9)), 2)
    np.testing.assert_array_equal(wrapped["x"], plain["x"])
    # The first momentum step is η·g, so every rate is η: η rounded to float32, η·g and its
    # ratio to g, three roundings.
    np.testing.assert_allclose([history[0]["rate_min"]["x"], history[0]["rate_max"]["x"]], [0.1, 0.1],
                               rtol=rounding_bound(1, 3))


def test_norms_only_keeps_the_norms_and_their_ratio():
    _, _, full = train(adaptx.monitor(adaptx.adagrad(LR)), 2)
    _, _, norms = train(adaptx.monitor(adaptx.adagrad(LR), per_coordinate=False), 2)
    assert set(norms[-1]) == {"update_norm", "grad_norm", "norm_ratio", "global_update_norm", "global_grad_norm"}
    # two programs of 2 Adagrad steps and the norms
    bound = rounding_bound(2, step_cost("adagrad")[0] + 1 + 9, implementations=2)
    for name in norms[-1]:
        np.testing.assert_allclose(jax.tree.leaves(norms[-1][name]), jax.tree.leaves(full[-1][name]), rtol=bound)


def test_set_hyperparams_reaches_the_optimizer_through_the_wrapper():
    tx = adaptx.monitor(adaptx.sgd(0.1))
    step = jax.jit(lambda g, s: tx.update(g, s)[1])
    state = tx.init(START)
    state = adaptx.set_hyperparams(state, learning_rate=0.25)
    assert float(adaptx.hyperparams(state)["learning_rate"]) == 0.25
    state = step(jax.grad(loss_fn)(START), state)
    assert float(adaptx.monitor_stats(state)["rate_mean"]["x"]) == pytest.approx(0.25)
    assert isinstance(state, adaptx.MonitorState)


def test_vmapped_over_learning_rates_inside_a_chain():
    tx = adaptx.chain(adaptx.clip_by_global_norm(100.0), adaptx.monitor(adaptx.sgd(LR)))
    rates = jnp.array([0.1, 0.4])
    grads = jax.grad(loss_fn)(START)

    @jax.jit
    @jax.vmap
    def first_step(lr):
        state = adaptx.set_hyperparams(tx.init(START), learning_rate=lr)
        return tx.update(grads, state)[1]

    states = first_step(rates)
    # unclipped (the norm is below 100): η rounded, η·g, its ratio to g
    np.testing.assert_allclose(adaptx.monitor_stats(states)["rate_max"]["x"], rates, rtol=rounding_bound(1, 3))


def test_monitor_stats_says_what_to_do_when_it_finds_no_monitor():
    with pytest.raises(ValueError, match=r"wrap the optimizer in adaptx.monitor"):
        adaptx.monitor_stats(adaptx.adam().init(START))
    twice = adaptx.chain(adaptx.monitor(adaptx.identity()), adaptx.monitor(adaptx.sgd(0.1)))
    with pytest.raises(ValueError, match="found 2 monitors"):
        adaptx.monitor_stats(twice.init(START))
    with pytest.raises(ValueError, match="threshold must lie in"):
        adaptx.monitor(adaptx.sgd(0.1), threshold=-1.0)
