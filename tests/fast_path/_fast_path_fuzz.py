"""Random mismatched trees, shapes and dtypes through every fast entry point; run by test_fast_path_safety.py.

Run in a subprocess so that a crash in native code (a signal) fails the test
instead of killing pytest. Every case must either step or raise ValueError /
TypeError; the script prints ``OK <cases>`` at the end.
"""
import sys

import jax
import jax.numpy as jnp
from hypothesis import HealthCheck, given, settings, strategies as st

import adaptx

DTYPES = [jnp.float32, jnp.bfloat16, jnp.float16, jnp.int32]
SHAPES = st.lists(st.integers(0, 5), min_size=0, max_size=3).map(tuple)
TXS = {
    "adam": lambda: adaptx.adam(1e-2),
    "adagrad": lambda: adaptx.adagrad(0.1),
    "rmsprop": lambda: adaptx.rmsprop(1e-2),
    "adamw masked": lambda: adaptx.adamw(1e-2, mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p)),
    "flat adam": lambda: adaptx.flat_state(adaptx.adam(1e-2)),
    "flat rmsprop": lambda: adaptx.flat_state(adaptx.rmsprop(1e-2)),
    "clipped adam": lambda: adaptx.chain(adaptx.clip_by_global_norm(1.0), adaptx.adam(1e-2)),
}
BUILT = {name: make() for name, make in TXS.items()}


def tree(shapes, dtypes):
    return {f"l{i}": jnp.ones(shape, dtype) for i, (shape, dtype) in enumerate(zip(shapes, dtypes))}


leaves = st.lists(st.tuples(SHAPES, st.sampled_from(DTYPES)), min_size=1, max_size=4)


@st.composite
def case(draw):
    params = draw(leaves)
    kind = draw(st.sampled_from(["grads", "state", "both", "none"]))
    other = draw(leaves)
    grads = other if kind in ("grads", "both") else params
    state_of = other if kind in ("state", "both") else params
    return draw(st.sampled_from(sorted(TXS))), params, grads, state_of, draw(st.sampled_from(["apply", "train"]))


COUNT = [0]


@settings(max_examples=int(sys.argv[1]) if len(sys.argv) > 1 else 60, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(case())
def check(drawn):
    name, params, grads, state_of, entry = drawn
    tx = BUILT[name]
    p = tree(*zip(*params))
    g = tree(*zip(*grads))
    COUNT[0] += 1
    try:
        state = tx.init(tree(*zip(*state_of)))
        if entry == "apply":
            out = jax.jit(lambda p, s, g: adaptx.update_and_apply(tx, g, s, p))(p, state, g)
        else:
            out = adaptx.make_train_step(lambda q, b: sum(jnp.sum(x.astype(jnp.float32)) for x in jax.tree.leaves(q)),
                                         tx, donate=False)(p, state, None)
        jax.block_until_ready(out)
    except (ValueError, TypeError) as error:
        message = str(error)
        assert "_src" not in message, message
        return
    # It stepped: then the trees must have fitted.
    assert [tuple(s) for s, _ in state_of] == [tuple(s) for s, _ in params] or name.startswith("flat"), drawn


if __name__ == "__main__":
    check()
    print(f"OK {COUNT[0]}")
