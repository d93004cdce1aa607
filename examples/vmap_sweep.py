"""A learning-rate sweep in one compiled program: jax.vmap over adaptx.set_hyperparams.

Each member of the batch is an independent run with its own learning rate,
and the whole sweep compiles once.
Run: python examples/vmap_sweep.py
"""
import jax
import jax.numpy as jnp

import adaptx


def loss(params, x, y):
    return jnp.mean((x @ params["w"] + params["b"] - y) ** 2)


optimizer = adaptx.rmsprop(learning_rate=1e-3)  # the value here is replaced per member


def init(params, learning_rate):
    return adaptx.set_hyperparams(optimizer.init(params), learning_rate=learning_rate)


def train(params, state, x, y, steps=200):
    def step(carry, _):
        params, state = carry
        value, grads = jax.value_and_grad(loss)(params, x, y)
        updates, state = optimizer.update(grads, state, params)
        return (adaptx.apply_updates(params, updates), state), value

    (params, state), losses = jax.lax.scan(step, (params, state), length=steps)
    return params, losses


x = jax.random.normal(jax.random.key(0), (256, 3))
y = x @ jnp.array([1.0, -2.0, 0.5]) + 0.3
params = {"w": jnp.zeros(3), "b": jnp.zeros(())}

learning_rates = jnp.logspace(-4, 0, 9)
states = jax.vmap(init, in_axes=(None, 0))(params, learning_rates)
sweep = jax.jit(jax.vmap(train, in_axes=(None, 0, None, None)))
final_params, losses = sweep(params, states, x, y)

best = int(jnp.argmin(losses[:, -1]))
for learning_rate, run in zip(learning_rates, losses):
    print(f"learning rate {learning_rate:7.0e}: final loss {run[-1]:.2e}")

print(f"best learning rate: {learning_rates[best]:.0e}")
