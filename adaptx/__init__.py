"""adaptx: adaptive-learning-rate optimizers for JAX, as composable gradient transformations."""
from adaptx.accumulate import AccumulateState, accumulate_gradients
from adaptx.adam import AdamState, NadamState, scale_by_adam, scale_by_adamax, scale_by_nadam
from adaptx.base import EmptyState, GradientTransformation, apply_updates, chain, identity
from adaptx.flat import flat_state
from adaptx.fused import update_and_apply
from adaptx.groups import MaskedNode, MaskedState, PartitionState, masked, partition
from adaptx.guard import SkipNonfiniteState, all_finite, raise_if_gave_up, skip_nonfinite
from adaptx.hyperparams import HyperparamsState, hyperparams, set_hyperparams, with_hyperparams
from adaptx.moments import bias_correction, ema, trace
from adaptx.monitor import LeafDiagnostics, MonitorState, monitor, monitor_stats
from adaptx.optimizers import adadelta, adagrad, adam, adamax, adamw, nadam, rmsprop, sgd
from adaptx.scaling import accumulate_squares, scale_by_adadelta, scale_by_rms
from adaptx.sweep import grid, sweep
from adaptx.sweep_result import SweepResult
from adaptx.train import make_train_step
from adaptx.transforms import (
    add_decayed_weights, clip_by_global_norm, clip_by_norm, clip_by_value, scale, scale_by_inverse_time_decay,
    scale_by_learning_rate, unscale_gradients,
)
from adaptx import checkpoint, sharding, testing  # noqa: E402  (submodules: adaptx.testing.check_transformation, ...)

__version__ = "0.1.0"

__all__ = [
    "GradientTransformation", "EmptyState", "apply_updates", "chain", "identity",
    "accumulate_squares", "scale_by_rms", "scale_by_adadelta",
    "ema", "trace", "bias_correction",
    "scale_by_adam", "scale_by_adamax", "scale_by_nadam", "AdamState", "NadamState",
    "scale_by_learning_rate", "add_decayed_weights", "clip_by_global_norm",
    "clip_by_norm", "clip_by_value", "unscale_gradients",
    "scale", "scale_by_inverse_time_decay",
    "with_hyperparams", "hyperparams", "set_hyperparams", "HyperparamsState",
    "update_and_apply", "make_train_step", "flat_state",
    "sgd", "adagrad", "rmsprop", "adam", "adamw", "adadelta", "adamax", "nadam",
    "skip_nonfinite", "raise_if_gave_up", "all_finite", "SkipNonfiniteState",
    "accumulate_gradients", "AccumulateState",
    "masked", "partition", "MaskedNode", "MaskedState", "PartitionState",
    "checkpoint", "sharding", "testing",
    "sweep", "grid", "SweepResult",
    "monitor", "monitor_stats", "MonitorState", "LeafDiagnostics",
]
