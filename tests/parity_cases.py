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
    "unbatched" the unbatched input torch accepts (Linear (in,), Conv2d/MaxPool2d/AvgPool2d
                (C, H, W), LayerNorm normalized_shape itself, Embedding a 0-d index,
                MultiheadAttention (L, E), RNN/LSTM/GRU (L, H_in))

Module by module: BatchNorm1d/2d (N, C[, L]) / (N, C, H, W), batch 1 included (torch
refuses training on one value per channel: so must bptorch); Embedding takes int64/int32
indices (padding_idx among them; ``dtype`` is the table's); MultiheadAttention draws
self-attention or separate query/key/value, key_padding_mask and attn_mask (bool or float
with −∞, (L, S) or (N·h, L, S)), is_causal with the causal mask torch requires,
need_weights and average_attn_weights (``Case.extra``); RNN/LSTM/GRU draw h_0 (and c_0)
or none. Every floating output gets its own random upstream gradient.
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
    "BatchNorm1d": tnn.BatchNorm1d, "BatchNorm2d": tnn.BatchNorm2d, "LayerNorm": tnn.LayerNorm,
    "Embedding": tnn.Embedding, "AvgPool2d": tnn.AvgPool2d,
    "AdaptiveAvgPool2d": tnn.AdaptiveAvgPool2d, "MultiheadAttention": tnn.MultiheadAttention,
    "RNN": tnn.RNN, "LSTM": tnn.LSTM, "GRU": tnn.GRU,
}
# constructors that take device= and dtype=
FACTORY = {"Linear", "Conv2d", "Dense", "BatchNorm1d", "BatchNorm2d", "LayerNorm", "Embedding",
           "MultiheadAttention", "RNN", "LSTM", "GRU"}
UNBATCHED = ("Linear", "Conv2d", "MaxPool2d", "Dense", "AvgPool2d", "AdaptiveAvgPool2d",
             "LayerNorm", "Embedding", "MultiheadAttention", "RNN", "LSTM", "GRU")
MODULES = (*TWINS, "Dense")
# slow to run (sequences, attention): fewer examples
SLOW = ("MultiheadAttention", "RNN", "LSTM", "GRU")
# the names of a module's outputs, flattened ((output, (h_n, c_n)) -> 3 names)
OUTPUT_NAMES = {
    "MaxPool2d": ("output", "indices"), "MultiheadAttention": ("attn_output", "attn_weights"),
    "RNN": ("output", "h_n"), "GRU": ("output", "h_n"), "LSTM": ("output", "h_n", "c_n"),
}


def _rnn_signature(*names_defaults) -> inspect.Signature:
    P = inspect.Parameter
    params = [P("self", P.POSITIONAL_OR_KEYWORD)]
    params += [P(n, P.POSITIONAL_OR_KEYWORD, default=d) for n, d in names_defaults]
    return inspect.Signature(params)


_RNN_HEAD = (("input_size", REQUIRED), ("hidden_size", REQUIRED), ("num_layers", 1))
_RNN_TAIL = (("bias", True), ("batch_first", False), ("dropout", 0.0), ("bidirectional", False))
_FACTORY_ARGS = (("device", None), ("dtype", None))
# torch's RNN, LSTM and GRU take (*args, **kwargs) and parse them; their documented order:
TORCH_SIGNATURES = {
    "RNN": _rnn_signature(*_RNN_HEAD, ("nonlinearity", "tanh"), *_RNN_TAIL, *_FACTORY_ARGS),
    "LSTM": _rnn_signature(*_RNN_HEAD, *_RNN_TAIL, ("proj_size", 0), *_FACTORY_ARGS),
    "GRU": _rnn_signature(*_RNN_HEAD, *_RNN_TAIL, *_FACTORY_ARGS),
}

# Dense(activation=name) <-> nn.Sequential(nn.Linear, DENSE_TWIN[name])
DENSE_TWIN: dict[str, Callable[..., tnn.Module]] = {
    "sigmoid": lambda **k: tnn.Sigmoid(), "tanh": lambda **k: tnn.Tanh(),
    "relu": lambda **k: tnn.ReLU(), "identity": lambda **k: tnn.Identity(),
    "leaky_relu": lambda negative_slope=0.01: tnn.LeakyReLU(negative_slope),
    "softmax": lambda **k: tnn.Softmax(dim=-1),
    "gelu": lambda **k: tnn.GELU(), "silu": lambda **k: tnn.SiLU(),
}

# Arguments bptorch may leave out, raising NotImplementedError that names them
# (the project's rule for a deliberately missing argument), each with the values that
# are left out (given the call's other arguments). Everything else must work.
MAY_BE_UNSUPPORTED: dict[str, dict[str, Callable[[Any, dict], bool]]] = {
    "Conv2d": {"padding_mode": lambda v, b: v != "zeros"},
    "Embedding": {"max_norm": lambda v, b: v is not None, "sparse": lambda v, b: bool(v)},
    # MultiheadAttention's add_bias_kv, add_zero_attn, kdim/vdim and LSTM's proj_size are
    # implemented (issue 21): they must work
}


def torch_signature(cls: type) -> inspect.Signature:
    """``cls.__init__``'s signature, or the documented one where torch parses *args."""
    name = next((n for n, c in TWINS.items() if c is cls), None)
    return TORCH_SIGNATURES.get(name) or inspect.signature(cls.__init__)


def torch_parameters(cls: type) -> list[inspect.Parameter]:
    """The named parameters of ``cls.__init__`` after self (no *args/**kwargs)."""
    params = list(torch_signature(cls).parameters.values())[1:]
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
    extra: dict | None = None  # the forward's other inputs (masks, h_0, index dtype), by module

    def __repr__(self) -> str:
        call = ", ".join([*map(repr, self.args), *(f"{k}={v!r}" for k, v in self.kwargs.items())])
        how = "dtype= in ctor" if self.dtype_in_ctor else ".to(dtype)"
        return (f"{self.name}({call}).{'train' if self.training else 'eval'}() on "
                f"input {self.shape} {self.dtype} {self.layout}"
                f"{' with zeros' if self.zeros else ''} ({how}, seed={self.seed})"
                f"{f', forward {self.extra}' if self.extra else ''}")

    @property
    def inplace(self) -> bool:
        return bool(self.bound().get("inplace", False))

    def bound(self) -> dict[str, Any]:
        """The call's arguments by name, torch's defaults filled in."""
        if self.name == "Dense":
            return {}
        sig = torch_signature(TWINS[self.name])
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
def _values(case: Case, shape: tuple[int, ...], seed: int, zeros: bool | None = None) -> Tensor:
    """N(0, 1) values of ``shape`` in the case's dtype (exact zeros planted if asked,
    rounded to ``round_to`` first for a float64 reference)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    if case.zeros if zeros is None else zeros:
        x = torch.where(torch.rand(shape, generator=g, dtype=torch.float64) < 0.25, 0.0, x)
    if case.round_to is not None:
        x = x.to(case.round_to)
    return x.to(case.dtype)


def _layout(case: Case, shape: tuple[int, ...]) -> tuple[tuple[int, ...], Callable]:
    """(storage shape, view) giving a tensor of logical ``shape`` in the case's layout."""
    if case.layout == "transposed":
        return (*shape[:-2], shape[-1], shape[-2]), lambda t: t.transpose(-1, -2)
    if case.layout == "sliced":
        return (*shape[:-1], 2 * shape[-1]), lambda t: t[..., ::2]
    if case.layout == "channels_last":
        n, c, h, w = shape
        return (n, h, w, c), lambda t: t.permute(0, 3, 1, 2)
    return shape, lambda t: t


def make_input(case: Case) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
    """(storage, view): the contiguous tensor that requires grad, and the view of it
    that is fed to the module (identity for "contiguous")."""
    storage, view = _layout(case, case.shape)
    return _values(case, storage, case.seed), view


def _indices(case: Case) -> Tensor:
    """Embedding's index input (the case's shape and layout), padding_idx among them."""
    b = case.bound()
    storage, view = _layout(case, case.shape)
    g = torch.Generator().manual_seed(case.seed)
    idx = torch.randint(0, b["num_embeddings"], storage, generator=g)
    if b["padding_idx"] is not None and idx.numel() > 1:
        idx.view(-1)[0] = b["padding_idx"] % b["num_embeddings"]
    return view(idx.to(case.extra["index_dtype"]))


def _mask(case: Case, kind: str | None, shape: tuple[int, ...], seed: int) -> Tensor | None:
    """A bool mask (True: do not attend) or a float one (N(0, 1), some −∞)."""
    if kind is None:
        return None
    g = torch.Generator().manual_seed(seed)
    masked = torch.rand(shape, generator=g) < 0.3
    if kind == "bool":
        return masked
    return _values(case, shape, seed, zeros=False).masked_fill(masked, float("-inf"))


def _attention_inputs(case: Case) -> tuple[dict, tuple, dict]:
    e, b = case.extra, case.bound()
    E, h = b["embed_dim"], b["num_heads"]
    L, S = e["L"], e["S"]
    batched = len(case.shape) == 3
    n = case.shape[0 if b["batch_first"] else 1] if batched else 1

    def shaped(length, width=E):
        if not batched:
            return (length, width)
        return (n, length, width) if b["batch_first"] else (length, n, width)

    widths = {"input": E, "query": E, "key": b.get("kdim") or E, "value": b.get("vdim") or E}
    leaves, fed = {}, []
    names = ("input",) if e["self_attention"] else ("query", "key", "value")
    for i, name in enumerate(names):
        storage, view = _layout(case, shaped(L if name in ("input", "query") else S,
                                             widths[name]))
        leaves[name] = _values(case, storage, case.seed + i).requires_grad_()
        fed.append(view(leaves[name]))
    args = tuple(fed) * 3 if e["self_attention"] else tuple(fed)
    kwargs = {k: e[k] for k in ("need_weights", "average_attn_weights", "is_causal")}
    kwargs["key_padding_mask"] = _mask(case, e["key_padding_mask"], (n, S) if batched else (S,),
                                       case.seed + 11)
    if e["is_causal"]:  # torch needs the causal mask itself with the hint
        causal = torch.ones(L, S, dtype=torch.bool).triu(1)
        kwargs["attn_mask"] = (causal if e["attn_mask"] == "bool" else torch.zeros(
            L, S, dtype=case.dtype).masked_fill(causal, float("-inf")))
    else:
        shape = (L, S) if not e["attn_mask_3d"] else ((n * h, L, S) if batched else (h, L, S))
        kwargs["attn_mask"] = _mask(case, e["attn_mask"], shape, case.seed + 13)
    return leaves, args, kwargs


def _recurrent_inputs(case: Case) -> tuple[dict, tuple, dict]:
    b = case.bound()
    storage, view = _layout(case, case.shape)
    leaves = {"input": _values(case, storage, case.seed).requires_grad_()}
    args: tuple = (view(leaves["input"]),)
    if case.extra["hx"]:
        batched = len(case.shape) == 3
        n = case.shape[0 if b["batch_first"] else 1] if batched else None
        D = 2 if b["bidirectional"] else 1
        states = ("h_0", "c_0") if case.name == "LSTM" else ("h_0",)
        for i, name in enumerate(states):
            # h_0 is proj_size wide where the LSTM projects h_t; c_0 hidden_size
            width = b.get("proj_size") if name == "h_0" and b.get("proj_size") else \
                b["hidden_size"]
            shape = (D * b["num_layers"], *([n] if batched else []), width)
            leaves[name] = _values(case, shape, case.seed + 1 + i, zeros=False).requires_grad_()
        hx = tuple(leaves[s] for s in states)
        args += (hx if case.name == "LSTM" else hx[0],)
    return leaves, args, {}


def forward_inputs(case: Case) -> tuple[dict[str, Tensor], tuple, dict]:
    """(leaves, args, kwargs): the module is called as module(*args, **kwargs); leaves
    are the tensors (requiring grad) whose gradients are compared, by name."""
    if case.name == "Embedding":
        return {}, (_indices(case),), {}
    if case.name == "MultiheadAttention":
        return _attention_inputs(case)
    if case.name in ("RNN", "LSTM", "GRU"):
        return _recurrent_inputs(case)
    storage, view = make_input(case)
    x = storage.clone().requires_grad_()
    return {"input": x}, (view(x.clone() if case.inplace else x),), {}  # in place on a leaf: error


def upstream(t: Tensor, seed: int, round_to: torch.dtype | None = None) -> Tensor:
    """A random upstream gradient ∂C/∂output of ``t``'s shape and dtype (its values
    rounded to ``round_to`` first, for a float64 reference of a bfloat16 run)."""
    g = torch.Generator().manual_seed(seed + 7919)
    u = torch.randn(t.shape, generator=g, dtype=torch.float64)
    return (u.to(round_to) if round_to is not None else u).to(t.dtype)


@dataclass
class Result:
    output: Any  # a tensor, or the flattened tuple of outputs ((out, (h_n, c_n)) -> 3)
    grads: dict[str, Tensor | None]  # each input leaf ("input", "query", "h_0") and parameter
    input_after: Tensor  # the fed input after the call (in-place modules change it)
    aliases_input: bool  # the output shares the fed input's storage
    buffers: dict[str, Tensor]  # the module's buffers after the call (BatchNorm's running stats)


def flatten(out) -> tuple:
    """(output, (h_n, c_n)) -> (output, h_n, c_n)."""
    if isinstance(out, (tuple, list)):
        return tuple(t for o in out for t in flatten(o))
    return (out,)


def run(case: Case, module: tnn.Module) -> Result:
    """Forward the case's inputs (the same RNG state for both twins: Dropout's mask),
    then backpropagate a random upstream gradient into every floating output (one per
    output, the first seeded as before) and from there into the inputs and parameters."""
    leaves, args, kwargs = forward_inputs(case)
    fed = args[0]
    torch.manual_seed(case.seed)
    out = module(*args, **kwargs)
    flat = flatten(out)
    params = dict(params_of(case, module).named_parameters())
    names, tensors = [*leaves, *params], [*leaves.values(), *params.values()]
    diff = [t for t in flat if isinstance(t, Tensor) and t.requires_grad]
    if diff:
        gs = [upstream(t, case.seed + 101 * i, case.round_to) for i, t in enumerate(diff)]
        grads = torch.autograd.grad(diff, tensors, gs, allow_unused=True)
    else:
        grads = (None,) * len(tensors)
    detach = lambda t: t.detach() if isinstance(t, Tensor) else t  # noqa: E731
    output = tuple(map(detach, flat)) if isinstance(out, (tuple, list)) else out.detach()
    buffers = {k: v.detach().clone() for k, v in params_of(case, module).named_buffers()}
    return Result(output, dict(zip(names, grads)), fed.detach().clone(),
                  flat[0].data_ptr() == fed.data_ptr(), buffers)


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


def _optional(draw, values: dict, optional: dict) -> None:
    """Each optional argument drawn into ``values`` (or left at torch's default)."""
    for key, v in optional.items():
        if draw(st.booleans()):
            values[key] = v


@st.composite
def batchnorm_case(draw, name: str, axis: str) -> Case:
    c = draw(st.integers(1, 3))
    values = {"num_features": c}
    _optional(draw, values, {
        "eps": draw(st.sampled_from([1e-5, 1e-3, 0.5])),
        "momentum": draw(st.sampled_from([0.1, None, 0.5, 0.0, 1.0])),
        "affine": draw(st.booleans()), "track_running_stats": draw(st.booleans()),
        "bias": draw(st.booleans()),
    })
    args, kwargs = call_form(draw, tnn.BatchNorm1d, values)
    n = draw(st.sampled_from([1, 1, 2, 3]))
    if name == "BatchNorm2d":
        shape = (n, c, draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    else:
        shape = (n, c, *draw(st.lists(st.integers(1, 4), max_size=1)))
    return Case(name, args, kwargs, shape, **draw(_common(axis, shape, name)))


@st.composite
def layernorm_case(draw, axis: str) -> Case:
    normalized = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=2)))
    ns = draw(st.sampled_from([normalized, list(normalized)]
                              + ([normalized[0]] if len(normalized) == 1 else [])))
    values = {"normalized_shape": ns}
    _optional(draw, values, {
        "eps": draw(st.sampled_from([1e-5, 1e-3, 0.5])),
        "elementwise_affine": draw(st.booleans()), "bias": draw(st.booleans()),
    })
    args, kwargs = call_form(draw, tnn.LayerNorm, values)
    shape = (*_lead(draw, axis), *normalized)
    return Case("LayerNorm", args, kwargs, shape, **draw(_common(axis, shape, "LayerNorm")))


@st.composite
def embedding_case(draw, axis: str) -> Case:
    """Index inputs (int64 or int32), padding_idx among them; dtype is the table's."""
    v, d = draw(st.integers(1, 6)), draw(st.integers(1, 4))
    values = {"num_embeddings": v, "embedding_dim": d}
    _optional(draw, values, {
        "padding_idx": draw(st.one_of(st.none(), st.integers(-v, v - 1))),
        "max_norm": draw(st.sampled_from([None] * 5 + [1.0])),  # left out: NotImplementedError
        "norm_type": draw(st.sampled_from([2.0, 1.0])),
        "scale_grad_by_freq": draw(st.booleans()),
        "sparse": draw(st.sampled_from([False] * 5 + [True])),  # left out: NotImplementedError
    })
    args, kwargs = call_form(draw, tnn.Embedding, values)
    shape = _lead(draw, axis) if axis != "layout" else (
        tuple(draw(st.lists(st.integers(1, 3), min_size=2, max_size=3))))
    common = draw(_common(axis, shape, "Embedding"))
    common["zeros"] = False
    extra = {"index_dtype": draw(st.sampled_from([torch.int64, torch.int32]))}
    return Case("Embedding", args, kwargs, shape, extra=extra, **common)


@st.composite
def avgpool2d_case(draw, axis: str) -> Case:
    kernel = draw(_pair_or_int(1, 3))
    k = _as_pair(kernel)
    padding = draw(st.one_of(st.integers(0, min(k) // 2),
                             st.tuples(st.integers(0, k[0] // 2), st.integers(0, k[1] // 2))))
    h, w = (k[i] + draw(st.integers(0, 3)) for i in range(2))
    values = {"kernel_size": kernel}
    _optional(draw, values, {
        "stride": draw(st.one_of(st.none(), _pair_or_int(1, 3))), "padding": padding,
        "ceil_mode": draw(st.booleans()), "count_include_pad": draw(st.booleans()),
        "divisor_override": draw(st.one_of(st.none(), st.integers(1, 3))),
    })
    args, kwargs = call_form(draw, tnn.AvgPool2d, values)
    shape = (*_lead(draw, axis)[:1], draw(st.integers(1, 3)), h, w)
    return Case("AvgPool2d", args, kwargs, shape, **draw(_common(axis, shape, "AvgPool2d")))


@st.composite
def adaptive_avgpool2d_case(draw, axis: str) -> Case:
    out = st.integers(1, 4)
    size = draw(st.one_of(out, st.tuples(st.one_of(out, st.none()), st.one_of(out, st.none()))))
    args, kwargs = call_form(draw, tnn.AdaptiveAvgPool2d, {"output_size": size})
    shape = (*_lead(draw, axis)[:1], draw(st.integers(1, 3)),
             draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    return Case("AdaptiveAvgPool2d", args, kwargs, shape,
                **draw(_common(axis, shape, "AdaptiveAvgPool2d")))


@st.composite
def attention_case(draw, axis: str) -> Case:
    h = draw(st.integers(1, 2))
    E = h * draw(st.integers(1, 3))
    values = {"embed_dim": E, "num_heads": h}
    # one in four calls asks for add_bias_kv, add_zero_attn, or kdim/vdim ≠ E
    left_out = draw(st.sampled_from([None] * 12 + ["add_bias_kv", "add_zero_attn", "kdim",
                                                    "vdim"]))
    _optional(draw, values, {
        "dropout": draw(st.sampled_from([0.0, 0.0, 0.5])), "bias": draw(st.booleans()),
        "add_bias_kv": left_out == "add_bias_kv", "add_zero_attn": left_out == "add_zero_attn",
        "kdim": E + 1 if left_out == "kdim" else draw(st.sampled_from([None, E])),
        "vdim": E + 1 if left_out == "vdim" else draw(st.sampled_from([None, E])),
        "batch_first": draw(st.booleans()),
    })
    if left_out and left_out not in values:
        values[left_out] = E + 1 if left_out in ("kdim", "vdim") else True
    args, kwargs = call_form(draw, tnn.MultiheadAttention, values)
    L, S = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    same_width = all(values.get(d) in (None, E) for d in ("kdim", "vdim"))
    self_attention = L == S and same_width and draw(st.booleans())
    n = draw(st.sampled_from([1, 1, 2, 3]))
    bf = values.get("batch_first", False)
    shape = (L, E) if axis == "unbatched" else ((n, L, E) if bf else (L, n, E))
    is_causal = L == S and draw(st.booleans())
    extra = {
        "L": L, "S": S, "self_attention": self_attention,
        "key_padding_mask": draw(st.sampled_from([None, "bool", "float"])),
        "attn_mask": draw(st.sampled_from(["bool", "float"] if is_causal
                                          else [None, "bool", "float"])),
        "attn_mask_3d": not is_causal and draw(st.booleans()),
        "is_causal": is_causal, "need_weights": draw(st.booleans()),
        "average_attn_weights": draw(st.booleans()),
    }
    common = draw(_common(axis, shape, "MultiheadAttention"))
    return Case("MultiheadAttention", args, kwargs, shape, extra=extra, **common)


@st.composite
def recurrent_case(draw, name: str, axis: str) -> Case:
    n_in = draw(st.integers(1, 3))
    values = {"input_size": n_in, "hidden_size": draw(st.integers(1, 3))}
    optional = {"num_layers": draw(st.integers(1, 2)), "bias": draw(st.booleans()),
                "batch_first": draw(st.booleans()),
                "dropout": draw(st.sampled_from([0.0, 0.0, 0.5])),
                "bidirectional": draw(st.booleans())}
    if name == "RNN":
        optional["nonlinearity"] = draw(st.sampled_from(["tanh", "relu"]))
    if name == "LSTM":
        optional["proj_size"] = draw(st.sampled_from([0] * 5 + [1, 2]))  # ≥ hidden: refused
    _optional(draw, values, optional)
    args, kwargs = call_form(draw, TWINS[name], values)
    length = draw(st.integers(1, 3))
    n = draw(st.sampled_from([1, 1, 2, 3]))
    shape = ((length, n_in) if axis == "unbatched" else
             (n, length, n_in) if values.get("batch_first") else (length, n, n_in))
    return Case(name, args, kwargs, shape, extra={"hx": draw(st.booleans())},
                **draw(_common(axis, shape, name)))


def cases(name: str, axis: str = "core"):
    """The strategy of cases for one module along one axis."""
    if name in ("BatchNorm1d", "BatchNorm2d"):
        return batchnorm_case(name, axis)
    if name in ("RNN", "LSTM", "GRU"):
        return recurrent_case(name, axis)
    new = {"LayerNorm": layernorm_case, "Embedding": embedding_case,
           "AvgPool2d": avgpool2d_case, "AdaptiveAvgPool2d": adaptive_avgpool2d_case,
           "MultiheadAttention": attention_case}
    if name in new:
        return new[name](axis)
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
