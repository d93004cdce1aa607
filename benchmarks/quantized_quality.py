"""Training quality with quantized moments (issue 12): a character-level language model and the digits MLP.

    python -m benchmarks.quantized_quality [--quick] [--out DIR]

Compares float32 Adam, 8-bit Adam, 4-bit Adam and Adafactor on the same data, initialisation
and minibatch order (the plain path: ``tx.update`` then ``apply_updates`` in one jitted scan),
on the demo's memory section's tasks (``adaptx_demo/memory_state.py``: the char LM on the
text it ships, the digits MLP 64-128-128-10), 400 steps of minibatches of 64, Adam η = 3e-3,
plus Adafactor with 8-bit momentum.

Reports each run's final loss over the whole training set and its change against float32
Adam (the issue's targets: 8-bit within 1 %, 4-bit within 3 %), and draws the minibatch loss
curves. Writes ``quantized_quality.md``, ``.json`` and ``.png`` into ``--out`` (default: this
folder; ``--quick``, 40 steps, writes into a temporary folder and refuses this one).
"""
import argparse
import datetime
import json
import sys
from pathlib import Path

import jax

import adaptx
from adaptx_demo import memory_state
from adaptx_demo.memory_state import BATCH, TASKS, plot
from benchmarks.timing import results_folder

HERE = Path(__file__).parent.resolve()


def optimizers():
    q8 = adaptx.Quantized(8)
    return {**memory_state.optimizers(),
            "Adafactor η = 0.1, 8-bit momentum 0.9": adaptx.adafactor(0.1, momentum=0.9, mu_dtype=q8)}


def measure(steps, tasks=TASKS):
    return memory_state.measure(steps, tasks, optimizers())


def render(result, meta) -> str:
    lines = ["# Quality with quantized moments (issue 12)", "",
             f"`{meta['command']}`; {meta['versions']}; {meta['date']}; {meta['steps']} steps of {BATCH} per run.", "",
             "Final loss over the whole training set; the change is against float32 Adam (targets: 8-bit within 1 %,"
             " 4-bit within 3 %). Loss curves: `quantized_quality.png`.", ""]
    for task, rows in result.items():
        accuracy = any("test_accuracy" in row for row in rows.values())
        lines += [f"## {task}", "", "| optimizer | final loss | vs float32 Adam |" + (" test accuracy |" if accuracy else ""),
                  "|---|---|---|" + ("---|" if accuracy else "")]
        for name, row in rows.items():
            change = "—" if name == "Adam float32" else f"{100 * row['vs_float32']:+.2f} %"
            extra = f" {100 * row['test_accuracy']:.1f} % |" if accuracy else ""
            lines.append(f"| {name} | {row['final_loss']:.4f} | {change} |{extra}")
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="40 steps (smoke test)")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated subset of {','.join(TASKS)}")
    args = ap.parse_args(argv)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if set(tasks) - set(TASKS):
        ap.error(f"unknown tasks {sorted(set(tasks) - set(TASKS))}; choose from {', '.join(TASKS)}")
    args.out = results_folder(args.out, args.quick, "quantized-quality")
    steps = args.steps or (40 if args.quick else 400)
    meta = dict(date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"), steps=steps,
                command="python -m benchmarks.quantized_quality " + " ".join(argv if argv is not None else sys.argv[1:]),
                versions=f"jax {jax.__version__}, adaptx {adaptx.__version__}")
    result = measure(steps, tasks)
    args.out.mkdir(parents=True, exist_ok=True)
    text = render(result, meta)
    (args.out / "quantized_quality.md").write_text(text)
    (args.out / "quantized_quality.json").write_text(json.dumps({"meta": meta, "results": result}))
    plot(result, args.out / "quantized_quality.png")
    print(text)
    return result, args.out


if __name__ == "__main__":
    main()
