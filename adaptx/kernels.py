"""The one-pass CPU kernel behind :func:`adaptx.update_and_apply` and :func:`adaptx.make_train_step`.

``available()`` says whether it was built when adaptx was installed,
``unavailable_reason()`` why not, and ``explain(tx, params)`` whether a given
transformation's step runs it, or why it falls back to ``update`` then
``apply_updates`` (same numbers, several passes over memory).
"""
from adaptx._src.fused import explain
from adaptx._src.kernels import available, unavailable_reason

__all__ = ["available", "unavailable_reason", "explain"]
