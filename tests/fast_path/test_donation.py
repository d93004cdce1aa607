"""Every optimizer, preset and wrapper survives a donated step, and its state owns every array it holds.

:func:`adaptx.make_train_step` donates params and state. XLA refuses to donate
one buffer twice, so a state that holds one array in two leaves (a zero shared
by two counters, one zeros tree used for two moments) fails on the first step;
and a state leaf that *is* the caller's array (a param, a jax-array
hyperparameter) gets that array deleted by the step. Each case below runs three
donated steps and compares them with three undonated ``tx.update`` +
``apply_updates`` steps; the structural tests check the same property without
compiling anything, over every case's state at once.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adaptx
from adaptx.compat import keras as K
from adaptx.compat import torch as T

STEPS = 3


def make_params():
    """Fresh arrays on every call: the donated run and the reference each get their own."""
    return {"w": jnp.asarray(np.linspace(-1.0, 1.0, 6, dtype=np.float32).reshape(3, 2)),
            "b": jnp.asarray(np.array([0.5, -0.25], np.float32))}


_X = np.random.default_rng(0).normal(size=(STEPS, 4, 3)).astype(np.float32)
_Y = np.random.default_rng(1).normal(size=(STEPS, 4, 2)).astype(np.float32)


def batches():
    return [(jnp.asarray(x), jnp.asarray(y)) for x, y in zip(_X, _Y)]


def loss(params, batch):
    x, y = batch
    return jnp.mean(jnp.square(x @ params["w"] + params["b"] - y))


def only_w(params):
    return {"w": True, "b": False}


# name -> () -> tx, or (tx, [the caller's jax arrays the tx was built with]).
# The user's arrays are made inside the factory, so each run has its own.
CASES = {
    # adaptx's optimizers
    "sgd": lambda: adaptx.sgd(0.1),
    "sgd_momentum": lambda: adaptx.sgd(0.1, momentum=0.9),
    "sgd_nesterov": lambda: adaptx.sgd(0.1, momentum=0.9, nesterov=True),
    "adagrad": lambda: adaptx.adagrad(0.1),
    "adagrad_optax": lambda: adaptx.adagrad(0.1, 0.1, 1e-7, eps_in_sqrt=True),
    "rmsprop": lambda: adaptx.rmsprop(0.01),
    "rmsprop_centered": lambda: adaptx.rmsprop(0.01, centered=True),
    "rmsprop_momentum": lambda: adaptx.rmsprop(0.01, momentum=0.9),
    "rmsprop_centered_nesterov": lambda: adaptx.rmsprop(0.01, eps_in_sqrt=True, centered=True, momentum=0.9,
                                                        nesterov=True),
    "adam": lambda: adaptx.adam(0.01),
    "adam_amsgrad": lambda: adaptx.adam(0.01, amsgrad=True),
    "adamw": lambda: adaptx.adamw(0.01),
    "adamw_amsgrad": lambda: adaptx.adamw(0.01, amsgrad=True),
    "adamw_mask": lambda: adaptx.adamw(0.01, mask=only_w),
    "adadelta": lambda: adaptx.adadelta(),
    "adamax": lambda: adaptx.adamax(),
    "nadam": lambda: adaptx.nadam(),
    "nadam_optax": lambda: adaptx.nadam(momentum_decay=None),
    "adam_schedule": lambda: adaptx.adam(lambda count: 0.01 / (1.0 + count)),
    # hyperparameters given as jax arrays are the caller's: used, never stored
    "adam_array_hyperparams": lambda: _with_arrays(
        lambda lr, b1: adaptx.adam(lr, b1=b1), jnp.asarray(0.01), jnp.asarray(0.9)),
    "sgd_array_momentum": lambda: _with_arrays(
        lambda lr, m: adaptx.sgd(lr, momentum=m), jnp.asarray(0.1), jnp.asarray(0.9)),
    "rmsprop_array_decay": lambda: _with_arrays(
        lambda lr, decay: adaptx.rmsprop(lr, decay), jnp.asarray(0.01), jnp.asarray(0.9)),
    "torch_sgd_array": lambda: _with_arrays(
        lambda lr, m: T.SGD(lr, momentum=m, dampening=0.1), jnp.asarray(0.1), jnp.asarray(0.9)),
    "keras_adam_array": lambda: _with_arrays(
        lambda lr, wd: K.Adam(lr, weight_decay=wd), jnp.asarray(0.01), jnp.asarray(0.01)),
    # adaptx.compat.torch
    "torch_sgd": lambda: T.SGD(0.1),
    "torch_sgd_damped": lambda: T.SGD(0.1, momentum=0.9, dampening=0.1),
    "torch_sgd_nesterov_decay": lambda: T.SGD(0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
    "torch_adagrad": lambda: T.Adagrad(0.1, lr_decay=0.01, initial_accumulator_value=0.1, weight_decay=0.01),
    "torch_rmsprop": lambda: T.RMSprop(0.01),
    "torch_rmsprop_centered_momentum": lambda: T.RMSprop(0.01, momentum=0.9, centered=True, weight_decay=0.01),
    "torch_adam": lambda: T.Adam(0.01),
    "torch_adam_amsgrad": lambda: T.Adam(0.01, amsgrad=True),
    "torch_adam_maximize_decay": lambda: T.Adam(0.01, weight_decay=0.01, maximize=True),
    "torch_adamw": lambda: T.AdamW(0.01),
    "torch_adamw_amsgrad": lambda: T.AdamW(0.01, amsgrad=True),
    "torch_adadelta": lambda: T.Adadelta(weight_decay=0.01),
    "torch_adamax": lambda: T.Adamax(weight_decay=0.01),
    "torch_nadam": lambda: T.NAdam(),
    "torch_nadamw": lambda: T.NAdam(weight_decay=0.01, decoupled_weight_decay=True),
    "schedule_free_adamw": lambda: adaptx.schedule_free_adamw(0.01, warmup_steps=3, weight_decay=0.01),
    "torch_radam": lambda: T.RAdam(weight_decay=0.01, decoupled_weight_decay=True),
    "torch_rprop": lambda: T.Rprop(maximize=True),
    # prodigy keeps a copy of the initial params: it must not be the params' own buffer
    "prodigy": lambda: adaptx.prodigy(weight_decay=0.01),
    # the adaptive family's blocks, one chain (one compilation)
    "family_blocks": lambda: adaptx.chain(
        adaptx.scale_by_radam(nesterov=True), adaptx.scale_by_belief(), adaptx.scale_by_yogi(),
        adaptx.scale_by_lion(), adaptx.add_decayed_weights(0.01), adaptx.scale_by_trust_ratio(),
        adaptx.scale_by_rprop(0.01), adaptx.scale_by_novograd(weight_decay=0.01), adaptx.scale_by_adan(),
        adaptx.scale_by_adopt(), adaptx.scale_by_ademamix(),
        adaptx.scale_by_learning_rate(0.01)),
    # adaptx.compat.keras
    "keras_sgd": lambda: K.SGD(0.1),
    "keras_sgd_nesterov": lambda: K.SGD(0.1, momentum=0.9, nesterov=True, clipnorm=1.0),
    "keras_adagrad": lambda: K.Adagrad(0.1),
    "keras_rmsprop": lambda: K.RMSprop(0.01),
    "keras_rmsprop_centered_momentum": lambda: K.RMSprop(0.01, momentum=0.9, centered=True, weight_decay=0.01),
    "keras_adam": lambda: K.Adam(0.01),
    "keras_adam_amsgrad_clipnorm": lambda: K.Adam(0.01, amsgrad=True, clipnorm=1.0),
    "keras_adamw": lambda: K.AdamW(0.01),
    "keras_adamw_amsgrad_global_clipnorm": lambda: K.AdamW(0.01, amsgrad=True, global_clipnorm=1.0),
    "keras_adadelta": lambda: K.Adadelta(1.0, clipvalue=0.5),
    "keras_adamax": lambda: K.Adamax(0.01),
    "keras_nadam": lambda: K.Nadam(0.01, weight_decay=0.01, loss_scale_factor=2.0),
    "keras_lion": lambda: K.Lion(0.01, weight_decay=0.01),
    "keras_lamb": lambda: K.Lamb(0.01, weight_decay=0.01),
    "keras_sgd_schedule": lambda: K.SGD(lambda step: 0.1 / (1.0 + step), momentum=0.9),
    # wrappers
    "skip_nonfinite": lambda: adaptx.skip_nonfinite(adaptx.adam(0.01)),
    "skip_nonfinite_limit": lambda: adaptx.skip_nonfinite(adaptx.sgd(0.1, momentum=0.9), max_consecutive=2),
    "accumulate_gradients": lambda: adaptx.accumulate_gradients(adaptx.adam(0.01), 2),
    "accumulate_gradients_sgd": lambda: adaptx.accumulate_gradients(adaptx.sgd(0.1), 1),
    "masked": lambda: adaptx.masked(adaptx.adam(0.01), only_w),
    "masked_prefix": lambda: adaptx.masked(adaptx.sgd(0.1, momentum=0.9), {"w": False, "b": True}),
    "partition": lambda: adaptx.partition(
        {"body": adaptx.adam(0.01), "head": adaptx.sgd(0.1, momentum=0.9)}, {"w": "body", "b": "head"}),
    "monitor": lambda: adaptx.monitor(adaptx.adagrad(0.1)),
    "monitor_norms": lambda: adaptx.monitor(adaptx.adam(0.01), per_coordinate=False),
    "flat_state_adam": lambda: adaptx.flat_state(adaptx.adam(0.01)),
    "flat_state_adagrad": lambda: adaptx.flat_state(adaptx.adagrad(0.1)),
    "flat_state_rmsprop": lambda: adaptx.flat_state(adaptx.rmsprop(0.01)),
    "flat_state_amsgrad": lambda: adaptx.flat_state(adaptx.adam(0.01, amsgrad=True)),
    "chain_clip_adam": lambda: adaptx.chain(adaptx.clip_by_global_norm(1.0), adaptx.adam(0.01)),
    "nested_wrappers": lambda: adaptx.skip_nonfinite(adaptx.accumulate_gradients(
        adaptx.monitor(adaptx.masked(adaptx.adam(0.01, amsgrad=True), only_w)), 2)),
    # blocks that count their own steps, chained by hand
    "blocks_own_counts": lambda: adaptx.chain(
        adaptx.scale_by_adam(amsgrad=True), adaptx.trace(0.9, dampening=0.1), adaptx.bias_correction(0.9),
        adaptx.scale_by_inverse_time_decay(0.01), adaptx.scale_by_nadam(), adaptx.ema(0.9),
        adaptx.scale_by_learning_rate(lambda count: 0.01)),
    "blocks_scalings_and_stateless": lambda: adaptx.chain(
        adaptx.identity(), adaptx.unscale_gradients(2.0), adaptx.clip_by_value(1.0), adaptx.clip_by_norm(1.0),
        adaptx.accumulate_squares(initial_accumulator=0.1), adaptx.scale_by_rms(centered=True),
        adaptx.scale_by_adadelta(), adaptx.scale_by_adamax(), adaptx.scale(0.5), adaptx.add_decayed_weights(0.01),
        adaptx.scale_by_learning_rate(0.01)),
    # memory-efficient state (issue 12); min_size=1 quantizes even these tiny leaves
    "adafactor": lambda: adaptx.adafactor(),
    "adafactor_momentum_decay": lambda: adaptx.adafactor(momentum=0.9, weight_decay_rate=1e-3),
    "adam_8bit": lambda: adaptx.adam(0.01, mu_dtype=adaptx.Quantized(8, min_size=1),
                                     nu_dtype=adaptx.Quantized(8, min_size=1)),
    "sgd_4bit_momentum": lambda: adaptx.sgd(0.1, momentum=0.9, mu_dtype=adaptx.Quantized(4, min_size=1)),
    "torch_adafactor": lambda: T.Adafactor(weight_decay=0.01),
    "keras_adafactor": lambda: K.Adafactor(0.01),
}


def _with_arrays(factory, *arrays):
    return factory(*arrays), list(arrays)


def build(name):
    """(tx, the caller's jax arrays it was built with)."""
    made = CASES[name]()
    return (made, []) if isinstance(made, adaptx.GradientTransformation) else made


def _buffer(leaf):
    try:
        return leaf.unsafe_buffer_pointer() if leaf.size else None
    except Exception:  # noqa: BLE001  (a backend or array kind without one: the id check still runs)
        return None


def shared_arrays(named_trees: dict) -> list:
    """Descriptions of every array object (or device buffer) that appears at two places of ``named_trees``."""
    seen, clashes = {}, []
    for name, tree in named_trees.items():
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            if not isinstance(leaf, jax.Array):
                continue
            where = f"{name}{jax.tree_util.keystr(path)}"
            for key in (("id", id(leaf)), ("buffer", _buffer(leaf))):
                if key[1] is None:
                    continue
                if key in seen:
                    clashes.append(f"{where} is the {key[0]} of {seen[key]}")
                else:
                    seen[key] = where
    return clashes


def test_every_case_is_collected():
    """Names the exports the cases must cover, so a new optimizer or preset cannot slip past this file."""
    covered = {"sgd", "adagrad", "rmsprop", "adam", "adamw", "adadelta", "adamax", "nadam", "skip_nonfinite",
               "accumulate_gradients", "masked", "partition", "monitor", "flat_state", "chain"}
    exported = {name for name in adaptx.__all__ if name in covered}
    assert exported == covered
    for module, prefix in ((T, "torch_"), (K, "keras_")):
        for preset in module.__all__:
            assert any(case.startswith(prefix + preset.lower()) for case in CASES), f"{module.__name__}.{preset}"


def test_no_state_shares_an_array_with_another_leaf_params_or_hyperparameters():
    """No two leaves of any state are one array, across every case's state at once.

    Initialising every case against the same params also catches a module-level
    array reused by every init, and a state leaf that is one of the params or a
    jax-array hyperparameter the caller passed. Nothing here compiles.
    """
    params = make_params()
    trees = {"params": params}
    for name in CASES:
        tx, arrays = build(name)
        trees[f"{name}.arrays"] = arrays
        trees[name] = tx.init(params)
        trees[f"{name}.again"] = tx.init(params)  # a second init of the same tx shares nothing with the first
    assert not shared_arrays(trees)


def test_set_hyperparams_does_not_store_the_callers_array():
    """set_hyperparams(state, learning_rate=x) with a float32 jax array ``x`` keeps a copy of ``x``, not ``x``."""
    tx = adaptx.adam(0.01)
    learning_rate = jnp.asarray(0.02, jnp.float32)
    state = adaptx.set_hyperparams(tx.init(make_params()), learning_rate=learning_rate)
    assert not shared_arrays({"state": state, "learning_rate": learning_rate})


def _plain_steps(tx, params, state):
    """The reference: undonated ``tx.update`` + ``apply_updates``, eagerly."""
    losses = []
    for batch in batches():
        value, grads = jax.value_and_grad(loss)(params, batch)
        updates, state = tx.update(grads, state, params)
        params = adaptx.apply_updates(params, updates)
        losses.append(value)
    return params, state, losses


def _close(actual, expected, what):
    actual, expected = jax.tree.leaves(actual), jax.tree.leaves(expected)
    assert len(actual) == len(expected), what
    for a, e in zip(actual, expected):
        a, e = np.asarray(a), np.asarray(e)
        assert a.dtype == e.dtype and a.shape == e.shape, what
        if np.issubdtype(e.dtype, np.inexact):
            # Float32 rounding over three steps: the fast path's kernel may fuse and reorder.
            np.testing.assert_allclose(a, e, rtol=2e-6, atol=1e-7, equal_nan=True, err_msg=what)
        else:
            np.testing.assert_array_equal(a, e, err_msg=what)


@pytest.mark.parametrize("name", sorted(CASES))
def test_donated_steps_equal_plain_steps(name):
    tx, arrays = build(name)
    params = make_params()
    state = tx.init(params)
    assert not shared_arrays({"params": params, "state": state, "arrays": arrays})

    step = adaptx.make_train_step(loss, tx)  # one compilation: every call has the same shapes
    losses = []
    for batch in batches():
        old = jax.tree.leaves(params)
        params, state, value = step(params, state, batch)
        # (jit drops the state leaves an update never reads, monitor's last diagnostics, from the donation)
        assert all(x.is_deleted() for x in old), "make_train_step donates the params"
        losses.append(value)
    assert np.all(np.isfinite(losses)), losses
    assert not any(x.is_deleted() for x in arrays), "the caller's hyperparameter arrays survive the steps"
    assert not shared_arrays({"params": params, "state": state, "arrays": arrays})

    reference_tx, _ = build(name)
    reference_params = make_params()
    want_params, want_state, want_losses = _plain_steps(reference_tx, reference_params,
                                                        reference_tx.init(reference_params))
    _close(losses, want_losses, f"{name}: losses")
    _close(params, want_params, f"{name}: params")
    _close(state, want_state, f"{name}: state")
    assert jax.tree.structure(state) == jax.tree.structure(want_state)
