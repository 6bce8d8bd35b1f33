"""Hypothesis strategies for ``tests/test_parity.py``: one :class:`Case` per drawn
configuration of a ``bptorch.nn`` module and its ``torch.nn`` twin.

A case holds the constructor call (positional prefix and keywords, in torch's order),
the input (logical shape, dtype, memory layout, exact zeros or not), the mode and a
seed. :func:`run` builds the input, forwards it, and backpropagates a random upstream
gradient; the test compares what it returns for bptorch's module and torch's.

Axes (the ``axis`` argument of :func:`cases`):
    "core"      float32/float64, contiguous, batched (batch 1, extra leading dims)
    "layout"    float32/float64, non-contiguous inputs (transposed, sliced) and channels_last
    "bfloat16"  bfloat16, any layout
    "unbatched" the unbatched input torch accepts (Linear (in,), Conv2d/MaxPool2d (C, H, W))
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

import torch
from hypothesis import assume
from hypothesis import strategies as st
from torch import Tensor
from torch import nn as tnn

import bptorch.nn as bnn
from bptorch.activations import ACTIVATIONS

FLOATS = (torch.float32, torch.float64)
REQUIRED = inspect.Parameter.empty

# bptorch.nn name -> torch.nn twin, for the modules whose constructor mirrors torch's.
TWINS: dict[str, type[tnn.Module]] = {
    "Linear": tnn.Linear, "Sigmoid": tnn.Sigmoid, "Tanh": tnn.Tanh, "ReLU": tnn.ReLU,
    "LeakyReLU": tnn.LeakyReLU, "Softmax": tnn.Softmax, "Identity": tnn.Identity,
    "GELU": tnn.GELU, "SiLU": tnn.SiLU, "Conv2d": tnn.Conv2d, "MaxPool2d": tnn.MaxPool2d,
    "Dropout": tnn.Dropout, "Flatten": tnn.Flatten,
}
FACTORY = {"Linear", "Conv2d", "Dense"}  # constructors that take device= and dtype=
UNBATCHED = ("Linear", "Conv2d", "MaxPool2d", "Dense")
MODULES = (*TWINS, "Dense")

# Dense(activation=name) <-> nn.Sequential(nn.Linear, DENSE_TWIN[name])
DENSE_TWIN: dict[str, Callable[..., tnn.Module]] = {
    "sigmoid": lambda **k: tnn.Sigmoid(), "tanh": lambda **k: tnn.Tanh(),
    "relu": lambda **k: tnn.ReLU(), "identity": lambda **k: tnn.Identity(),
    "leaky_relu": lambda negative_slope=0.01: tnn.LeakyReLU(negative_slope),
    "softmax": lambda **k: tnn.Softmax(dim=-1),
    "gelu": lambda **k: tnn.GELU(), "silu": lambda **k: tnn.SiLU(),
}

# Arguments bptorch may leave out, raising NotImplementedError that names them
# (the project's rule for a deliberately missing argument). Everything else must work.
MAY_BE_UNSUPPORTED = {"Conv2d": {"padding_mode"}}


def torch_parameters(cls: type) -> list[inspect.Parameter]:
    """The named parameters of ``cls.__init__`` after self (no *args/**kwargs)."""
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    return [p for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


@dataclass
class Case:
    """One drawn configuration. ``args``/``kwargs`` are the constructor call of both."""

    name: str
    args: tuple
    kwargs: dict
    shape: tuple[int, ...]  # the logical input shape
    dtype: torch.dtype
    layout: str = "contiguous"  # or "transposed", "sliced", "channels_last"
    training: bool = False
    seed: int = 0
    zeros: bool = False  # plant exact zeros in the input (ReLU-type kinks, max-pool ties)
    dtype_in_ctor: bool = False  # dtype= to the constructor (else .to(dtype) after)
    round_to: torch.dtype | None = None  # float64 reference runs: inputs rounded to this first

    def __repr__(self) -> str:
        call = ", ".join([*map(repr, self.args), *(f"{k}={v!r}" for k, v in self.kwargs.items())])
        how = "dtype= in ctor" if self.dtype_in_ctor else ".to(dtype)"
        return (f"{self.name}({call}).{'train' if self.training else 'eval'}() on "
                f"input {self.shape} {self.dtype} {self.layout}"
                f"{' with zeros' if self.zeros else ''} ({how}, seed={self.seed})")

    @property
    def inplace(self) -> bool:
        return bool(self.bound().get("inplace", False))

    def bound(self) -> dict[str, Any]:
        """The call's arguments by name, torch's defaults filled in."""
        if self.name == "Dense":
            return {}
        sig = inspect.signature(TWINS[self.name].__init__)
        b = sig.bind(None, *self.args, **self.kwargs)
        b.apply_defaults()
        return dict(list(b.arguments.items())[1:])

    def _factory(self, device: str | None) -> dict:
        f = {}
        if device is not None:
            f["device"] = device
        if self.dtype_in_ctor:
            f["dtype"] = self.dtype
        return f

    def build_bp(self, device: str | None = None) -> tnn.Module:
        cls = getattr(bnn, self.name)  # AttributeError: bptorch.nn lacks the module
        factory = self._factory(device) if self.name in FACTORY else {}
        return self._finish(cls(*self.args, **self.kwargs, **factory), device)

    def build_torch(self, device: str | None = None) -> tnn.Module:
        factory = self._factory(device) if self.name in FACTORY else {}
        if self.name == "Dense":
            in_f, out_f = self.args[:2]
            act = self.kwargs["activation"]
            opts = {k: v for k, v in self.kwargs.items() if k == "negative_slope"}
            m = tnn.Sequential(
                tnn.Linear(in_f, out_f, bias=self.kwargs.get("bias", True), **factory),
                DENSE_TWIN[act](**opts),
            )
        else:
            m = TWINS[self.name](*self.args, **self.kwargs, **factory)
        return self._finish(m, device)

    def _finish(self, m: tnn.Module, device: str | None) -> tnn.Module:
        if not self.dtype_in_ctor:
            m = m.to(self.dtype)
        return m.train(self.training)


def params_of(case: Case, module: tnn.Module) -> tnn.Module:
    """The module holding the parameters that match bptorch's (Dense's twin: its Linear)."""
    return module[0] if case.name == "Dense" and isinstance(module, tnn.Sequential) else module


# ---------------------------------------------------------------- inputs
def make_input(case: Case) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
    """(storage, view): the contiguous tensor that requires grad, and the view of it
    that is fed to the module (identity for "contiguous")."""
    shape = case.shape
    if case.layout == "transposed":
        storage, view = (*shape[:-2], shape[-1], shape[-2]), lambda t: t.transpose(-1, -2)
    elif case.layout == "sliced":
        storage, view = (*shape[:-1], 2 * shape[-1]), lambda t: t[..., ::2]
    elif case.layout == "channels_last":
        n, c, h, w = shape
        storage, view = (n, h, w, c), lambda t: t.permute(0, 3, 1, 2)
    else:
        storage, view = shape, lambda t: t
    g = torch.Generator().manual_seed(case.seed)
    x = torch.randn(storage, generator=g, dtype=torch.float64)
    if case.zeros:
        x = torch.where(torch.rand(storage, generator=g, dtype=torch.float64) < 0.25, 0.0, x)
    if case.round_to is not None:
        x = x.to(case.round_to)
    return x.to(case.dtype), view


def upstream(t: Tensor, seed: int, round_to: torch.dtype | None = None) -> Tensor:
    """A random upstream gradient ∂C/∂output of ``t``'s shape and dtype (its values
    rounded to ``round_to`` first, for a float64 reference of a bfloat16 run)."""
    g = torch.Generator().manual_seed(seed + 7919)
    u = torch.randn(t.shape, generator=g, dtype=torch.float64)
    return (u.to(round_to) if round_to is not None else u).to(t.dtype)


@dataclass
class Result:
    output: Any  # a tensor, or (output, indices) for MaxPool2d(return_indices=True)
    grads: dict[str, Tensor | None]  # "input" and each parameter name
    input_after: Tensor  # the fed input after the call (in-place modules change it)
    aliases_input: bool  # the output shares the fed input's storage


def run(case: Case, module: tnn.Module) -> Result:
    """Forward the case's input (the same RNG state for both twins: Dropout's mask),
    then backpropagate a random upstream gradient into the input and the parameters."""
    storage, view = make_input(case)
    x = storage.clone().requires_grad_()
    fed = view(x.clone() if case.inplace else x)  # in place on a leaf is an error
    torch.manual_seed(case.seed)
    out = module(fed)
    main = out[0] if isinstance(out, tuple) else out
    params = dict(params_of(case, module).named_parameters())
    names, tensors = ["input", *params], [x, *params.values()]
    if main.requires_grad:
        g = upstream(main, case.seed, case.round_to)
        grads = torch.autograd.grad(main, tensors, g, allow_unused=True)
    else:
        grads = (None,) * len(tensors)
    detach = lambda t: t.detach() if isinstance(t, Tensor) else t  # noqa: E731
    output = tuple(map(detach, out)) if isinstance(out, tuple) else out.detach()
    return Result(output, dict(zip(names, grads)), fed.detach().clone(),
                  main.data_ptr() == fed.data_ptr())


# ---------------------------------------------------------------- strategies
def call_form(draw, cls: type, values: dict[str, Any]) -> tuple[tuple, dict]:
    """Split the drawn values into a positional prefix and keywords, in ``cls``'s order.
    Arguments not drawn keep their defaults; defaults are sometimes passed explicitly."""
    params = [p for p in torch_parameters(cls) if p.name in values]
    k = draw(st.integers(0, len(params)))
    # a positional prefix cannot skip an argument: stop it at the first one not drawn
    order = [p.name for p in torch_parameters(cls)]
    prefix = []
    for name in order[:k]:
        if name not in values:
            break
        prefix.append(name)
    args = tuple(values[n] for n in prefix)
    kwargs = {}
    for p in params:
        if p.name in prefix:
            continue
        v = values[p.name]
        default = p.default
        non_default = default is REQUIRED or type(v) is not type(default) or v != default
        if non_default or draw(st.booleans()):
            kwargs[p.name] = v
    return args, kwargs


AXES = ("core", "layout", "bfloat16", "unbatched")


@st.composite
def _common(draw, axis: str, shape: tuple[int, ...], name: str) -> dict:
    """dtype, layout, mode, seed, zeros for a given logical input shape."""
    if axis == "bfloat16":
        dtype = torch.bfloat16
    else:
        dtype = draw(st.sampled_from(FLOATS))
    layouts = ["contiguous"]
    if axis in ("layout", "bfloat16"):
        layouts = (["contiguous"] if axis == "bfloat16" else []) + ["sliced"]
        if len(shape) >= 2:
            layouts.append("transposed")
        if len(shape) == 4:
            layouts.append("channels_last")
    return dict(
        dtype=dtype, layout=draw(st.sampled_from(layouts)), training=draw(st.booleans()),
        seed=draw(st.integers(0, 2**16)), zeros=draw(st.booleans()),
        dtype_in_ctor=name in FACTORY and draw(st.booleans()),
    )


def _lead(draw, axis: str, unbatched_ok: bool = True) -> tuple[int, ...]:
    """Leading (batch) dims: () for unbatched, else 1-3 dims with batch 1 likely."""
    if axis == "unbatched" and unbatched_ok:
        return ()
    return tuple(draw(st.lists(st.sampled_from([1, 1, 2, 3]), min_size=1, max_size=3)))


def _pair_or_int(lo: int, hi: int):
    return st.one_of(st.integers(lo, hi), st.tuples(st.integers(lo, hi), st.integers(lo, hi)))


def _as_pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


@st.composite
def linear_case(draw, axis: str) -> Case:
    in_f, out_f = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    values = {"in_features": in_f, "out_features": out_f}
    if draw(st.booleans()):
        values["bias"] = draw(st.booleans())
    args, kwargs = call_form(draw, tnn.Linear, values)
    shape = (*_lead(draw, axis), in_f)
    return Case("Linear", args, kwargs, shape, **draw(_common(axis, shape, "Linear")))


@st.composite
def dense_case(draw, axis: str) -> Case:
    in_f, out_f = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    act = draw(st.sampled_from([a for a in ACTIVATIONS if a in DENSE_TWIN]))
    kwargs = {"activation": act, "bias": draw(st.booleans())}
    if act == "leaky_relu":
        kwargs["negative_slope"] = draw(st.sampled_from([0.01, 0.2, 1.5]))
    shape = (*_lead(draw, axis), in_f)
    return Case("Dense", (in_f, out_f), kwargs, shape, **draw(_common(axis, shape, "Dense")))


def _any_shape(draw, axis: str) -> tuple[int, ...]:
    if axis == "layout":  # ≥ 2 dims so "transposed" can be drawn
        return tuple(draw(st.lists(st.integers(1, 5), min_size=2, max_size=4)))
    return tuple(draw(st.lists(st.integers(1, 5), min_size=1, max_size=4)))


@st.composite
def activation_case(draw, name: str, axis: str) -> Case:
    shape = _any_shape(draw, axis)
    cls = TWINS[name]
    values: dict[str, Any] = {}
    if name in ("ReLU", "SiLU") and draw(st.booleans()):
        values["inplace"] = draw(st.booleans())
    if name == "LeakyReLU":
        values["negative_slope"] = draw(st.sampled_from([0.01, 0.0, 0.2, 1.0, 2.5, -0.1, -0.7]))
        values["inplace"] = draw(st.booleans())
        # torch refuses the backward of an in-place leaky_relu with a negative slope
        assume(not (values["inplace"] and values["negative_slope"] < 0))
    if name == "Softmax":
        values["dim"] = draw(st.one_of(st.none(), st.integers(-len(shape), len(shape) - 1)))
    if name == "GELU" and draw(st.booleans()):
        values["approximate"] = draw(st.sampled_from(["none", "tanh"]))
    args, kwargs = call_form(draw, cls, values) if values else ((), {})
    return Case(name, args, kwargs, shape, **draw(_common(axis, shape, name)))


@st.composite
def dropout_case(draw, axis: str) -> Case:
    shape = _any_shape(draw, axis)
    values = {}
    if draw(st.booleans()):
        values["p"] = draw(st.sampled_from([0.0, 0.2, 0.5, 0.9, 1.0]))
    if draw(st.booleans()):
        values["inplace"] = draw(st.booleans())
    args, kwargs = call_form(draw, tnn.Dropout, values)
    return Case("Dropout", args, kwargs, shape, **draw(_common(axis, shape, "Dropout")))


@st.composite
def flatten_case(draw, axis: str) -> Case:
    shape = _any_shape(draw, axis)
    n = len(shape)
    start = draw(st.integers(0, n - 1))
    end = draw(st.integers(start, n - 1))
    values = {}
    # torch's defaults (1, -1) where they are valid, or a drawn valid pair, sometimes negative
    if n < 2 or draw(st.booleans()):
        values["start_dim"] = start - n if draw(st.booleans()) else start
        values["end_dim"] = end - n if draw(st.booleans()) else end
    args, kwargs = call_form(draw, tnn.Flatten, values)
    return Case("Flatten", args, kwargs, shape, **draw(_common(axis, shape, "Flatten")))


@st.composite
def conv2d_case(draw, axis: str) -> Case:
    groups = draw(st.sampled_from([1, 1, 2]))
    c_in, c_out = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 3))
    kernel = draw(_pair_or_int(1, 3))
    stride = draw(_pair_or_int(1, 2))
    dilation = draw(_pair_or_int(1, 2))
    padding = draw(st.one_of(_pair_or_int(0, 2), st.sampled_from(["same", "valid"])))
    if padding == "same":
        stride = 1  # torch refuses padding="same" with a stride
    k, d = _as_pair(kernel), _as_pair(dilation)
    reach = [d[i] * (k[i] - 1) + 1 for i in range(2)]
    h, w = (reach[i] + draw(st.integers(0, 4)) for i in range(2))
    values = {"in_channels": c_in, "out_channels": c_out, "kernel_size": kernel}
    optional = {"stride": stride, "padding": padding, "dilation": dilation, "groups": groups,
                "bias": draw(st.booleans()),
                "padding_mode": draw(st.sampled_from(["zeros", "zeros", "zeros", "reflect",
                                                      "replicate", "circular"]))}
    for key, v in optional.items():
        if draw(st.booleans()) or (key == "groups" and v != 1):  # the channels assume groups
            values[key] = v
    if values.get("padding_mode", "zeros") == "reflect":
        pad = values.get("padding", 0)
        p = (0, 0) if isinstance(pad, str) else _as_pair(pad)
        assume(p[0] < h and p[1] < w)  # torch: reflect padding must be smaller than the input
    args, kwargs = call_form(draw, tnn.Conv2d, values)
    lead = _lead(draw, axis)[:1]
    shape = (*lead, c_in, h, w)
    return Case("Conv2d", args, kwargs, shape, **draw(_common(axis, shape, "Conv2d")))


@st.composite
def maxpool2d_case(draw, axis: str) -> Case:
    kernel = draw(_pair_or_int(1, 3))
    k = _as_pair(kernel)
    stride = draw(st.one_of(st.none(), _pair_or_int(1, 3)))
    # torch: padding at most half the kernel
    padding = draw(st.one_of(st.integers(0, min(k) // 2),
                             st.tuples(st.integers(0, k[0] // 2), st.integers(0, k[1] // 2))))
    dilation = draw(_pair_or_int(1, 2))
    d = _as_pair(dilation)
    reach = [d[i] * (k[i] - 1) + 1 for i in range(2)]
    h, w = (reach[i] + draw(st.integers(0, 4)) for i in range(2))
    values = {"kernel_size": kernel}
    optional = {"stride": stride, "padding": padding, "dilation": dilation,
                "return_indices": draw(st.booleans()), "ceil_mode": draw(st.booleans())}
    for key, v in optional.items():
        if draw(st.booleans()):
            values[key] = v
    args, kwargs = call_form(draw, tnn.MaxPool2d, values)
    lead = _lead(draw, axis)[:1]
    shape = (*lead, draw(st.integers(1, 3)), h, w)
    return Case("MaxPool2d", args, kwargs, shape, **draw(_common(axis, shape, "MaxPool2d")))


def cases(name: str, axis: str = "core"):
    """The strategy of cases for one module along one axis."""
    if name == "Linear":
        return linear_case(axis)
    if name == "Dense":
        return dense_case(axis)
    if name == "Conv2d":
        return conv2d_case(axis)
    if name == "MaxPool2d":
        return maxpool2d_case(axis)
    if name == "Dropout":
        return dropout_case(axis)
    if name == "Flatten":
        return flatten_case(axis)
    return activation_case(name, axis)


# ---------------------------------------------------------------- costs
COSTS = ("CrossEntropyCost", "LogLikelihoodCost", "QuadraticCost")


@dataclass
class CostCase:
    name: str
    kwargs: dict  # logits=, reduction=
    lead: tuple[int, ...]  # the (*) of (*, C); () is one unbatched example
    n_out: int
    dtype: torch.dtype
    target: str  # "index", "one_hot" or "soft"
    scale: float  # logit magnitude: 1 typical, 30 and 300 saturate σ and softmax
    layout: str
    seed: int

    def __repr__(self) -> str:
        kw = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        return (f"{self.name}({kw}) on output {(*self.lead, self.n_out)} {self.dtype} "
                f"{self.layout}, {self.target} target, scale {self.scale} (seed={self.seed})")


@st.composite
def cost_case(draw, name: str, reduction: str | None) -> CostCase:
    """``reduction=None``: the default (not passed)."""
    kwargs = {} if name == "QuadraticCost" else {"logits": True}
    if reduction is not None:
        kwargs["reduction"] = reduction
    lead = tuple(draw(st.lists(st.sampled_from([1, 2, 3, 5]), min_size=0, max_size=3)))
    targets = ["index", "one_hot", "soft"] if name != "QuadraticCost" else ["index", "soft"]
    return CostCase(
        name, kwargs, lead, draw(st.integers(1, 5)),
        draw(st.sampled_from([torch.float32, torch.float64, torch.bfloat16])),
        draw(st.sampled_from(targets)),
        draw(st.sampled_from([1.0, 1.0, 30.0, 300.0])) if name != "QuadraticCost" else 1.0,
        draw(st.sampled_from(["contiguous", "sliced", "transposed"])),
        draw(st.integers(0, 2**16)),
    )
