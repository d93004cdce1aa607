"""Benchmarks of adaptx against optax and torch.optim: ``python -m benchmarks.run``.

Every figure is timed side by side with its peers in one process, the runs
interleaved, so a busy machine slows all of them alike; the report gives
medians and ratios. See ``benchmarks/RESULTS.md`` for the last recorded run.
"""
