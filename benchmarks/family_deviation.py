"""The closing figures of issue 13: each family method's worst deviation from its float64
reference (the tests' 100-step problems) and from its peers (optax over 200 steps, keras' Lamb
over 200), with the bound each test holds it to.

    python -m benchmarks.family_deviation        # from the repository root; prints a markdown table

It reruns the tests' own cases (tests/core/test_family.py, tests/compat/test_compat_keras.py), so the
numbers are the ones the suite asserts on; docs/optimizers.md quotes them.
"""
import os
import pathlib
import sys
import zlib

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests"))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import adaptx  # noqa: E402
import test_family as tf  # noqa: E402
from _parity import relative_deviation, trajectory  # noqa: E402
from harness import float32_beta_ops, rounding_bound, step_cost, trajectory as steps_of, worst_error  # noqa: E402


def reference_rows():
    for case in tf.CASES:
        rng, params, grads = tf._problem(case)
        values = tf._draw(case, rng)
        tx = case.make(**values, **case.options)
        error, _, _ = tf._error(case, steps_of(tx), tx.init(params), params, grads, values)
        cost = step_cost(case.id.split("-")[0])
        yield case.id, error, rounding_bound(tf.STEPS, *cost), tf.TOLERANCE
    for name, options, extra, _, samplers in tf.PRODIGY_CASES:
        rng, params, grads = tf._prodigy_problem(name)
        values = {k: {**tf.PRODIGY_SAMPLERS, **samplers}[k](rng) for k in tf.PRODIGY_SETTABLE + extra}
        tx = tf._prodigy(values, options)
        updates, seen = steps_of(tx)(tx.init(params), params, grads, tf.STEPS)
        error, _, _ = worst_error(updates, seen, grads, tf._prodigy_reference(params, values, options).step)
        bound = rounding_bound(tf.STEPS, *step_cost("prodigy"))
        yield name, error, bound, bound


def optax_rows():
    rng = np.random.default_rng(1318)
    params = tf.p_random_params(rng)
    problem = params, tf.random_grads(rng, params)
    for case in tf.OPTAX_CASES:
        name, theirs, ours, space = case
        rng = np.random.default_rng(tf.OPTAX_CASES.index(case))
        h = {k: sample(rng) for k, sample in space.items()}
        got, _ = trajectory(("adaptx-family", name), ours(h), *problem)
        want, _ = trajectory(("optax-family", name), theirs(**h), *problem)
        with jax.enable_x64(True):
            as64 = lambda tree: jax.tree.map(lambda x: np.asarray(x, np.float64), tree)  # noqa: E731
            exact, _ = trajectory(("optax64-family", name), theirs(**h), *map(as64, problem))
        yield name, relative_deviation(got, want), relative_deviation(got, exact), relative_deviation(want, exact), 1e-5
    for name, options in tf.PRODIGY_OPTAX_CASES:
        rng = np.random.default_rng(zlib.crc32(name.encode()))
        params = tf.p_random_params(rng)
        grads = tf.prodigy_gradients(params, 200, rng)
        draw = {k: tf.PRODIGY_SAMPLERS[k](rng) for k in ("learning_rate", "b1", "b2", "eps", "estim_lr0",
                                                          "estim_lr_coef", "weight_decay", "b3")}
        h = {"learning_rate": draw["learning_rate"], "betas": (draw["b1"], draw["b2"]), "eps": draw["eps"],
             "estim_lr0": draw["estim_lr0"], "estim_lr_coef": draw["estim_lr_coef"]}
        h.update({"weight_decay": draw["weight_decay"]} if options.get("weight_decay") else {})
        h.update({"beta3": draw["b3"]} if options.get("beta3") else {})
        h.update({"safeguard_warmup": True} if options.get("safeguard_warmup") else {})
        got, _ = trajectory(("adaptx-family", name), adaptx.prodigy(**h), params, grads)
        want, _ = trajectory(("optax-family", name), optax.contrib.prodigy(**h), params, grads)
        with jax.enable_x64(True):
            as64 = lambda tree: jax.tree.map(lambda x: np.asarray(x, np.float64), tree)  # noqa: E731
            exact, _ = trajectory(("optax64-family", name), optax.contrib.prodigy(**h), as64(params), as64(grads))
        ops, transcendentals = step_cost("prodigy")
        bound = rounding_bound(200, ops + float32_beta_ops(*h["betas"]), transcendentals, implementations=2)
        yield name, relative_deviation(got, want), relative_deviation(got, exact), relative_deviation(want, exact), bound


def keras_rows():
    import keras
    import test_compat_keras as tk
    from adaptx.compat import keras as kx

    for label, drawn in (("Lamb", ()), ("Lamb-clipnorm-loss_scale_factor", ("clipnorm", "loss_scale_factor")),
                         ("Lamb-weight_decay-global_clipnorm", ("weight_decay", "global_clipnorm"))):
        kwargs, rng = tk._draw(label, tk.OWN["Lamb"] + list(drawn))
        params, grads = tk._problem(rng)
        theirs = keras.optimizers.Lamb(**kwargs)
        keras_params, keras_vars, ours, state = tk.run_both(theirs, kx.Lamb(**kwargs), params, grads)
        states = tk.state_deviations("Lamb", theirs, keras_vars, state)
        yield label, tk.params_deviation(ours, keras_params, params), max(states.values(), default=0.0), tk.bound(
            "Lamb", kwargs)


def main():
    if sys.argv[1:] == ["prodigy"]:  # the Prodigy rows alone
        tf.CASES, tf.OPTAX_CASES = [], []
    print("| reference case (100 steps) | worst relative error | rounding_bound | test's bound |")
    print("|---|---|---|---|")
    for name, error, bound, asserted in reference_rows():
        print(f"| {name} | {error:.2e} | {bound:.1e} | {asserted:.1e} |")
    print()
    print("| optax case (200 steps) | vs optax float32 | vs optax float64 | optax float32 vs float64 | test's bound |")
    print("|---|---|---|---|---|")
    for name, vs32, vs64, theirs, bound in optax_rows():
        print(f"| {name} | {vs32:.2e} | {vs64:.2e} | {theirs:.2e} | {bound:.1e} |")
    print()
    print("| keras case (200 steps) | params | state (m, v) | bound |")
    print("|---|---|---|---|")
    for name, params, state, bound in keras_rows():
        print(f"| {name} | {params:.2e} | {state:.2e} | {bound:.1e} |")


if __name__ == "__main__":
    main()
