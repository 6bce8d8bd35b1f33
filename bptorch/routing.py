"""A converted model's own forward runs in bptorch, and a tool that says what does not.

:func:`bptorch.convert.from_torch_nn` replaces each torch.nn layer by its twin. A model's
``forward`` also calls functions itself: ``F.relu(x)``, ``torch.flatten(x, 1)``,
``F.linear(x, self.proj.weight)`` (swin), ``x * scale`` (squeeze-and-excitation),
``torch.matmul`` and ``softmax``. Without help those build torch's autograd nodes, and
the gradient that flows through them is torch's, silently.

:class:`RouteMode` is a ``torch.overrides.TorchFunctionMode``: while it is active, each
call of a torch function that ``bptorch.functional`` offers under the same name (and
signature) is answered by bptorch's, so its backward is bptorch's written-out one.
``from_torch_nn`` installs it around the converted model's forward (:func:`install`).
A call is routed only where it matters for a gradient: grad mode on and a floating input
that requires grad. Inside bptorch's Functions grad mode is off, so their own torch
calls pass through.

:func:`coverage` runs one forward and backward and sorts every node of the autograd
graph into three kinds:

* **bptorch**: a bptorch Function, its backward written out;
* **moves**: a torch node whose backward only moves, copies or sums numbers (a view,
  ``cat``, ``+``, ``sum`` and ``mean``, a dtype cast): no multiplication by data, the chain rule's
  bookkeeping (the sum over paths at a fork is the engine's, as in the seed's BP2 over
  several layers l+1);
* **torch**: a torch node that computes (``MulBackward0``, ``AddmmBackward0``, ...): its
  gradient is torch's.

and reports the share of parameters whose whole gradient comes from bptorch Functions
(through "moves" nodes only).
"""
from __future__ import annotations

import functools
import inspect
import sys
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as TF
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from . import functional as BF
from .functions.indexing import positions

__all__ = ["Coverage", "RouteMode", "coverage", "install", "installed", "other_hooks",
           "routes", "tensors_in", "uninstall", "unroutable_calls"]


# ---------------------------------------------------------------- the routing table
def _flatten(input: Tensor, start_dim: int = 0, end_dim: int = -1) -> Tensor:
    """torch.flatten's defaults (start_dim=0), bptorch's Flatten."""
    return BF.flatten(input, start_dim, end_dim)


def _rdiv(input: Tensor, other: Any) -> Tensor:
    """``other / input``: Tensor.__rdiv__ (``2 / a``) hands the tensor first."""
    return BF.div(other, input)


def _rpow(input: Tensor, other: Any) -> Tensor:
    """Tensor.__rpow__(x, c) is ``c ** x``: bptorch's pow with the number as the base."""
    return BF.pow(other, input)


def _roi_align_op(input: Tensor, rois: Tensor, spatial_scale: float, pooled_height: int,
                  pooled_width: int, sampling_ratio: int, aligned: bool) -> Tensor:
    """torch.ops.torchvision.roi_align's arguments, bptorch's roi_align."""
    return BF.roi_align(input, rois, (pooled_height, pooled_width), spatial_scale,
                        sampling_ratio, aligned)


def _two_tensors(name: str, args: tuple, kwargs: dict) -> tuple[Tensor, Tensor]:
    """torch.max/min's elementwise form (a, b), or NotImplementedError for the others
    (a reduction, with or without dim: a routed call falls back to torch's)."""
    other = args[1] if len(args) > 1 else kwargs.get("other")
    if len(args) + len(kwargs) != 2 or not isinstance(other, Tensor):
        raise NotImplementedError(f"{name}: bptorch routes the elementwise form "
                                  f"{name}(input, other) only")
    return args[0], other


def _max(*args: Any, **kwargs: Any) -> Tensor:
    """torch.max(a, b): bptorch's maximum (its other forms: NotImplementedError)."""
    return BF.maximum(*_two_tensors("max", args, kwargs))


def _min(*args: Any, **kwargs: Any) -> Tensor:
    """torch.min(a, b): bptorch's minimum (its other forms: NotImplementedError)."""
    return BF.minimum(*_two_tensors("min", args, kwargs))


# torch names that are the same operation as bptorch.functional.<key>, beside F.<key>;
# flatten differs in its default start_dim (torch 0, nn.Flatten 1), hence a wrapper
_ALIASES: dict[str, tuple[Any, ...]] = {
    "relu": (torch.relu, Tensor.relu),
    "sigmoid": (torch.sigmoid, Tensor.sigmoid),
    "tanh": (torch.tanh, Tensor.tanh),
    "softmax": (torch.softmax, Tensor.softmax),
    "log_softmax": (torch.log_softmax, Tensor.log_softmax),
    "matmul": (torch.matmul, Tensor.matmul),
    "bmm": (torch.bmm, Tensor.bmm),
    "mul": (torch.mul, Tensor.mul),
    "conv1d": (torch.conv1d,),
    "conv2d": (torch.conv2d,),
    "conv3d": (torch.conv3d,),
    "selu": (torch.selu,),
    "prelu": (torch.prelu,),
    "hardswish": (),
    "scaled_dot_product_attention": (),
    # elementwise arithmetic: `a / b` and `a / 2` reach the mode as Tensor.div, `a ** 2` as
    # Tensor.__pow__; `2 / a` as Tensor.__rdiv__ (handled by _rdiv, the tensor first)
    "div": (torch.div, Tensor.div, torch.divide, Tensor.divide, torch.true_divide,
            Tensor.true_divide, Tensor.__truediv__),
    "exp": (torch.exp, Tensor.exp),
    "log": (torch.log, Tensor.log),
    "sqrt": (torch.sqrt, Tensor.sqrt),
    "rsqrt": (torch.rsqrt, Tensor.rsqrt),
    "pow": (torch.pow, Tensor.pow, Tensor.__pow__),
    "abs": (torch.abs, Tensor.abs, Tensor.__abs__),
    "clamp": (torch.clamp, Tensor.clamp, torch.clip, Tensor.clip),
    "clamp_min": (torch.clamp_min, Tensor.clamp_min),
    "clamp_max": (torch.clamp_max, Tensor.clamp_max),
    "einsum": (torch.einsum,),
    # the larger and the smaller of two tensors (generalized_box_iou_loss's box corners);
    # torch.max/min(a, b) reach them through _max and _min below
    "maximum": (torch.maximum, Tensor.maximum),
    "minimum": (torch.minimum, Tensor.minimum),
    # vector norms (F.normalize matches by name); torch.norm's "fro" is the 2-norm
    "vector_norm": (torch.linalg.vector_norm,),
    "norm": (torch.norm, Tensor.norm),
    "put": (torch.put, Tensor.put),
    "put_": (Tensor.put_,),
}


def routes() -> dict[Callable, Callable]:
    """{torch function: bptorch function}: every name ``bptorch.functional`` shares with
    ``torch.nn.functional`` (plus torch's aliases of the same operations), built on first
    use from what bptorch has now (again once torchvision is loaded, for its ops)."""
    return _routes("torchvision" in sys.modules)


@functools.cache
def _routes(torchvision_loaded: bool) -> dict[Callable, Callable]:
    table: dict[Callable, Callable] = {}
    for name in dir(BF):
        ours = getattr(BF, name)
        if name.startswith("_") or not callable(ours) or isinstance(ours, type):
            continue
        theirs = getattr(TF, name, None)
        if callable(theirs) and theirs is not ours and not isinstance(theirs, type):
            table[theirs] = ours
        for alias in _ALIASES.get(name, ()):
            table[alias] = ours
    if hasattr(BF, "flatten"):
        table[torch.flatten] = table[Tensor.flatten] = _flatten
    if hasattr(BF, "div"):
        table[Tensor.__rdiv__] = table[Tensor.__rtruediv__] = _rdiv
    if hasattr(BF, "pow"):
        table[Tensor.__rpow__] = _rpow
    if hasattr(BF, "maximum"):
        table[torch.max] = table[Tensor.max] = _max
        table[torch.min] = table[Tensor.min] = _min
    if hasattr(BF, "roi_align") and torchvision_loaded:
        # torchvision.ops.roi_align calls its op, torch.ops.torchvision.roi_align, which
        # reaches the mode; the op's own argument order (no torchvision import here)
        try:
            table[torch.ops.torchvision.roi_align] = _roi_align_op
        except (AttributeError, RuntimeError):  # torchvision without its C++ ops
            pass
    if hasattr(BF, "put_"):
        table.update(_WRITES)  # x[idx] = v and in-place ops on views (below)
    return table


# ---------------------------------------------------------------- in-place writes
# ``x[1:3] = v``, ``x[:, 1:] += r`` and ``x[i].zero_()`` write into a view of a tensor (its
# base); torch records that as CopySlices, a node that wraps the view's op and applies it
# to a slice of the base's gradient: torch's, whatever the op. Routed, the view's new values
# are computed out of place (by bptorch's Functions where that computes: mul_, div_), then
# written into the base by bptorch's ``put_`` at the view's flat positions in it
# (functions/indexing.py). The base's grad_fn is then PutFunctionBackward (δ with the
# written positions zeroed to the base's old value, δ at them to the new values), and the
# view's, which autograd regenerates from the base's, a view of it (a move).
def _write(view: Tensor, new: Any, index: Tensor | None = None) -> None:
    """Write ``new`` (a tensor broadcast to ``view``'s shape, or a number) into ``view``'s
    place, through its base; ``index``: the flat positions in the base, if known."""
    if torch._C._are_functorch_transforms_active():
        raise NotImplementedError("in-place write under torch.func (torch's)")
    base = view if view._base is None else view._base
    if view.dtype != base.dtype:
        raise NotImplementedError("in-place write into a view of another dtype")
    if view is not base and view.requires_grad and not base.requires_grad:
        # a view a custom Function returned of a tensor it made (its base has no history):
        # writing through that base would cut the view's gradient; torch's own rules apply
        raise NotImplementedError("in-place write into a custom Function's view")
    if base.is_leaf and base.requires_grad:
        raise NotImplementedError("in-place write into a leaf that requires grad (torch's "
                                  "error)")
    if index is None:
        index = positions(base, view)
    shape = index.shape
    if isinstance(new, Tensor):
        if new.dtype != base.dtype:
            new = new.to(base.dtype)
        while new.dim() > len(shape) and new.shape[0] == 1:  # torch drops leading 1s too
            new = new[0]
        if new.untyped_storage().data_ptr() == base.untyped_storage().data_ptr():
            new = new.clone()  # the values to write read the memory being written
        new = new.expand(shape)
    else:
        new = torch.full(shape, new, dtype=base.dtype, device=base.device)
    BF.put_(base, index, new)


def _same_view(a: Any, b: Tensor) -> bool:
    """``a`` is a tensor that lies in memory exactly as ``b`` (writing it onto b: no-op)."""
    return (isinstance(a, Tensor) and a.untyped_storage().data_ptr()
            == b.untyped_storage().data_ptr() and a.storage_offset() == b.storage_offset()
            and a.size() == b.size() and a.stride() == b.stride() and a.dtype == b.dtype)


def _setitem(self: Tensor, key: Any, value: Any) -> None:
    """``self[key] = value``: the positions ``key`` picks (basic or advanced indexing,
    read off the positions of ``self`` in its base) get ``value``."""
    if torch._C._are_functorch_transforms_active():
        raise NotImplementedError("in-place write under torch.func (torch's)")
    if isinstance(value, Tensor) and value._base is not None and _same_view(value, self[key]):
        return  # x[i] += v ends with x[i] = (that same view): already written
    base = self if self._base is None else self._base
    _write(self, value, positions(base, self)[key])


def _inplace(compute: Callable[..., Any], views_only: bool = False) -> Callable[..., Tensor]:
    """An in-place op ``self.op_(...)``, routed: its new value computed by ``compute`` out of
    place, then written into ``self``'s place. ``views_only``: on a tensor that is no view
    torch's own in-place node only moves numbers (``add_``), so it stays torch's."""
    def op_(self: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        if views_only and self._base is None:
            raise _TorchIsFine
        _write(self, compute(self, *args, **kwargs))
        return self
    return op_


class _TorchIsFine(NotImplementedError):
    """Raised by a route whose call torch answers with a node that only moves numbers:
    the mode answers it with torch's, not counted as a fallback."""


def _added(self: Tensor, other: Any, *, alpha: Any = 1) -> Tensor:
    if alpha != 1:  # α·other is bptorch's product; + only moves numbers
        other = BF.mul(other, alpha) if isinstance(other, Tensor) else other * alpha
    return torch.add(self, other)


def _subtracted(self: Tensor, other: Any, *, alpha: Any = 1) -> Tensor:
    if alpha != 1:
        other = BF.mul(other, alpha) if isinstance(other, Tensor) else other * alpha
    return torch.sub(self, other)  # − only moves numbers (a sign flipped)


def _divided(self: Tensor, other: Any, *, rounding_mode: str | None = None) -> Tensor:
    return BF.div(self.clone(), other, rounding_mode=rounding_mode)  # clone: self is written


_WRITES: dict[Callable, Callable] = {
    Tensor.__setitem__: _setitem,
    Tensor.zero_: _inplace(lambda self: 0),
    Tensor.fill_: _inplace(lambda self, value: value),
    Tensor.copy_: _inplace(lambda self, src, non_blocking=False: src),
    Tensor.add_: _inplace(_added, views_only=True),
    Tensor.sub_: _inplace(_subtracted, views_only=True),
    Tensor.mul_: _inplace(lambda self, other: BF.mul(self.clone(), other)),
    Tensor.div_: _inplace(_divided),
}


# torch ops whose backward only moves, copies or sums numbers: views, joins, splits,
# copies, addition and sums, dtype casts (matched on the autograd node's name)
_MOVES = (
    "View", "Reshape", "UnsafeView", "Permute", "Transpose", "T", "Expand", "Squeeze",
    "Unsqueeze", "Select", "Slice", "Cat", "Stack", "Split", "SplitWithSizes", "Unbind",
    "Clone", "Add", "Sum", "Mean", "ReshapeAlias", "AsStrided", "Narrow", "Index", "Flip", "Roll", "Repeat",
    "ConstantPadNd", "ToCopy", "Alias", "Chunk", "Unfold", "Diagonal", "Movedim",
    "TransposeCopy", "ExpandCopy", "PermuteCopy", "IndexSelect", "Gather", "Take",
    "UnsafeSplit", "UnsafeSplitWithSizes", "SplitWithSizesCopy", "Where", "MaskedFill",
    # a − b, 1 − a and −a: + with a sign flipped (their backward is δ and −δ, as + gives
    # δ twice); x[idx] = v writes values in place of others (δ[idx] to v, 0 there to x)
    "Sub", "Rsub", "Neg", "IndexPut",
)
_MOVE_FUNCTIONS = {  # the same, as function names (for unroutable_calls)
    "cat", "stack", "split", "chunk", "unbind", "reshape", "view", "permute", "transpose",
    "squeeze", "unsqueeze", "flatten", "narrow", "select", "clone", "add", "sum", "pad",
    "movedim", "expand", "contiguous", "size", "mean", "zeros", "ones", "empty", "tensor", "arange",
    "full", "zeros_like", "ones_like", "empty_like", "is_tensor", "numel", "cumsum",
    "sub", "rsub", "neg", "negative", "subtract",
}


def _node_kind(node: Any) -> tuple[str, str]:
    """("bptorch" | "moves" | "torch", a name) for an autograd node."""
    cls = getattr(type(node), "_forward_cls", None)
    if cls is not None and cls.__module__.startswith("bptorch."):
        return "bptorch", cls.__name__
    name = type(node).__name__
    stem = name.rstrip("0123456789")
    stem = stem[:-len("Backward")] if stem.endswith("Backward") else stem
    return ("moves" if stem in _MOVES else "torch"), name


# ---------------------------------------------------------------- the mode
def _wants_grad(args: tuple, kwargs: dict) -> bool:
    """Some floating tensor argument requires grad (grad mode being on)."""
    def any_grad(x: Any) -> bool:
        if isinstance(x, Tensor):
            return x.requires_grad
        if isinstance(x, (list, tuple)):
            return any(any_grad(y) for y in x)
        return False
    return torch.is_grad_enabled() and (any_grad(args) or any_grad(tuple(kwargs.values())))


class RouteMode(TorchFunctionMode):
    """Answer each torch call that bptorch.functional has with bptorch's (see module doc).

    ``fallbacks`` counts the routable calls that bptorch declined (an option it lacks:
    NotImplementedError or TypeError), answered by torch instead; :func:`coverage` shows
    them as torch nodes.
    """

    def __init__(self) -> None:
        super().__init__()
        self.routes = routes()
        self.fallbacks: Counter[str] = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        ours = self.routes.get(func)
        if ours is not None and _wants_grad(args, kwargs):
            try:
                return ours(*args, **kwargs)  # this mode is off while this runs
            except _TorchIsFine:
                pass
            except (NotImplementedError, TypeError):
                self.fallbacks[getattr(func, "__name__", str(func))] += 1
        return func(*args, **kwargs)


# ---------------------------------------------------------------- installing it
class _Enter:
    """Forward pre-hook: push a RouteMode (a class, so the model still pickles)."""

    def __call__(self, module: nn.Module, args: tuple) -> None:
        mode = RouteMode()
        mode.__enter__()
        module.__dict__.setdefault("_bptorch_modes", []).append(mode)


class _Exit:
    """Forward hook (always called, an exception too): pop the RouteMode; with
    ``warn=True`` (``from_torch_nn(strict=False)``), on the first forward that builds a
    graph, warn about every torch node that computes and every parameter whose gradient is
    not wholly bptorch's."""

    def __init__(self, warn: bool = False) -> None:
        self.warn = warn

    def __call__(self, module: nn.Module, args: tuple, output: Any) -> None:
        modes = module.__dict__.get("_bptorch_modes")
        if modes:
            mode = modes.pop()
            mode.__exit__(None, None, None)
            module.__dict__["_bptorch_fallbacks"] = mode.fallbacks  # for coverage()
        if self.warn and output is not None:
            found = _walk(module, [t for t in tensors_in(output) if t.grad_fn is not None])
            if found.torch or found.params_torch:
                self.warn = False
                warnings.warn("from_torch_nn(strict=False): part of this model's backward is "
                              f"torch's:\n{found.report()}", stacklevel=2)


def install(model: nn.Module, warn: bool = False) -> nn.Module:
    """Run ``model``'s forward under :class:`RouteMode` from now on (forward hooks on the
    root; ``uninstall`` removes them). Returns the model."""
    uninstall(model)
    model.register_forward_pre_hook(_Enter())
    model.register_forward_hook(_Exit(warn), always_call=True)
    return model


def installed(model: nn.Module) -> bool:
    """Whether :func:`install` put its hooks on ``model``."""
    return any(isinstance(h, _Enter) for h in model._forward_pre_hooks.values())


def uninstall(model: nn.Module) -> nn.Module:
    """Remove what :func:`install` added. The hook dicts are replaced, not changed in place,
    so a shallow copy of a routed model (``to_torch_nn``) leaves the original routed."""
    for attr in ("_forward_pre_hooks", "_forward_hooks"):
        hooks = getattr(model, attr)
        mine = [k for k, h in hooks.items() if isinstance(h, (_Enter, _Exit))]
        if mine:
            setattr(model, attr, type(hooks)((k, h) for k, h in hooks.items() if k not in mine))
            model._forward_hooks_always_called = type(model._forward_hooks_always_called)(
                (k, v) for k, v in model._forward_hooks_always_called.items() if k not in mine)
    model.__dict__.pop("_bptorch_modes", None)
    return model


def other_hooks(module: nn.Module) -> bool:
    """Hooks on ``module`` other than :func:`install`'s."""
    mine = (_Enter, _Exit)
    return (any(not isinstance(h, mine) for h in module._forward_pre_hooks.values())
            or any(not isinstance(h, mine) for h in module._forward_hooks.values())
            or bool(module._backward_hooks))


# names a forward's code uses that are torch functions but compute nothing to differentiate
_NOT_OPS = {"is_grad_enabled", "no_grad", "get_default_dtype", "dim", "ndim", "shape", "type",
            "to", "float", "double", "half", "detach", "requires_grad_", "item", "tolist",
            "device", "dtype", "numel", "stride", "is_floating_point", "new_zeros",
            "new_ones", "new_empty", "new_full", "new_tensor", "fill_", "zero_", "copy_"}


def unroutable_calls(fn: Callable) -> list[str]:
    """The torch functions ``fn``'s code names that compute and that bptorch does not
    route (a static look at the names its code uses, nested functions included)."""
    try:
        code = inspect.unwrap(fn).__code__
    except AttributeError:
        return []
    names: set[str] = set()
    stack = [code]
    while stack:
        c = stack.pop()
        names.update(c.co_names)
        stack.extend(k for k in c.co_consts if inspect.iscode(k))
    table = routes()
    found = []
    for name in sorted(names - _MOVE_FUNCTIONS):
        if name.startswith("_") or not name[0].islower() or name in _NOT_OPS:
            continue
        spaces = [(label, getattr(space, name, None))
                  for space, label in ((TF, "F"), (torch, "torch"), (Tensor, "Tensor"))]
        spaces = [(label, f) for label, f in spaces if callable(f) and not isinstance(f, type)]
        if spaces and not any(f in table for _, f in spaces):
            found.append(f"{spaces[0][0]}.{name}")  # a name no space routes
    return found


# ---------------------------------------------------------------- coverage
@dataclass
class Coverage:
    """What one forward and backward computed in bptorch and what in torch."""

    bptorch: Counter = field(default_factory=Counter)  # bptorch Function name -> count
    moves: Counter = field(default_factory=Counter)  # torch nodes that only move numbers
    torch: Counter = field(default_factory=Counter)  # torch nodes that compute
    params_bptorch: list[str] = field(default_factory=list)
    params_torch: list[str] = field(default_factory=list)  # part of the gradient is torch's
    params_unused: list[str] = field(default_factory=list)  # no gradient at all
    fallbacks: Counter = field(default_factory=Counter)
    output: Any = field(default=None, repr=False)  # what the model returned

    @property
    def complete(self) -> bool:
        """No torch node computes, and every parameter's gradient is bptorch's."""
        return not self.torch and not self.params_torch

    @property
    def share(self) -> float:
        """Share of the parameters reached whose whole gradient is bptorch's."""
        n = len(self.params_bptorch) + len(self.params_torch)
        return len(self.params_bptorch) / n if n else 1.0

    def report(self) -> str:
        def block(title: str, c: Counter) -> list[str]:
            rows = [f"  {title}: {sum(c.values())}"]
            rows += [f"    {k:<32} {v:>4}" for k, v in sorted(c.items(), key=lambda kv: -kv[1])]
            return rows
        lines = block("bptorch Functions (backward written out)", self.bptorch)
        lines += block("torch nodes that only move or sum numbers", self.moves)
        lines += block("torch nodes that compute (torch's gradient)", self.torch)
        if self.fallbacks:
            lines += block("routable calls bptorch declined (answered by torch)",
                           self.fallbacks)
        n = len(self.params_bptorch) + len(self.params_torch)
        lines.append(f"  parameters whose whole gradient is bptorch's: "
                     f"{len(self.params_bptorch)}/{n} ({100 * self.share:.1f}%)")
        if self.params_torch:
            lines.append("    not: " + ", ".join(self.params_torch))
        if self.params_unused:
            lines.append("    no gradient: " + ", ".join(self.params_unused))
        return "\n".join(lines)

    def __str__(self) -> str:
        return "bptorch.coverage:\n" + self.report()


def tensors_in(x: Any) -> list[Tensor]:
    """Every tensor in a nest of lists, tuples and dicts, in one fixed order: a dict's
    values by sorted key, so two models' outputs (and their upstream gradients, as
    :func:`coverage`'s ``grad_outputs``) pair up whatever order each dict was built in."""
    if isinstance(x, Tensor):
        return [x]
    if isinstance(x, dict):
        return [t for k in sorted(x, key=str) for t in tensors_in(x[k])]
    if isinstance(x, (list, tuple)):
        return [t for v in x for t in tensors_in(v)]
    return []


def _walk(model: nn.Module, roots: list[Tensor]) -> Coverage:
    """Sort the graph behind ``roots`` (see the module doc) and the model's parameters."""
    out = Coverage()
    parents: dict[Any, list[Any]] = {}
    seen: set[Any] = set()
    stack = [t.grad_fn for t in roots if t.grad_fn is not None]
    for node in stack:
        parents.setdefault(node, [])
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        if type(node).__name__ != "AccumulateGrad":
            kind, name = _node_kind(node)
            getattr(out, kind)[name] += 1
        for child, _ in node.next_functions:
            if child is not None:
                parents.setdefault(child, []).append(node)
                stack.append(child)
    leaf = {id(n.variable): n for n in seen if type(n).__name__ == "AccumulateGrad"}

    @functools.cache
    def whole(node: Any) -> bool:  # every path from node to the roots: bptorch or moves
        kind, _ = _node_kind(node)
        if kind == "bptorch":
            return True
        if kind == "torch":
            return False
        return all(whole(p) for p in parents.get(node, ()))

    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        acc = leaf.get(id(p))
        if acc is None:
            out.params_unused.append(name)
        elif all(whole(q) for q in parents[acc]):
            out.params_bptorch.append(name)
        else:
            out.params_torch.append(name)
    return out


def coverage(model: nn.Module, *inputs: Any, loss_fn: Callable | None = None,
             grad_outputs: list[Tensor] | None = None, verbose: bool = True,
             **kwargs: Any) -> Coverage:
    """Run one forward and backward of ``model(*inputs, **kwargs)`` and say, per operation,
    whether its gradient came from a bptorch Function or from torch (module doc).

    The backward starts from ``loss_fn(output)`` if given, else from every floating output
    that has a graph, with ``grad_outputs`` (one per such output, in the order of
    :func:`tensors_in`) or a random
    upstream gradient (no extra node either way). Prints the report unless
    ``verbose=False``; returns a :class:`Coverage` (``.complete``, ``.share``, the counts).
    Parameters' ``.grad`` are left as the backward leaves them.
    """
    model.__dict__.pop("_bptorch_fallbacks", None)
    with torch.enable_grad():
        output = model(*inputs, **kwargs)
        roots = [loss_fn(output)] if loss_fn is not None else [
            t for t in tensors_in(output) if t.grad_fn is not None and t.is_floating_point()]
        if not roots:
            raise ValueError("coverage: the model's output has no autograd graph (does any "
                             "parameter or input require grad?)")
        found = _walk(model, roots)
        found.fallbacks = model.__dict__.pop("_bptorch_fallbacks", Counter())
        found.output = output
        if grad_outputs is None or loss_fn is not None:
            grad_outputs = [torch.randn_like(r) for r in roots]
        torch.autograd.backward(roots, list(grad_outputs))
    if verbose:
        print(found)
    return found
