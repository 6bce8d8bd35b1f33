"""bptorch: backpropagation written out by hand, as torch.autograd.Functions.

Every layer's backward is one of the four equations of the seed
(BP1 δ^L = ∇_a C ⊙ σ'(z^L); BP2 δ^l = ((W^{l+1})ᵀ δ^{l+1}) ⊙ σ'(z^l);
BP3 ∂C/∂b^l = δ^l; BP4 ∂C/∂W^l = δ^l (a^{l-1})ᵀ).
"""
# `from .nn import ...` binds the submodule bptorch.nn as `nn` in this package;
# torch's own nn is never imported under that name here.
from . import activations, diagnostics, functional, functions, nn
from .activations import ACTIVATIONS, Activation, get_activation
from .network import Network

__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS", "Activation", "Network", "activations", "diagnostics", "functional",
    "functions", "get_activation", "nn",
]
