"""Convert a bptorch model to plain ``torch.nn`` modules with the same outputs.

The export route for tools that do not accept custom autograd Functions (ONNX,
TorchScript, other runtimes): the forward pass is the same math, only the
hand-written backward is dropped. Weights are shared views of the same tensors
unless ``copy=True``.
"""
from __future__ import annotations

import copy as _copy

from torch import nn

from .activations import Activation
from .network import Network
from .nn.activation import _Activation
from .nn.conv import Conv2d, Dropout, Flatten, MaxPool2d
from .nn.linear import Dense, Linear


def activation_module(act: Activation) -> nn.Module:
    """The ``torch.nn`` module for an :class:`Activation`."""
    if act.name == "sigmoid":
        return nn.Sigmoid()
    if act.name == "tanh":
        return nn.Tanh()
    if act.name == "relu":
        return nn.ReLU()
    if act.name == "identity":
        return nn.Identity()
    if act.name == "leaky_relu":
        return nn.LeakyReLU(act.negative_slope)
    if act.name == "softmax":
        return nn.Softmax(act.dim)
    raise ValueError(f"no torch.nn module for activation {act.name!r}")


def _linear(layer: Linear, copy: bool) -> nn.Linear:
    w = layer.weight
    out = nn.Linear(layer.in_features, layer.out_features, layer.bias is not None,
                    device=w.device, dtype=w.dtype)
    return _params_from(out, layer, copy)


def _params_from(out: nn.Module, layer: nn.Module, copy: bool) -> nn.Module:
    out.weight = nn.Parameter(layer.weight.detach().clone() if copy else layer.weight.data)
    if layer.bias is not None:
        out.bias = nn.Parameter(layer.bias.detach().clone() if copy else layer.bias.data)
    return out


def _conv_layer(model: nn.Module, copy: bool) -> nn.Module | None:
    """The torch.nn twin of a bptorch conv-net layer, or None for any other module."""
    if isinstance(model, Conv2d):
        w = model.weight
        out = nn.Conv2d(model.in_channels, model.out_channels, model.kernel_size,
                        model.stride, model.padding, bias=model.bias is not None,
                        device=w.device, dtype=w.dtype)
        return _params_from(out, model, copy)
    if isinstance(model, MaxPool2d):
        return nn.MaxPool2d(model.kernel_size, model.stride)
    if isinstance(model, Dropout):
        out = nn.Dropout(model.p)
        out.train(model.training)
        return out
    if isinstance(model, Flatten):
        return nn.Flatten(model.start_dim, model.end_dim)
    return None


def to_torch_nn(model: nn.Module, copy: bool = True) -> nn.Module:
    """Replace every bptorch layer in ``model`` by its ``torch.nn`` equivalent.

    * ``Network`` → ``nn.Sequential(nn.Linear, σ, nn.Linear, σ, ...)``; its state_dict
      keys ``layers.{l}.weight`` become ``{2l}.weight``;
    * ``Dense`` → ``nn.Sequential(nn.Linear, σ)``; ``Linear`` → ``nn.Linear``;
    * activation modules → ``nn.Sigmoid``, ``nn.Tanh``, ... ;
    * ``Conv2d``, ``MaxPool2d``, ``Dropout``, ``Flatten`` → their ``torch.nn`` twins;
    * costs are left as they are.

    Any other module is copied and its children converted in place, so containers
    and user modules work. ``copy=False`` shares the weight tensors instead.
    """
    if isinstance(model, Network):
        mods: list[nn.Module] = []
        for layer in model.layers:
            mods += [_linear(layer, copy), activation_module(layer.activation)]
        return nn.Sequential(*mods)
    if isinstance(model, Dense):
        return nn.Sequential(_linear(model, copy), activation_module(model.activation))
    if isinstance(model, Linear):
        return _linear(model, copy)
    if isinstance(model, _Activation):
        return activation_module(model._act)
    conv = _conv_layer(model, copy)
    if conv is not None:
        return conv
    out = _copy.copy(model)  # shallow: a fresh _modules dict below, the rest shared
    out._modules = {name: None if child is None else to_torch_nn(child, copy)
                    for name, child in model._modules.items()}
    if copy:
        out._parameters = {k: None if p is None else nn.Parameter(p.detach().clone())
                           for k, p in model._parameters.items()}
        out._buffers = {k: None if b is None else b.clone() for k, b in model._buffers.items()}
    return out


def network_state_dict_to_sequential(state_dict: dict) -> dict:
    """Map ``Network`` keys ``layers.{l}.weight`` to ``nn.Sequential(Linear, σ, ...)``'s
    ``{2l}.weight`` (and biases)."""
    out = {}
    for key, value in state_dict.items():
        _, l, name = key.split(".")
        out[f"{2 * int(l)}.{name}"] = value
    return out


def sequential_state_dict_to_network(state_dict: dict) -> dict:
    """The inverse of :func:`network_state_dict_to_sequential`."""
    out = {}
    for key, value in state_dict.items():
        i, name = key.split(".")
        out[f"layers.{int(i) // 2}.{name}"] = value
    return out
