"""Convert a bptorch model to plain ``torch.nn`` modules with the same outputs.

The export route for tools that do not accept custom autograd Functions (ONNX,
TorchScript, other runtimes): the forward pass is the same math, only the
hand-written backward is dropped. Weights are shared views of the same tensors
unless ``copy=True``.
"""
from __future__ import annotations

import copy as _copy
import inspect
import warnings

from torch import nn

from .activations import Activation
from .network import Network
from .nn.activation import _Activation
from .nn import Conv2d, Dropout, Flatten, MaxPool2d
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
    if act.name == "gelu":
        return nn.GELU(act.approximate)
    if act.name == "silu":
        return nn.SiLU()
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
                        model.stride, model.padding, model.dilation, model.groups,
                        model.bias is not None, model.padding_mode,
                        device=w.device, dtype=w.dtype)
        return _params_from(out, model, copy)
    if isinstance(model, MaxPool2d):
        return nn.MaxPool2d(model.kernel_size, model.stride, model.padding, model.dilation,
                            model.return_indices, model.ceil_mode)
    if isinstance(model, Dropout):
        out = nn.Dropout(model.p, model.inplace)
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


# ---- torch.nn -> bptorch


# The torch.nn layers with a bptorch twin of the same name; the twin is looked up in
# bptorch.nn when from_torch_nn runs, and built from the torch module's attributes.
TWIN_NAMES = (
    "Linear", "Conv2d", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "BatchNorm1d",
    "BatchNorm2d", "LayerNorm", "Embedding", "Dropout", "Flatten", "ReLU", "Sigmoid", "Tanh",
    "LeakyReLU", "Softmax", "Identity", "GELU", "SiLU", "MultiheadAttention", "RNN", "LSTM",
    "GRU",
)
# torch.nn modules whose forward only composes their children (and a few functions): the
# children are converted, then _fix_composite makes the forward reach the twins
COMPOSITE_NAMES = ("TransformerEncoderLayer", "TransformerEncoder")
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict, nn.ParameterList,
               nn.ParameterDict)
# carried by the weights themselves (load_state_dict, requires_grad), not by the arguments
_CARRIED = ("device", "dtype", "_weight", "_freeze")


def _rnn_arguments(module: nn.RNNBase) -> dict[str, tuple[object, object]]:
    """RNN, LSTM and GRU take ``*args``: their arguments are RNNBase's (less ``mode``), and
    the RNN's ``nonlinearity``; ``bias`` is a bool attribute there."""
    params = inspect.signature(nn.RNNBase.__init__).parameters
    out = {name: (getattr(module, name), p.default) for name, p in params.items()
           if name not in ("self", "mode", *_CARRIED)}
    if isinstance(module, nn.RNN):
        out["nonlinearity"] = (module.nonlinearity, "tanh")
    return out


def _mha_arguments(m: nn.MultiheadAttention) -> dict[str, tuple[object, object]]:
    """MultiheadAttention keeps ``bias`` and ``add_bias_kv`` as tensors, not flags."""
    return {"embed_dim": (m.embed_dim, None), "num_heads": (m.num_heads, None),
            "dropout": (m.dropout, 0.0), "bias": (m.in_proj_bias is not None, True),
            "add_bias_kv": (m.bias_k is not None, False),
            "add_zero_attn": (m.add_zero_attn, False), "kdim": (m.kdim, None),
            "vdim": (m.vdim, None), "batch_first": (m.batch_first, False)}


def _torch_arguments(module: nn.Module) -> dict[str, tuple[object, object]]:
    """{argument: (value, torch's default)} for the module's constructor, read back from
    its attributes (``bias`` from whether it has one)."""
    if isinstance(module, nn.RNNBase):
        return _rnn_arguments(module)
    if isinstance(module, nn.MultiheadAttention):
        return _mha_arguments(module)
    out = {}
    for name, param in inspect.signature(type(module).__init__).parameters.items():
        if name == "self" or name in _CARRIED or param.kind in (param.VAR_POSITIONAL,
                                                                  param.VAR_KEYWORD):
            continue
        if name == "bias" and isinstance(param.default, bool):
            value = module.bias is not None
        else:
            value = getattr(module, name)
        out[name] = (value, param.default)
    return out


def _is_default(value: object, default: object) -> bool:
    """``value`` is torch's default; a pair such as (1, 1) counts as the int 1."""
    if isinstance(value, tuple) and not isinstance(default, tuple):
        return all(v == default for v in value)
    return value == default


def _twin(module: nn.Module, feedback: str = "backprop") -> tuple[nn.Module | None, str | None]:
    """(bptorch twin, None), (None, why not) for a torch.nn layer that has none, or
    (None, None) for a module that is not one of the torch.nn layers in TWIN_NAMES."""
    from . import nn as bnn  # looked up now: other layers may have been added since import

    name = type(module).__name__
    if name not in TWIN_NAMES or getattr(nn, name, None) is not type(module):
        return None, None  # not a torch.nn layer (or a subclass with its own forward)
    cls = getattr(bnn, name, None)
    if cls is None:
        return None, f"bptorch.nn has no {name}"
    accepts = inspect.signature(cls).parameters
    kwargs = {}
    for arg, (value, default) in _torch_arguments(module).items():
        if arg in accepts:
            kwargs[arg] = value
        elif arg == "inplace":
            pass  # out of place: the same values (the model's forward uses the result)
        elif not _is_default(value, default):
            return None, f"bptorch.nn.{name} has no argument {arg!r} (here {arg}={value!r})"
    tensors = [t for t in (*module.parameters(), *module.buffers()) if t.is_floating_point()]
    if tensors:
        for arg in ("device", "dtype"):
            if arg in accepts:
                kwargs[arg] = getattr(tensors[0], arg)
    try:
        if feedback != "backprop" and name in _FEEDBACK_TWINS:
            kwargs["feedback"] = feedback  # the layers whose BP2 factor a rule replaces
        twin = cls(**kwargs)
    except NotImplementedError as e:
        return None, str(e)
    state = module.state_dict()
    if "feedback_weight" in twin._buffers:  # the rule's own B (fa) or |R| (frsf), kept
        state["feedback_weight"] = twin.feedback_weight
    twin.load_state_dict(state)
    for key, p in module.named_parameters():
        twin.get_parameter(key).requires_grad_(p.requires_grad)
    twin.train(module.training)
    return twin, None


def _fix_composite(module: nn.Module) -> None:
    """After its children are converted, make a composite's own forward reach them.

    TransformerEncoderLayer calls its activation as a function (``F.relu``/``F.gelu``),
    which the converter maps to bptorch's; any other callable stays as it is. Its fused
    inference fast path (``torch._transformer_encoder_layer_fwd``, taken in eval mode
    under no_grad) would bypass the bptorch layers: ``activation_relu_or_gelu = 0`` is
    one of the conditions that turn it off, and the encoder's nested-tensor path is off too.
    """
    import torch.nn.functional as torch_F

    from . import functional as F

    if isinstance(module, nn.TransformerEncoderLayer):
        act = {torch_F.relu: F.relu, torch_F.gelu: F.gelu}.get(module.activation)
        if act is not None:
            module.activation = act
        module.activation_relu_or_gelu = 0
    if isinstance(module, nn.TransformerEncoder):
        module.use_nested_tensor = False


def _computes(module: nn.Module) -> bool:
    """A torch.nn module with parameters or a forward of its own (not a container)."""
    if not type(module).__module__.startswith("torch.nn") or isinstance(module, _CONTAINERS):
        return False
    own_params = any(p is not None for p in module._parameters.values())
    return own_params or type(module).forward is not nn.Module.forward


# the twins that take feedback= (bptorch.feedback): from_torch_nn(model, feedback="fa")
_FEEDBACK_TWINS = ("Linear", "Conv2d")


def from_torch_nn(model: nn.Module, strict: bool = True, *,
                  feedback: str = "backprop") -> nn.Module:
    """A copy of ``model`` with every torch.nn layer that has a bptorch twin replaced by it.

    The twins (``bptorch.nn.Linear``, ``Conv2d``, ``BatchNorm2d``, ... : the names in
    :data:`TWIN_NAMES`) are built from the torch layer's arguments and get a copy of its
    parameters and buffers (``load_state_dict``), its ``requires_grad`` flags and its
    train/eval mode. Containers and user modules are copied with their children converted,
    so the model's own ``forward`` runs unchanged on the twins. ``inplace=True`` on an
    activation or dropout whose twin has no such argument becomes out of place (the same
    values; the input is left as it was). Hooks on a replaced layer are not carried over.

    A torch.nn module with parameters or a forward of its own and no twin (an LSTM, or a
    layer using an argument its twin lacks) raises NotImplementedError naming every such
    type and where it sits; with ``strict=False`` those are kept as they are, with a warning.

    ``feedback`` (keyword-only): the rule of ``bptorch.feedback`` every Linear and Conv2d
    twin uses in BP2 ("backprop", "fa", "usf", "brsf", "frsf"); fa's B and frsf's |R| are
    drawn fresh (torch's layers have none).
    """
    from .feedback import check_rule

    check_rule(feedback)
    model = _copy.deepcopy(model)
    missing: dict[str, list[str]] = {}  # "torch.nn.X (why)" -> where
    memo: dict[int, nn.Module] = {}  # a module used twice gets one twin

    def convert(module: nn.Module, where: str) -> nn.Module:
        if id(module) in memo:
            return memo[id(module)]
        twin, why = _twin(module, feedback)
        if twin is not None:
            if module._forward_hooks or module._forward_pre_hooks or module._backward_hooks:
                warnings.warn(f"from_torch_nn: the hooks on {where or 'the model'} "
                              f"({type(module).__name__}) are not carried over", stacklevel=3)
            out = twin
        elif (type(module).__name__ in COMPOSITE_NAMES
              and getattr(nn, type(module).__name__, None) is type(module)):
            for name, child in module._modules.items():
                if child is not None:
                    module._modules[name] = convert(child, f"{where}.{name}" if where else name)
            _fix_composite(module)
            out = module
        elif why is not None or _computes(module):
            if why is None:
                from . import nn as bnn

                name = type(module).__name__
                why = "not in convert.TWIN_NAMES" if hasattr(bnn, name) else "no bptorch twin"
            missing.setdefault(f"torch.nn.{type(module).__name__} ({why})",
                               []).append(where or "<root>")
            out = module
        else:
            for name, child in module._modules.items():
                if child is not None:
                    module._modules[name] = convert(child, f"{where}.{name}" if where else name)
            out = module
        memo[id(module)] = out
        return out

    model = convert(model, "")
    if missing:
        found = "; ".join(f"{kind} at {', '.join(repr(w) for w in where)}"
                          for kind, where in missing.items())
        if strict:
            raise NotImplementedError(
                f"from_torch_nn: cannot convert {found}. Pass strict=False to keep "
                f"these as torch.nn modules")
        warnings.warn(f"from_torch_nn: kept as torch.nn modules: {found}",
                      stacklevel=2)
    return model
