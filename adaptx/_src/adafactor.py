"""Adafactor as an alias: a chain of public blocks with its hyperparameters held in the state.

Kept beside ``aliases`` (same layer) so the memory-saving optimizers live in their own module.
"""
from typing import Any, Optional

from adaptx._src import numerics as nx
from adaptx._src.base import GradientTransformation, chain
from adaptx._src.factored import (
    clip_by_block_rms, relative_step_size, scale_by_factored_rms, scale_by_param_block_rms,
)
from adaptx._src.groups import masked
from adaptx._src.hyperparams import with_hyperparams
from adaptx._src.moments import ema
from adaptx._src.transforms import add_decayed_weights, scale


def adafactor(
    learning_rate=1e-2,
    min_dim_size_to_factor: int = 1,
    decay_rate=0.8,
    decay_offset=0,
    multiply_by_parameter_scale: bool = True,
    clipping_threshold=1.0,
    momentum=None,
    weight_decay_rate=None,
    eps=1e-30,
    factored: bool = True,
    weight_decay_mask=None,
    *,
    relative_step: bool = True,
    eps_scale=1e-3,
    factored_dims: str = "last",
    mu_dtype: Optional[Any] = None,
    nu_dtype: Optional[Any] = None,
) -> GradientTransformation:
    """Adafactor (Shazeer & Stern, 2018), with the paper's defaults.

        û = clip_d(G / √V̂)                 V̂ factored for leaves of rank ≥ 2 (:func:`adaptx.scale_by_factored_rms`)
        ρₜ = min(η, 1/√t),  αₜ = max(ε₂, RMS(θₜ₋₁))·ρₜ                       (relative step, §8)
        [m ← β₁·m + (1 − β₁)·αₜ·û]                                          (``momentum`` β₁, optional)
        θ ← θ − (αₜ·û  or  m) − λ·θ                                           (``weight_decay_rate`` λ, optional)

    Defaults as the paper: η = 10⁻² (the cap of ρₜ), decay 1 − t^(−0.8),
    ε₁ = 1e-30 (``eps``), ε₂ = 1e-3 (``eps_scale``), d = 1
    (``clipping_threshold``; None disables clipping), no momentum, the last two
    axes of every leaf of rank ≥ 2 factored.

    The names and order are optax.adafactor's. optax's variant is
    ``adafactor(η, 128, relative_step=False, factored_dims="largest")`` (the
    two largest axes, when both have ≥ 128 elements; an absolute step η, which
    optax's ``learning_rate=None`` makes 1.0); ``multiply_by_parameter_scale=False``
    makes αₜ = ρₜ. optax's ``dtype_momentum`` is ``mu_dtype`` here; ``weight_decay_mask``
    as :func:`adaptx.masked`.
    """
    def build(count, learning_rate, decay_rate, decay_offset, eps, clipping_threshold=None, eps_scale=None,
              momentum=None, weight_decay_rate=None):
        rho = relative_step_size(learning_rate, nx.increment(count)) if relative_step else learning_rate
        blocks = [scale_by_factored_rms(decay_rate, eps, factored=factored, min_dim_size_to_factor=min_dim_size_to_factor,
                                        factored_dims=factored_dims, decay_offset=decay_offset, nu_dtype=nu_dtype,
                                        count=count)]
        if clipping_threshold is not None:
            blocks.append(clip_by_block_rms(clipping_threshold))
        blocks.append(scale(rho))
        if eps_scale is not None:
            blocks.append(scale_by_param_block_rms(eps_scale))
        if momentum is not None:
            blocks.append(ema(momentum, mu_dtype=mu_dtype))
        if weight_decay_rate is not None:
            decay = add_decayed_weights(weight_decay_rate)
            blocks.append(decay if weight_decay_mask is None else masked(decay, weight_decay_mask))
        blocks.append(scale(-1.0))
        return chain(*blocks)

    values = dict(learning_rate=learning_rate, decay_rate=decay_rate, decay_offset=decay_offset, eps=eps)
    optional = dict(clipping_threshold=clipping_threshold, momentum=momentum, weight_decay_rate=weight_decay_rate,
                    eps_scale=eps_scale if multiply_by_parameter_scale else None)
    values.update({k: v for k, v in optional.items() if v is not None})
    return with_hyperparams(build, rates=("momentum",) if momentum is not None else (), **values)
