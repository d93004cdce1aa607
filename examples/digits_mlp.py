"""Train an MLP on real handwritten digits with adaptx, watch its effective learning rate, sweep it.

    python examples/digits_mlp.py

Needs scikit-learn (the digits ship with it): pip install 'adaptx[demo]'.
"""
import jax
import numpy as np

import adaptx
from adaptx_demo import digits

STEPS = 600
RATE_STATS = ("norm_ratio", "rate_mean", "rate_min", "rate_max", "frac_below")


def main():
    data = digits.load()
    train, test = (data.x_train, data.y_train), (data.x_test, data.y_test)
    stream = (train, digits.batch_schedule(len(data.y_train), STEPS, batch_size=64))

    # Adam, wrapped to record |update| / |gradient| per coordinate inside the jitted step.
    tx = adaptx.monitor(adaptx.adam(learning_rate=3e-3), threshold=1e-4)
    params = digits.init_mlp()
    state = tx.init(params)

    @jax.jit
    def step(params, state, stream, t):
        loss, grads = jax.value_and_grad(digits.cross_entropy)(params, digits.minibatch(stream, t))
        updates, state = tx.update(grads, state, params)
        return adaptx.apply_updates(params, updates), state, loss

    for t in range(STEPS):
        if t == STEPS // 2:
            # Anneal: the learning rate lives in the state, so the step is not recompiled.
            state = adaptx.set_hyperparams(state, learning_rate=1e-3)
        params, state, loss = step(params, state, stream, t)
        if (t + 1) % 100 == 0:
            stats = adaptx.monitor_stats(state)
            w1 = {name: stats[name]["layer1"]["w"] for name in RATE_STATS}
            print(
                f"step {t + 1}: minibatch loss {loss:.3f}, test accuracy {digits.accuracy(params, test):.1%};"
                f" layer-1 weights: ‖u‖/‖g‖ {w1['norm_ratio']:.2e}, |u|/|g| mean {w1['rate_mean']:.2e}"
                f" min {w1['rate_min']:.1e} max {w1['rate_max']:.1e}, below 1e-4: {w1['frac_below']:.1%}"
            )

    # Sixteen learning rates, one vmapped and jitted program, a progress bar over steps.
    result = adaptx.sweep(
        digits.cross_entropy, adaptx.adam(), digits.init_mlp(), stream,
        adaptx.grid(learning_rate=np.logspace(-4, 0, 16)), steps=STEPS, batch_fn=digits.minibatch,
    )
    accuracy = jax.jit(jax.vmap(digits.accuracy, in_axes=(0, None)))(result.params, test)
    print(result.to_markdown(sort=True))
    best = int(np.argmax(accuracy))
    print(f"best test accuracy {accuracy[best]:.1%} at learning rate {result.settings[best]['learning_rate']:.2g}")


if __name__ == "__main__":
    main()
