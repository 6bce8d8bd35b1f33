"""Deprecated: moved to :mod:`bptorch.nn.pool`, beside MaxPool2d. Importing a name from
here still works for one release, with a DeprecationWarning."""
from ..functions.base import moved

__getattr__ = moved(__name__, {"AvgPool2d": "bptorch.nn.pool",
                               "AdaptiveAvgPool2d": "bptorch.nn.pool"})
