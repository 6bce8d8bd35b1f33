"""Deprecated: moved to :mod:`bptorch.functions.linear` (LinearFunction, DenseFunction,
ActivationFunction) and :mod:`bptorch.functions.feedback` (the feedback Functions).
Importing a name from here still works for one release, with a DeprecationWarning."""
from .base import moved

_LINEAR = "bptorch.functions.linear"
_FEEDBACK = "bptorch.functions.feedback"
__getattr__ = moved(__name__, {
    "LinearFunction": _LINEAR, "DenseFunction": _LINEAR, "ActivationFunction": _LINEAR,
    "linear": _LINEAR, "dense": _LINEAR,
    "LinearFeedbackFunction": _FEEDBACK, "DenseFeedbackFunction": _FEEDBACK,
})
