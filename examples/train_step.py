"""A jitted training step with adaptx: linear regression with Adam.

The learning rate lives in the optimizer state, so lowering it halfway with
adaptx.set_hyperparams reuses the compiled step instead of retracing it.
Run: python examples/train_step.py
"""
import jax
import jax.numpy as jnp

import adaptx


def loss(params, x, y):
    return jnp.mean((x @ params["w"] + params["b"] - y) ** 2)


optimizer = adaptx.adam(learning_rate=0.1)


@jax.jit
def train_step(params, state, x, y):
    value, grads = jax.value_and_grad(loss)(params, x, y)
    updates, state = optimizer.update(grads, state, params)
    return adaptx.apply_updates(params, updates), state, value


x = jax.random.normal(jax.random.key(0), (256, 3))
y = x @ jnp.array([1.0, -2.0, 0.5]) + 0.3
params = {"w": jnp.zeros(3), "b": jnp.zeros(())}
state = optimizer.init(params)
for step in range(300):
    if step == 150:
        state = adaptx.set_hyperparams(state, learning_rate=0.01)  # same compiled step
    params, state, value = train_step(params, state, x, y)

print(f"loss {value:.2e}, w {params['w']}, b {params['b']:.3f}")
