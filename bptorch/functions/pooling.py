"""Deprecated: moved to :mod:`bptorch.functions.pool`, beside MaxPool2dFunction (the input
checks to :mod:`bptorch._checks`). Importing a name from here still works for one release,
with a DeprecationWarning."""
from .base import moved

_POOL, _CHECKS = "bptorch.functions.pool", "bptorch._checks"
__getattr__ = moved(__name__, {
    "AvgPool2dFunction": _POOL, "AdaptiveAvgPool2dFunction": _POOL, "avg_pool2d_bwd": _POOL,
    "adaptive_avg_pool2d_bwd": _POOL, "adaptive_pool_matrix": _POOL,
    "check_avg_pool2d": _CHECKS, "check_pool_input": _CHECKS, "adaptive_output_size": _CHECKS,
})
