"""Convert between bptorch and plain ``torch.nn`` modules, both ways.

``to_torch_nn`` is the export route for tools that do not accept custom autograd
Functions (ONNX, TorchScript, other runtimes): each bptorch layer becomes its
``torch.nn`` twin with the same forward math; only the hand-written backward is
dropped. ``from_torch_nn`` goes the other way. Both read a layer's constructor
arguments with the same machinery (:func:`_torch_arguments`, torch's signature read
back from the layer's attributes, which bptorch's twins share), and both use one table
of twins, :data:`TWIN_NAMES`.

``network_to_sequential`` is the one plain-torch copy of a :class:`Network`, used by
``to_torch_nn``, ``experiments/`` and ``benchmarks/``.
"""
from __future__ import annotations

import copy as _copy
import inspect
import warnings

import torch.nn.functional as torch_F
from torch import nn

from . import functional as F
from . import nn as bnn
from . import routing
from .activations import Activation
from .feedback import check_rule
from .network import Network

# The torch.nn layers with a bptorch twin of the same name in bptorch.nn. Each twin takes
# torch's arguments and keeps them as attributes of the same names, so one table and one
# argument reader serve both directions (twins are looked up in bptorch.nn at call time).
TWIN_NAMES = (
    "Linear", "Conv2d", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "BatchNorm1d",
    "BatchNorm2d", "LayerNorm", "Embedding", "Dropout", "Flatten", "ReLU", "Sigmoid", "Tanh",
    "LeakyReLU", "Softmax", "Identity", "GELU", "SiLU", "MultiheadAttention", "RNN", "LSTM",
    "GRU",
    "Conv1d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d",
    "ReLU6", "Hardtanh", "Hardswish", "Hardsigmoid", "ELU", "SELU", "Softplus", "Mish", "PReLU",
    "LogSoftmax",
    "RNNCell", "LSTMCell", "GRUCell",
    "BatchNorm3d", "GroupNorm", "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d",
    "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout", "FeatureAlphaDropout",
    "MaxPool1d", "MaxPool3d", "AvgPool1d", "AvgPool3d", "AdaptiveAvgPool1d", "AdaptiveAvgPool3d",
    "AdaptiveMaxPool1d", "AdaptiveMaxPool2d", "AdaptiveMaxPool3d", "Upsample",
    "UpsamplingNearest2d", "UpsamplingBilinear2d",
    "Fold", "Unfold",
)
# torch.nn modules whose forward only composes their children (and a few functions): the
# children are converted, then _fix_composite (or, back to torch, _unfix_composite) makes
# the forward reach the twins
COMPOSITE_NAMES = ("TransformerEncoderLayer", "TransformerEncoder", "TransformerDecoderLayer",
                   "TransformerDecoder", "Transformer")
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict, nn.ParameterList,
               nn.ParameterDict)
# carried by the weights themselves (load_state_dict, requires_grad), not by the arguments
_CARRIED = ("device", "dtype", "_weight", "_freeze")
# torch's deprecated aliases of other arguments (Hardtanh's min_value/max_value): read
# through the names they alias, never stored under their own
_DEPRECATED_ALIASES = ("min_value", "max_value")
# bptorch-only arguments that choose how the backward is computed, not what: torch's twin
# computes the same forward without them
_BACKWARD_ONLY = ("unfold", "fused_backward")
# the twins that take feedback= (bptorch.feedback): from_torch_nn(model, feedback="fa")
_FEEDBACK_TWINS = ("Linear", "Conv2d")


# ---- reading a layer's constructor arguments (both directions)


def _rnn_arguments(module: nn.Module, cls: type) -> dict[str, tuple[object, object]]:
    """RNN, LSTM and GRU take ``*args``: their arguments are RNNBase's (less ``mode``), and
    the RNN's ``nonlinearity``; ``bias`` is a bool attribute there."""
    params = inspect.signature(nn.RNNBase.__init__).parameters
    out = {name: (getattr(module, name), p.default) for name, p in params.items()
           if name not in ("self", "mode", *_CARRIED)}
    if issubclass(cls, nn.RNN):
        out["nonlinearity"] = (module.nonlinearity, "tanh")
    return out


def _cell_arguments(module: nn.Module, cls: type) -> dict[str, tuple[object, object]]:
    """RNNCell, LSTMCell and GRUCell keep ``bias`` as a bool attribute, as RNNBase does."""
    return {name: (getattr(module, name), p.default)
            for name, p in inspect.signature(cls.__init__).parameters.items()
            if name not in ("self", *_CARRIED)}


def _mha_arguments(m: nn.Module) -> dict[str, tuple[object, object]]:
    """MultiheadAttention keeps ``bias`` and ``add_bias_kv`` as tensors, not flags."""
    return {"embed_dim": (m.embed_dim, None), "num_heads": (m.num_heads, None),
            "dropout": (m.dropout, 0.0), "bias": (m.in_proj_bias is not None, True),
            "add_bias_kv": (m.bias_k is not None, False),
            "add_zero_attn": (m.add_zero_attn, False), "kdim": (m.kdim, None),
            "vdim": (m.vdim, None), "batch_first": (m.batch_first, False)}


def _torch_arguments(module: nn.Module, cls: type | None = None
                     ) -> dict[str, tuple[object, object]]:
    """{argument: (value, torch's default)} for the constructor of the torch.nn class
    ``cls`` (default: the module's own), read back from the module's attributes (``bias``
    from whether it has one). ``module`` may be the torch layer or its bptorch twin: the
    twins keep torch's arguments under torch's names."""
    cls = type(module) if cls is None else cls
    if issubclass(cls, nn.RNNBase):
        return _rnn_arguments(module, cls)
    if issubclass(cls, nn.MultiheadAttention):
        return _mha_arguments(module)
    if issubclass(cls, nn.RNNCellBase):
        return _cell_arguments(module, cls)
    out = {}
    for name, param in inspect.signature(cls.__init__).parameters.items():
        if name == "self" or name in _CARRIED or param.kind in (param.VAR_POSITIONAL,
                                                                  param.VAR_KEYWORD):
            continue
        if name in _DEPRECATED_ALIASES:
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


def _factory(module: nn.Module, accepts) -> dict[str, object]:
    """device= and dtype= of the module's first floating tensor, where ``accepts`` has them."""
    tensors = [t for t in (*module.parameters(), *module.buffers()) if t.is_floating_point()]
    if not tensors:
        return {}
    return {arg: getattr(tensors[0], arg) for arg in ("device", "dtype") if arg in accepts}


def _places(found: dict[str, list[str]]) -> str:
    """"kind at 'a', 'b'; kind2 at 'c'": what a conversion left out, and where."""
    return "; ".join(f"{kind} at {', '.join(repr(w) for w in where)}"
                     for kind, where in found.items())


def _where(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _class_name(module: nn.Module) -> str:
    """``bptorch.nn.X`` for a class bptorch.nn exports, else its module and qualified name."""
    cls = type(module)
    if getattr(bnn, cls.__name__, None) is cls:
        return f"bptorch.nn.{cls.__name__}"
    return f"{cls.__module__}.{cls.__qualname__}"


# ---- bptorch -> torch.nn


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
    if act.name == "relu6":
        return nn.ReLU6()
    if act.name in ("hardtanh", "elu", "softplus"):  # their arguments, in torch's order
        return {"hardtanh": nn.Hardtanh, "elu": nn.ELU, "softplus": nn.Softplus}[act.name](
            *act.params)
    if act.name in ("hardsigmoid", "hardswish", "selu", "mish"):
        return {"hardsigmoid": nn.Hardsigmoid, "hardswish": nn.Hardswish, "selu": nn.SELU,
                "mish": nn.Mish}[act.name]()
    raise ValueError(f"no torch.nn module for activation {act.name!r}")


def _carry_tensors(module: nn.Module, twin: nn.Module, copy: bool) -> None:
    """Give ``twin`` the parameters and buffers of ``module`` under the same keys: copies,
    or (``copy=False``) the same storage, with the same ``requires_grad``. A bptorch
    feedback rule's ``feedback_weight`` has no place in torch's layer and is left out."""
    keys = []
    for key, t in module.state_dict(keep_vars=True).items():
        prefix, _, leaf = key.rpartition(".")
        if leaf == "feedback_weight":
            continue
        keys.append(key)
        dst = twin.get_submodule(prefix)
        data = t.detach().clone() if copy else t.detach()
        if leaf in dst._parameters:
            # setattr, not _parameters[leaf] =: RNNBase.__setattr__ keeps _flat_weights in step
            setattr(dst, leaf, nn.Parameter(data, requires_grad=t.requires_grad))
        else:
            setattr(dst, leaf, data)
    if list(twin.state_dict()) != keys:
        raise RuntimeError(f"to_torch_nn: torch.nn.{type(twin).__name__} has the keys "
                           f"{list(twin.state_dict())}, its bptorch twin {keys}")


def _linear(layer: bnn.Linear, copy: bool) -> nn.Linear:
    """nn.Linear of ``layer``'s shape, holding its W and b (copies unless ``copy=False``).

    Built as torch builds one, so it draws its (discarded) init from torch's generator
    on W's device: the random state after a conversion is the same as before."""
    w = layer.weight
    out = nn.Linear(layer.in_features, layer.out_features, layer.bias is not None,
                    device=w.device, dtype=w.dtype)
    _carry_tensors(layer, out, copy)
    return out


def network_to_sequential(net: Network, copy: bool = True) -> nn.Sequential:
    """The plain-torch copy of a :class:`Network`: ``nn.Sequential(nn.Linear, σ, ...,
    nn.Linear, σ_out)``, holding copies of its weights (``copy=False``: the same tensors).

    The state_dict keys ``layers.{l}.weight``/``bias`` become ``{2l}.weight``/``bias``
    (:func:`network_state_dict_to_sequential`). A feedback rule (``fa``, ``dfa``, ...)
    changes only the backward, so the copy computes the same a^L; it learns by backprop,
    and a warning says so."""
    if net.feedback != "backprop":
        warnings.warn(f"network_to_sequential: the feedback rule {net.feedback!r} of the "
                      f"Network is dropped; the torch.nn copy learns by backprop", stacklevel=2)
    mods: list[nn.Module] = []
    for layer in net.layers:
        mods += [_linear(layer, copy), activation_module(layer.activation)]
    return nn.Sequential(*mods).train(net.training)


def _torch_layer(module: nn.Module, copy: bool) -> tuple[nn.Module | None, str | None]:
    """torch.nn.X for bptorch.nn.X, X in TWIN_NAMES: built from the twin's arguments
    (read by _torch_arguments, the reader from_torch_nn uses), holding its tensors."""
    name = type(module).__name__
    cls = getattr(nn, name)
    try:
        arguments = _torch_arguments(module, cls)
    except AttributeError as e:
        return None, f"cannot read torch's argument {e.name!r} from it"
    kwargs = {arg: value for arg, (value, default) in arguments.items()
              if not _is_default(value, default)}  # the defaults are torch's own
    accepts = inspect.signature(cls).parameters
    ours = inspect.signature(type(module)).parameters
    for arg, param in ours.items():  # bptorch-only arguments: none may change the forward
        if arg in (*arguments, *accepts, *_BACKWARD_ONLY, *_CARRIED, "feedback") or \
                param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        value = getattr(module, arg, param.default)
        if not _is_default(value, param.default):
            return None, f"torch.nn.{name} has no argument {arg!r} (here {arg}={value!r})"
    twin = cls(**kwargs, **_factory(module, accepts))
    _carry_tensors(module, twin, copy)
    twin.train(module.training)
    return twin, None


# the book's costs and the torch losses that compute the same number: torch's losses
# average over elements, the book's over rows (positions), so only these coincide
def _cost_twin(module: nn.Module) -> tuple[nn.Module | None, str | None]:
    """The torch loss that computes ``module``'s cost, or (None, why there is none).

    ``LogLikelihoodCost(logits=True)`` is ``CrossEntropyLoss`` for (N, C) output (torch
    takes classes on dim 1, the book last: the same for rows); ``CrossEntropyCost``
    with ``reduction="sum"`` is ``BCEWithLogitsLoss``/``BCELoss(reduction="sum")``
    (float targets: torch's take no class indices)."""
    if isinstance(module, bnn.LogLikelihoodCost):
        if module.logits:
            return nn.CrossEntropyLoss(reduction=module.reduction), None
        return None, "torch's NLLLoss takes ln a, not a; logits=True has a twin, " \
                     "CrossEntropyLoss"
    if isinstance(module, bnn.CrossEntropyCost):
        if module.reduction == "sum":
            return (nn.BCEWithLogitsLoss if module.logits else nn.BCELoss)(reduction="sum"), None
        return None, f"BCELoss's reduction={module.reduction!r} averages over elements, " \
                     "the book's over rows; reduction='sum' has a twin"
    return None, "torch has no ½‖a − y‖² loss (MSELoss averages (a − y)² over elements)"


def _bptorch_twin(module: nn.Module, copy: bool) -> tuple[nn.Module | None, str | None]:
    """(torch.nn module, None) for a bptorch module with a twin; (None, why not) for
    another bptorch module; (None, None) for a module that is not bptorch's."""
    name = type(module).__name__
    if isinstance(module, Network):
        return network_to_sequential(module, copy), None
    if type(module) is bnn.Dense:
        return nn.Sequential(_linear(module, copy), activation_module(module.activation)), None
    if name in TWIN_NAMES and type(module) is getattr(bnn, name, None):
        return _torch_layer(module, copy)
    if type(module) in (bnn.QuadraticCost, bnn.CrossEntropyCost, bnn.LogLikelihoodCost):
        return _cost_twin(module)
    if _is_bptorch_composite(module):
        return None, None  # copied with its children converted, then made torch's class
    if any(c.__module__.startswith("bptorch.") for c in type(module).__mro__):
        return None, "no torch.nn twin"
    return None, None


def _is_bptorch_composite(module: nn.Module) -> bool:
    """bptorch.nn.TransformerEncoderLayer & co.: torch's class with bptorch's children."""
    name = type(module).__name__
    return name in COMPOSITE_NAMES and type(module) is getattr(bnn, name, None)


def _unfix_composite(module: nn.Module) -> None:
    """Undo :func:`_fix_composite` on a copy whose children are torch's again: the
    activation function goes back to torch's, and with it torch's fused fast path; a
    bptorch.nn composite (TransformerEncoderLayer, ..., Transformer) becomes torch's class."""
    if _is_bptorch_composite(module):
        module.__class__ = getattr(nn, type(module).__name__)
    if isinstance(module, nn.TransformerDecoderLayer):
        act = {F.relu: torch_F.relu, F.gelu: torch_F.gelu}.get(module.activation)
        if act is not None:
            module.activation = act
    if isinstance(module, nn.TransformerEncoderLayer):
        act = {F.relu: torch_F.relu, F.gelu: torch_F.gelu}.get(module.activation)
        if act is not None:
            module.activation = act
        act = module.activation  # torch's own test, from TransformerEncoderLayer.__init__
        module.activation_relu_or_gelu = (
            1 if act is torch_F.relu or isinstance(act, nn.ReLU) else
            2 if act is torch_F.gelu or isinstance(act, nn.GELU) else 0)
    if isinstance(module, nn.TransformerEncoder) and "_torch_use_nested_tensor" in \
            module.__dict__:
        module.use_nested_tensor = module.__dict__.pop("_torch_use_nested_tensor")


def to_torch_nn(model: nn.Module, copy: bool = True) -> nn.Module:
    """A copy of ``model`` with every bptorch module replaced by its ``torch.nn`` twin.

    * the layers of :data:`TWIN_NAMES` (``Linear``, ``Conv2d``, ``LayerNorm``, ``LSTM``,
      ``MultiheadAttention``, the activations, ...) → the ``torch.nn`` class of the same
      name, built from the same arguments, holding the same parameters and buffers
      under the same keys, with the same ``requires_grad`` flags and train/eval mode;
    * ``Dense`` → ``nn.Sequential(nn.Linear, σ)``; ``Network`` →
      :func:`network_to_sequential`;
    * ``LogLikelihoodCost(logits=True)`` → ``nn.CrossEntropyLoss``, ``CrossEntropyCost``
      with ``reduction="sum"`` → ``nn.BCEWithLogitsLoss``/``nn.BCELoss`` (see
      :func:`_cost_twin`); the other cost settings have no torch loss;
    * containers, user modules and torch's composites (``TransformerEncoderLayer``, which
      :func:`from_torch_nn` converts by recursing) are copied with their children
      converted, so the model's own ``forward`` runs unchanged on the twins.

    A layer's feedback rule (``feedback="fa"``, ...) changes only its backward: its twin
    computes the same outputs and learns by backprop, with a warning. A bptorch module
    with no twin (a cost above, ``bptorch.feedback.DFA``, a subclass of a bptorch layer)
    raises NotImplementedError naming its class and where it sits; nothing of bptorch is
    passed through. ``copy=False`` shares the weight tensors instead of copying them. A
    module used twice gets one twin.
    """
    missing: dict[str, list[str]] = {}  # "bptorch.nn.X (why)" -> where
    rules: dict[str, list[str]] = {}  # feedback rule -> where
    memo: dict[int, nn.Module] = {}

    def convert(module: nn.Module, where: str) -> nn.Module:
        if id(module) in memo:
            return memo[id(module)]
        rule = getattr(module, "feedback", "backprop")
        twin, why = _bptorch_twin(module, copy)
        if twin is not None:
            if rule != "backprop" and not isinstance(module, Network):  # that one warns
                rules.setdefault(rule, []).append(where or "<root>")
            if routing.other_hooks(module):
                warnings.warn(f"to_torch_nn: the hooks on {where or 'the model'} "
                              f"({type(module).__name__}) are not carried over", stacklevel=3)
            out = twin
        elif why is not None:
            missing.setdefault(f"{_class_name(module)} ({why})", []).append(where or "<root>")
            out = module
        else:
            out = _copy.copy(module)  # shallow: a fresh _modules dict below, the rest shared
            routing.uninstall(out)  # torch's own forward, not routed to bptorch
            out._modules = {name: None if child is None else convert(child, _where(where, name))
                            for name, child in module._modules.items()}
            if copy:
                out._parameters = {k: None if p is None else nn.Parameter(
                    p.detach().clone(), requires_grad=p.requires_grad)
                    for k, p in module._parameters.items()}
                out._buffers = {k: None if b is None else b.clone()
                                for k, b in module._buffers.items()}
            _unfix_composite(out)
        memo[id(module)] = out
        return out

    out = convert(model, "")
    if missing:
        found = _places(missing)
        raise NotImplementedError(f"to_torch_nn: cannot convert {found}")
    if rules:
        found = _places({repr(rule): where for rule, where in rules.items()})
        warnings.warn(f"to_torch_nn: feedback rules dropped, the torch.nn twins learn by "
                      f"backprop: {found}", stacklevel=2)
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


def _twin(module: nn.Module, feedback: str = "backprop") -> tuple[nn.Module | None, str | None]:
    """(bptorch twin, None), (None, why not) for a torch.nn layer that has none, or
    (None, None) for a module that is not one of the torch.nn layers in TWIN_NAMES."""
    name = type(module).__name__
    if name not in TWIN_NAMES or getattr(nn, name, None) is not type(module):
        return None, None  # not a torch.nn layer (or a subclass with its own forward)
    cls = getattr(bnn, name, None)  # looked up now: a layer may have been added since import
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
    kwargs.update(_factory(module, accepts))
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
    one of the conditions that turn it off, and the encoder's nested-tensor path is off too
    (its torch setting kept for :func:`_unfix_composite`). TransformerDecoderLayer's
    activation is mapped as the encoder layer's; TransformerDecoder and Transformer only
    call their children.
    """
    if isinstance(module, nn.TransformerDecoderLayer):
        act = {torch_F.relu: F.relu, torch_F.gelu: F.gelu}.get(module.activation)
        if act is not None:
            module.activation = act
    if isinstance(module, nn.TransformerEncoderLayer):
        act = {torch_F.relu: F.relu, torch_F.gelu: F.gelu}.get(module.activation)
        if act is not None:
            module.activation = act
        module.activation_relu_or_gelu = 0
    if isinstance(module, nn.TransformerEncoder):
        module.__dict__.setdefault("_torch_use_nested_tensor", module.use_nested_tensor)
        module.use_nested_tensor = False


def _torch_layer_base(module: nn.Module) -> type | None:
    """The torch.nn layer a user module subclasses with a forward of its own
    (convnext's LayerNorm2d(nn.LayerNorm)), or None."""
    cls = type(module)
    if cls.__module__.startswith(("torch.", "bptorch.")):
        return None
    for base in cls.__mro__[1:]:
        if (base.__module__.startswith("torch.nn.modules") and base is not nn.Module
                and not issubclass(base, _CONTAINERS)):
            return base if cls.forward is not base.forward else None
    return None


def _computes(module: nn.Module) -> bool:
    """A torch.nn module with parameters or a forward of its own (not a container)."""
    if not type(module).__module__.startswith("torch.nn") or isinstance(module, _CONTAINERS):
        return False
    own_params = any(p is not None for p in module._parameters.values())
    return own_params or type(module).forward is not nn.Module.forward


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
    check_rule(feedback)
    model = _copy.deepcopy(model)
    missing: dict[str, list[str]] = {}  # "torch.nn.X (why)" -> where
    memo: dict[int, nn.Module] = {}  # a module used twice gets one twin

    def convert(module: nn.Module, where: str) -> nn.Module:
        if id(module) in memo:
            return memo[id(module)]
        twin, why = _twin(module, feedback)
        if twin is not None:
            if routing.other_hooks(module):
                warnings.warn(f"from_torch_nn: the hooks on {where or 'the model'} "
                              f"({type(module).__name__}) are not carried over", stacklevel=3)
            out = twin
        elif (type(module).__name__ in COMPOSITE_NAMES
              and getattr(nn, type(module).__name__, None) is type(module)):
            for name, child in module._modules.items():
                if child is not None:
                    module._modules[name] = convert(child, _where(where, name))
            _fix_composite(module)
            out = module
        elif why is not None or _computes(module):
            if why is None:
                name = type(module).__name__
                why = "not in convert.TWIN_NAMES" if hasattr(bnn, name) else "no bptorch twin"
            missing.setdefault(f"torch.nn.{type(module).__name__} ({why})",
                               []).append(where or "<root>")
            out = module
        else:
            base = _torch_layer_base(module)
            calls = routing.unroutable_calls(type(module).forward) if base else []
            if calls:  # a torch layer's subclass whose own forward computes in torch
                missing.setdefault(
                    f"{_class_name(module)} (a subclass of torch.nn.{base.__name__} whose "
                    f"forward calls {', '.join(calls)}, which bptorch does not route)",
                    []).append(where or "<root>")
            for name, child in module._modules.items():
                if child is not None:
                    module._modules[name] = convert(child, _where(where, name))
            out = module
        memo[id(module)] = out
        return out

    model = convert(model, "")
    if not type(model).__module__.startswith("bptorch."):
        # the model's own forward (and its modules' that are not twins) calls functions:
        # route them to bptorch's (routing.RouteMode); strict=False warns, on the first
        # forward, about what still computes in torch
        routing.install(model, warn=not strict)
    if missing:
        found = _places(missing)
        if strict:
            raise NotImplementedError(
                f"from_torch_nn: cannot convert {found}. Pass strict=False to keep "
                f"these as torch.nn modules")
        warnings.warn(f"from_torch_nn: kept as torch.nn modules: {found}",
                      stacklevel=2)
    return model
