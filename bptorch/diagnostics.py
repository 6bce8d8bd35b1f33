"""Opt-in recording of δ^l and σ'(z^l), to see saturation and the speed of learning.

The Functions' backward calls :func:`record_delta` only while :func:`active` is
true, so with no recorder the cost is one global read per layer.
"""
from __future__ import annotations

from torch import Tensor

_recorder = None  # the active recorder, or None


def active() -> bool:
    """True while a recorder is collecting."""
    return _recorder is not None


def record_delta(
    name, activation, delta: Tensor, saved: Tensor | None, scale: float = 1.0
) -> None:
    """Hand one layer's δ^l, and the tensor σ'(z^l) is computed from, to the recorder.

    ``scale`` turns δ's row sum into ∂C/∂b: 1 on the autograd path (the cost's 1/N
    is already inside δ), 1/N in ``Network.backprop`` (whose δ^l are per example).
    """
    if _recorder is not None:
        _recorder.add(name, activation, delta, saved, scale)
