"""Demo section: Adam with float32, 8-bit and 4-bit moments, and Adafactor, on two small models.

Each optimizer trains the same model from the same initialisation on the same minibatches, on
the plain path (``tx.update`` then ``apply_updates``, one jitted ``lax.scan``):

- char LM: an embedding (16 per character) of a 16-character context, concatenated, a tanh
  layer of 256 and a softmax over the characters, predicting the next character of
  ``quality_text.txt`` (public-domain text shipped here: the Gettysburg Address and the opening
  of A Tale of Two Cities, 2.4 kB); the weight matrices (256×256 and 256×V) hold ≥ 4096
  elements, so their moments quantize;
- digits MLP: 64-128-128-10, tanh, on scikit-learn's digits.

Reported: state bytes per parameter (from the state's arrays), the final loss over the whole
training set and its change against float32 Adam, and the minibatch loss curves.
``benchmarks/quantized_quality.py`` runs the same tasks for longer and records the figures.
"""
import concurrent.futures
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import adaptx
from adaptx_demo import digits, markdown

TEXT = Path(__file__).with_name("quality_text.txt")
CONTEXT, EMBED, HIDDEN, BATCH = 16, 16, 256, 64
TASKS = ("char LM", "digits MLP")
STEPS = {False: 400, True: 40}  # quick -> steps (400: as benchmarks/quantized_quality.py)
FILE = "memory_curves.png"
WORK = 2  # training, the figure


def optimizers() -> dict:
    """The contenders: Adam with float32, 8-bit and 4-bit moments, Adafactor (paper defaults and η = 0.1)."""
    q8, q4 = adaptx.Quantized(8), adaptx.Quantized(4)
    return {
        "Adam float32": adaptx.adam(3e-3),
        "Adam 8-bit": adaptx.adam(3e-3, mu_dtype=q8, nu_dtype=q8),
        "Adam 4-bit": adaptx.adam(3e-3, mu_dtype=q4, nu_dtype=q4),
        "Adafactor (paper defaults)": adaptx.adafactor(),
        "Adafactor η = 0.1": adaptx.adafactor(0.1),
    }


def char_data():
    """(contexts (n, CONTEXT) int32, next characters (n,) int32, vocabulary size)."""
    text = TEXT.read_text()
    vocab = sorted(set(text))
    ids = np.asarray([vocab.index(c) for c in text], np.int32)
    windows = np.lib.stride_tricks.sliding_window_view(ids, CONTEXT + 1)
    return jnp.asarray(windows[:, :-1]), jnp.asarray(windows[:, -1]), len(vocab)


def char_init(vocab, seed=0):
    rng = np.random.default_rng(seed)
    fan_in = CONTEXT * EMBED

    def normal(shape, scale):
        return jnp.asarray(rng.standard_normal(shape) * scale, jnp.float32)

    return {"embed": normal((vocab, EMBED), 1.0), "w1": normal((fan_in, HIDDEN), fan_in ** -0.5),
            "b1": jnp.zeros(HIDDEN), "w2": normal((HIDDEN, vocab), HIDDEN ** -0.5), "b2": jnp.zeros(vocab)}


def char_loss(params, batch):
    contexts, targets = batch
    x = params["embed"][contexts].reshape(contexts.shape[0], -1)
    logits = jnp.tanh(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]
    return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(logits, targets[:, None], -1)[:, 0])


def train(tx, params, loss_fn, data, schedule):
    """(final params, minibatch losses, the final state) of ``tx`` over ``schedule`` (rows per step)."""
    @jax.jit
    def run(params):
        def step(carry, rows):
            p, s = carry
            loss, g = jax.value_and_grad(loss_fn)(p, (data[0][rows], data[1][rows]))
            u, s = tx.update(g, s, p)
            return (adaptx.apply_updates(p, u), s), loss

        (p, s), losses = jax.lax.scan(step, (params, tx.init(params)), schedule)
        return p, losses, s

    return run(params)


def task(name, steps):
    """(params, loss, data, minibatch schedule, test split or None) of task ``name``."""
    if name == "char LM":
        contexts, targets, vocab = char_data()
        return (char_init(vocab), char_loss, (contexts, targets),
                digits.batch_schedule(len(targets), steps, BATCH, seed=0), None)
    split = digits.load()
    return (digits.init_mlp((64, 128, 128, 10), seed=0), digits.cross_entropy, (split.x_train, split.y_train),
            digits.batch_schedule(len(split.y_train), steps, BATCH, seed=0), (split.x_test, split.y_test))


def measure(steps, tasks=TASKS, txs=None) -> dict:
    """{task: {optimizer: final_loss, vs_float32, state_bytes_per_parameter, curve[, test_accuracy]}}."""
    txs = optimizers() if txs is None else txs
    out = {}
    for task_name in tasks:
        params, loss_fn, data, schedule, test = task(task_name, steps)
        count = sum(leaf.size for leaf in jax.tree.leaves(params))
        rows = {}
        for name, tx in txs.items():
            final, losses, state = train(tx, params, loss_fn, data, schedule)
            row = {"final_loss": float(loss_fn(final, data)), "curve": np.asarray(losses).tolist(),
                   "state_bytes_per_parameter": sum(leaf.nbytes for leaf in jax.tree.leaves(state)) / count}
            if test is not None:
                row["test_accuracy"] = float(digits.accuracy(final, test))
            rows[name] = row
        base = rows["Adam float32"]["final_loss"]
        for row in rows.values():
            row["vs_float32"] = row["final_loss"] / base - 1
        out[task_name] = rows
    return out


def plot(result, path):
    """The minibatch loss curves (running means), one panel per task."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(result), figsize=(6 * len(result), 4.2))
    for ax, (task_name, rows) in zip(np.atleast_1d(axes), result.items()):
        for name, row in rows.items():
            curve = np.asarray(row["curve"])
            window = max(1, len(curve) // 20)  # a running mean: minibatch losses are noisy
            smooth = np.convolve(curve, np.ones(window) / window, mode="valid")
            # float32 wide and solid, the quantized runs dashed and dotted over it: where they agree,
            # all three stay visible
            style = {"8-bit": dict(linestyle="--"), "4-bit": dict(linestyle=":", linewidth=2.0),
                     "float32": dict(linewidth=3.0, alpha=0.6)}
            extra = next((v for k, v in style.items() if k in name and name.startswith("Adam")), {})
            ax.plot(np.arange(window, len(curve) + 1), smooth, label=name, **{"linewidth": 1.4, **extra})
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("minibatch loss (running mean)")
        ax.set_title(task_name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def start(quick: bool, executor) -> "concurrent.futures.Future":
    """Submit :func:`measure` to ``executor`` (it overlaps the sections before this one), for :func:`section`."""
    return executor.submit(measure, STEPS[quick])


def section(out_dir: Path, progress, quick: bool = False, prepared=None) -> str:
    """Train (or wait for ``prepared``, a future of :func:`measure`), plot into ``out_dir``, return the markdown."""
    steps = STEPS[quick]
    label = f"memory: train {len(optimizers())} optimizers on {len(TASKS)} models × {steps} steps"
    with progress.phase(label + (" (started in the background)" if prepared is not None else "")):
        result = prepared.result() if prepared is not None else measure(steps)
    with progress.phase(f"memory: plot {FILE}"):
        plot(result, Path(out_dir) / FILE)
    parts = [
        "## Memory-efficient state: 8-bit and 4-bit moments, Adafactor",
        "Adam with float32 moments and with both moments `adaptx.Quantized(8)` or `adaptx.Quantized(4)`"
        " (block-wise absmax scaling, Dettmers et al. 2022 and Li et al. 2023; leaves under 4096 elements stay"
        " float32), and Adafactor (Shazeer & Stern, 2018: factored second moments), each from the same"
        f" initialisation over the same {steps} minibatches of {BATCH}. A character-level language model (a"
        f" {CONTEXT}-character context, embedding {EMBED}, tanh layer {HIDDEN}) on 2.4 kB of public-domain text,"
        " and a 64-128-128-10 MLP on the digits. State bytes per parameter are counted from each state's arrays;"
        " the final loss is over the whole training set (the language model memorises its text).",
    ]
    for task_name, rows in result.items():
        accuracy = any("test_accuracy" in row for row in rows.values())
        table = []
        for name, row in rows.items():
            cells = [name, f"{row['state_bytes_per_parameter']:.3f}", f"{row['final_loss']:.4f}",
                     "—" if name == "Adam float32" else f"{100 * row['vs_float32']:+.2f} %"]
            table.append(cells + ([f"{row['test_accuracy']:.1%}"] if accuracy else []))
        header = ["optimizer", "state bytes / parameter", "final loss", "vs float32 Adam"]
        parts += [f"**{task_name}**", markdown.table(header + (["test accuracy"] if accuracy else []), table)]
    parts.append(markdown.image(FILE, "loss curves with float32, 8-bit and 4-bit moments and Adafactor"))
    return "\n\n".join(parts)
