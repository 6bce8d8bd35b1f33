"""bptorch: backpropagation written out by hand, as torch.autograd.Functions.

Every layer's backward is one of the four equations of the seed
(BP1 δ^L = ∇_a C ⊙ σ'(z^L); BP2 δ^l = ((W^{l+1})ᵀ δ^{l+1}) ⊙ σ'(z^l);
BP3 ∂C/∂b^l = δ^l; BP4 ∂C/∂W^l = δ^l (a^{l-1})ᵀ).

``import bptorch`` loads the math and the modules: ``activations``, ``functions``,
``functional``, ``nn``, ``feedback``, ``diagnostics`` and ``Network``. The rest loads on
first use (``bptorch.compile``, ``bptorch.convert``, ``bptorch.data``,
``bptorch.distributed``, ``bptorch.threads``, ``bptorch.kernels`` (the reference/Triton
switch), ``bptorch.routing`` (and its
``bptorch.coverage``), and the scripts' plumbing ``bptorch.cli`` and
``bptorch.presets``): ``compile`` brings torch._dynamo, ``data`` numpy's and torchvision's
loaders, each seconds that a script which never uses them should not pay.
"""
from __future__ import annotations

import importlib
from typing import Any

# Here the name `nn` is bptorch.nn (imported below), never torch's: this file uses
# no torch.nn, and `from .nn import ...` would bind bptorch.nn to `nn` all the same.
from . import activations, diagnostics, feedback, functional, functions, nn
from .activations import ACTIVATIONS, Activation, get_activation
from .network import Network

__version__ = "0.1.0"

_LAZY = ("cli", "compile", "convert", "data", "distributed", "kernels", "presets", "routing",
         "threads")


def __getattr__(name: str) -> Any:
    """``bptorch.compile``, ``bptorch.data``, ...: imported on first access."""
    if name in _LAZY:
        return importlib.import_module(f"{__name__}.{name}")  # binds it here too
    if name == "coverage":  # the tool, bptorch.coverage(model, *inputs)
        return importlib.import_module(f"{__name__}.routing").coverage
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY, "coverage"})


__all__ = [
    "ACTIVATIONS", "Activation", "Network", "activations", "cli", "compile", "convert",
    "coverage", "data",
    "diagnostics", "distributed", "feedback", "functional", "functions", "get_activation",
    "kernels", "nn",
    "presets", "routing", "threads",
]
