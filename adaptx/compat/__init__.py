"""Presets that reproduce other libraries' optimizers, numbers included.

``adaptx.compat.torch`` mirrors torch.optim (argument names, defaults and
update order); ``adaptx.compat.keras`` mirrors Keras 3. Import the submodule
you need; neither imports torch or keras. docs/CONVENTIONS.md lists where the
libraries differ and the adaptx call that reproduces each.
"""
