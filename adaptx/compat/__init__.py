"""Presets that reproduce other libraries' optimizers: their argument names, defaults and arithmetic."""
