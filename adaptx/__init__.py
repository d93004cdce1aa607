"""adaptx: adaptive-learning-rate optimizers for JAX, as composable gradient transformations.

The public names live here; the modules behind them are private (``adaptx._src``).
Public submodules: ``adaptx.compat.torch``, ``adaptx.compat.keras``,
``adaptx.checkpoint``, ``adaptx.kernels``, ``adaptx.sharding`` and ``adaptx.testing``.
"""
from adaptx._src.accumulate import AccumulateState, accumulate_gradients
from adaptx._src.adam import ScaleByAdamState, ScaleByAdamaxState, ScaleByAmsgradState, ScaleByNadamState, scale_by_adam, scale_by_adamax, scale_by_nadam
from adaptx._src.aliases import adadelta, adagrad, adam, adamax, adamw, nadam, rmsprop, sgd
from adaptx._src.base import EmptyState, FusedTransformation, GradientTransformation, apply_updates, chain, identity
from adaptx._src.flat import flat_state
from adaptx._src.fused import update_and_apply
from adaptx._src.groups import MaskedNode, MaskedState, PartitionState, masked, partition
from adaptx._src.guard import SkipNonfiniteState, all_finite, raise_if_gave_up, skip_nonfinite
from adaptx._src.hyperparams import HyperparamsState, hyperparams, set_hyperparams, with_hyperparams
from adaptx._src.moments import bias_correction, ema, trace
from adaptx._src.numerics import Rate
from adaptx._src.monitor import LeafDiagnostics, MonitorState, monitor, monitor_stats

from adaptx._src.scaling import accumulate_squares, scale_by_adadelta, scale_by_rms
from adaptx._src.sweep import grid, sweep
from adaptx._src.sweep_result import SweepResult
from adaptx._src.train import make_train_step
from adaptx._src.transforms import (
    add_decayed_weights, clip_by_global_norm, clip_by_norm, clip_by_value, scale, scale_by_inverse_time_decay,
    scale_by_learning_rate, unscale_gradients,
)
from adaptx._src.factored import FactoredState, clip_by_block_rms, scale_by_factored_rms, scale_by_param_block_rms
from adaptx._src.adafactor import adafactor
from adaptx._src.quantize import Quantized, QuantizedArray
from adaptx import checkpoint, compat, kernels, sharding, testing  # noqa: E402  (public submodules)

__version__ = "0.2.0"

__all__ = [
    # protocol
    "GradientTransformation", "FusedTransformation", "EmptyState", "apply_updates", "chain", "identity",
    # blocks
    "accumulate_squares", "scale_by_rms", "scale_by_adadelta",
    "ema", "trace", "bias_correction", "Rate",
    "scale_by_adam", "scale_by_adamax", "scale_by_nadam", "ScaleByAdamState", "ScaleByAdamaxState", "ScaleByAmsgradState", "ScaleByNadamState",
    "scale_by_learning_rate", "add_decayed_weights", "clip_by_global_norm",
    "clip_by_norm", "clip_by_value", "unscale_gradients", "scale", "scale_by_inverse_time_decay",
    # hyperparameters as state
    "with_hyperparams", "hyperparams", "set_hyperparams", "HyperparamsState",
    # optimizers
    "sgd", "adagrad", "rmsprop", "adam", "adamw", "adadelta", "adamax", "nadam",
    # wrappers
    "skip_nonfinite", "raise_if_gave_up", "all_finite", "SkipNonfiniteState",
    "accumulate_gradients", "AccumulateState",
    "masked", "partition", "MaskedNode", "MaskedState", "PartitionState",
    "monitor", "monitor_stats", "MonitorState", "LeafDiagnostics",
    # fast path and tools
    "update_and_apply", "make_train_step", "flat_state",
    "sweep", "grid", "SweepResult",
    "checkpoint", "compat", "kernels", "sharding", "testing",
    # memory-efficient state (issue 12)
    "scale_by_factored_rms", "clip_by_block_rms", "scale_by_param_block_rms", "FactoredState", "adafactor",
    "Quantized", "QuantizedArray",
]

# The adaptive family (issue 13): blocks and optimizers built on Adam's moments.
from adaptx._src.family import (  # noqa: E402
    ScaleByAdanState, ScaleByAdemamixState, scale_by_ademamix, scale_by_adopt, ScaleByLionState, ScaleByNovogradState, ScaleByRpropState, scale_by_adan, scale_by_novograd,
    scale_by_belief, scale_by_lion, scale_by_radam, scale_by_rprop,
    scale_by_trust_ratio, scale_by_yogi, scale_by_corrected_rms, scale_by_prodigy, ScaleByProdigyState,
)
from adaptx._src.schedule_free import ScheduleFreeState, schedule_free, schedule_free_eval_params  # noqa: E402
from adaptx._src.family_aliases import (  # noqa: E402
    adabelief, adamaxw, ademamix, adan, adopt, lamb, lion, nadamw, novograd, prodigy, radam, rprop,
    schedule_free_adamw, yogi,
)

__all__ += [
    "scale_by_radam", "scale_by_belief", "scale_by_yogi", "scale_by_lion", "scale_by_trust_ratio", "ScaleByLionState",
    "scale_by_rprop", "ScaleByRpropState", "scale_by_novograd", "ScaleByNovogradState", "scale_by_adan",
    "ScaleByAdanState", "novograd", "adan",
    "scale_by_adopt", "scale_by_ademamix", "ScaleByAdemamixState", "adopt", "ademamix",
    "scale_by_corrected_rms", "schedule_free", "schedule_free_eval_params", "ScheduleFreeState", "schedule_free_adamw",
    "radam", "adabelief", "yogi", "lion", "lamb", "nadamw", "adamaxw", "rprop",
    "scale_by_prodigy", "ScaleByProdigyState", "prodigy",
]
