"""bptorch: backpropagation written out by hand, as torch.autograd.Functions.

Every layer's backward is one of the four equations of the seed
(BP1 δ^L = ∇_a C ⊙ σ'(z^L); BP2 δ^l = ((W^{l+1})ᵀ δ^{l+1}) ⊙ σ'(z^l);
BP3 ∂C/∂b^l = δ^l; BP4 ∂C/∂W^l = δ^l (a^{l-1})ᵀ).

``import bptorch`` loads every public submodule: ``activations``, ``convert``,
``data``, ``diagnostics``, ``distributed``, ``functional``, ``functions``, ``nn``,
``threads``, ``compile``, ``feedback``.
"""
# Here the name `nn` is bptorch.nn (imported below), never torch's: this file uses
# no torch.nn, and `from .nn import ...` would bind bptorch.nn to `nn` all the same.
from . import (
    activations, compile, convert, data, diagnostics, distributed, feedback, functional,
    functions, nn, threads,
)
from .activations import ACTIVATIONS, Activation, get_activation
from .network import Network

__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS", "Activation", "Network", "activations", "compile", "convert", "data",
    "diagnostics", "distributed", "feedback", "functional", "functions", "get_activation", "nn", "threads",
]
