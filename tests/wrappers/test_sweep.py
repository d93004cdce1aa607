"""adaptx.sweep: one vmapped program gives each setting the numbers of its own run."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adaptx
from harness import gradient_condition, relative_error, rounding_bound, step_cost, tanh_regression_loss_bound

STEPS = 12
X = jax.random.normal(jax.random.key(0), (16, 3))
Y = jnp.tanh(X @ jnp.array([1.0, -2.0, 0.5]) + 0.3)
PARAMS = {"w": jnp.full(3, 0.1), "b": jnp.zeros(())}
DATA = (X, Y)


def loss_fn(params, batch):
    x, y = batch
    return jnp.mean((jnp.tanh(x @ params["w"] + params["b"]) - y) ** 2)


def minibatch(data, step):
    """Four rows chosen by the step, so every setting sees the same changing batches."""
    x, y = data
    rows = jax.random.randint(jax.random.fold_in(jax.random.key(1), step), (4,), 0, len(x))
    return x[rows], y[rows]


def separate_run(tx, batch_fn=lambda data, step: data):
    """The reference: ``tx`` built for one setting, trained on its own; and the params each step saw."""
    @jax.jit
    def train(params, state):
        def step(carry, t):
            params, state = carry
            loss, grads = jax.value_and_grad(loss_fn)(params, batch_fn(DATA, t))
            updates, state = tx.update(grads, state, params)
            return (adaptx.apply_updates(params, updates), state), (loss, params)

        (params, state), (losses, along) = jax.lax.scan(step, (params, state), jnp.arange(STEPS))
        return params, losses, loss_fn(params, batch_fn(DATA, STEPS)), along

    params, losses, final, along = train(PARAMS, tx.init(PARAMS))
    along = [jax.tree.map(lambda x: x[t], along) for t in range(STEPS)] + [params]
    return params, losses, final, along


# One step's roundings beyond the optimizer's (harness.STEP_COST): the model and its squared
# error per row (x·w over 3, + b, tanh, − y, square: 7 and a transcendental), the gradient
# through them (1 − tanh² and the chain's products: 5), and the mean over the rows, which the
# vmapped program may add in another order: one rounding per row, relative to Σ|terms|, κ times
# more relative to the gradient (harness.gradient_condition).
MODEL_OPS, MODEL_TRANSCENDENTALS = 12, 1


def bounds(cost, along, batch_fn):
    """(params, losses) rounding_bound of two float32 programs of one setting's run;
    ``cost`` is the optimizer's (ops, transcendentals) per step."""
    batches = [batch_fn(DATA, t) for t in range(STEPS + 1)]
    rows = len(batches[0][0])
    ops, transcendentals = cost
    ops += MODEL_OPS + rows * gradient_condition(loss_fn, along, batches)
    params = rounding_bound(STEPS, ops, transcendentals + MODEL_TRANSCENDENTALS, implementations=2)
    return params, tanh_regression_loss_bound(params, along, batches)


def assert_matches_separate_runs(result, build, cost, batch_fn=lambda data, step: data, which=None):
    for i in range(len(result)) if which is None else which:
        setting = result.settings[i]
        params, losses, final, along = separate_run(build(**setting), batch_fn)
        params_bound, loss_bound = bounds(cost, along, batch_fn)
        assert relative_error(result.losses[i], losses) <= loss_bound, (relative_error(result.losses[i], losses), loss_bound)
        assert relative_error(result.final_loss[i], final) <= loss_bound
        for got, want in zip(jax.tree.leaves(result.params), jax.tree.leaves(params)):
            assert relative_error(got[i], want) <= params_bound, (relative_error(got[i], want), params_bound)


def test_grid_is_the_product_with_the_last_name_fastest():
    assert adaptx.grid(a=[1, 2], b=[3, 4]) == [
        {"a": 1, "b": 3}, {"a": 1, "b": 4}, {"a": 2, "b": 3}, {"a": 2, "b": 4}
    ]


def test_each_setting_equals_its_own_run_including_decay_rates():
    # b2 = 0.999 checks the complement 1 − β₂ is rounded as a constructed adam rounds it.
    settings = [{"learning_rate": 0.3, "b2": 0.999}, {"learning_rate": 0.01, "b2": 0.9}]
    result = adaptx.sweep(loss_fn, adaptx.adam(), PARAMS, DATA, settings, steps=STEPS, progress=False)
    assert result.losses.shape == (2, STEPS) and result.final_loss.shape == (2,)
    assert_matches_separate_runs(result, lambda **s: adaptx.adam(**s), step_cost("adam"))


def test_chunked_settings_and_scans_give_the_same_numbers_and_records():
    rates = [0.2, 0.05, 0.01, 0.001, 0.1]

    def run(**options):
        return adaptx.sweep(
            loss_fn, adaptx.rmsprop(0.1, momentum=0.5), PARAMS, DATA, {"learning_rate": rates},
            steps=STEPS, batch_fn=minibatch, progress=False, record_every=2,
            record=lambda params, state: (params["b"], adaptx.hyperparams(state)["learning_rate"]),
            **options,
        )

    whole = run()
    pieces = run(chunk_size=2, scan_steps=8)  # 3 chunks, the last padded; scans of 8 and 4 steps
    # vmaps of 2 and of 5 settings: other programs, within each setting's bounds
    for i, rate in enumerate(rates):
        params_bound, loss_bound = bounds(
            step_cost("rmsprop"), separate_run(adaptx.rmsprop(rate, momentum=0.5), minibatch)[3], minibatch)
        assert relative_error(pieces.losses[i], whole.losses[i]) <= loss_bound
        assert relative_error(pieces.final_loss[i], whole.final_loss[i]) <= loss_bound
        for a, b in zip(jax.tree.leaves((pieces.params, pieces.records)), jax.tree.leaves((whole.params, whole.records))):
            assert a.shape[0] == 5
            assert relative_error(a[i], b[i]) <= params_bound
    bias, learning_rate = pieces.records
    np.testing.assert_array_equal(pieces.record_steps, [2, 4, 6, 8, 10, 12])
    np.testing.assert_array_equal(bias[:, -1], pieces.params["b"])
    np.testing.assert_allclose(learning_rate, np.repeat(np.float32(rates)[:, None], 6, axis=1))
    assert_matches_separate_runs(
        pieces, lambda learning_rate: adaptx.rmsprop(learning_rate, momentum=0.5), step_cost("rmsprop"), minibatch, which=[4]
    )


def test_a_chain_holding_one_optimizer_is_swept_by_its_argument_names():
    def build(**setting):
        return adaptx.chain(adaptx.clip_by_global_norm(0.05), adaptx.sgd(**{"momentum": 0.9, **setting}))

    settings = [{"learning_rate": 0.5}, {"learning_rate": 0.1, "momentum": 0.5}]
    result = adaptx.sweep(loss_fn, build(learning_rate=1.0), PARAMS, DATA, settings, steps=STEPS, progress=False)
    # clip_by_global_norm then SGD: the norm over 4 elements (≤ 7 roundings) on top of SGD's
    assert_matches_separate_runs(result, build, (step_cost("sgd")[0] + 7, 0))
    # A name one setting leaves out shows the optimizer's own value in the table.
    assert [row["momentum"] for row in result.rows()] == pytest.approx([0.9, 0.5])


def test_table_marks_divergence_and_picks_the_best_finite_setting():
    result = adaptx.sweep(
        lambda p, _: jnp.sum(p ** 2), adaptx.sgd(0.1), jnp.ones(2), None,
        {"learning_rate": [0.1, 2.0, 0.4]}, steps=60, progress=False,
    )
    rows = result.rows()
    assert [row["diverged"] for row in rows] == [False, True, False]
    assert result.best()["learning_rate"] == pytest.approx(0.4)
    table = result.to_markdown(sort=True).splitlines()
    assert table[0] == "| learning_rate | final_loss | min_loss | diverged |"
    assert table[2].startswith("| 0.4 |") and table[-1].endswith("| yes |")


@pytest.mark.parametrize(
    "settings, steps, message",
    [
        ({"learning_rate": [-1.0]}, 4, r"learning_rate must lie in \[0, inf\)"),
        ({"lr": [0.1]}, 4, "no hyperparameter 'lr'"),
        ([], 4, "settings is empty"),
        ({"learning_rate": [0.1]}, 0, "steps must be a positive integer"),
        ({"learning_rate": [0.1]}, 7, "steps=7 must be a multiple of record_every=2"),
    ],
)
def test_bad_input_says_what_is_wrong(settings, steps, message):
    with pytest.raises(ValueError, match=message):
        adaptx.sweep(loss_fn, adaptx.adam(), PARAMS, DATA, settings, steps=steps, record_every=2, progress=False)
