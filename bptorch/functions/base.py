"""``BPFunction``: the one base class of every bptorch Function, and the plumbing that lets
one written-out backward serve eager mode, ``torch.func`` and ``torch.compile``.

A subclass is written once, as PyTorch's "extending autograd" notes recommend: ``forward``
(no ctx) + ``setup_context`` + ``backward``, and ``jvp`` for forward mode. ``apply`` then
runs it in one of three forms of the same class, chosen per call:

* **eager** (the common case): a twin in the combined ``forward(ctx, ...)`` form that
  calls ``forward`` then ``setup_context``. ``Function.apply`` in the ``setup_context``
  form binds every call's arguments with ``inspect.Signature.bind`` (~12 µs per layer,
  more than a batch-10 layer's arithmetic); the combined form skips it. Same backward,
  same jvp, same saved tensors.
* **under torch.func transforms** (vmap, grad, jvp, jacrev, jacfwd, and gradcheck's
  batched checks): the ``setup_context`` form, which functorch requires, with its jvp.
* **under torch.compile**: Dynamo does not run ``apply``; it traces the class itself and
  refuses any class that defines ``jvp`` ("Unsupported custom jvp", a graph break per
  layer). So the class keeps the default ``jvp`` and the written ``jvp`` lives on the two
  twins above: compiled code traces forward + backward with no break, and forward-mode AD
  keeps working in eager mode.

Each twin carries the class's ``__name__``, so ``grad_fn`` reads ``LinearFunctionBackward``.
"""
from __future__ import annotations

import inspect
from typing import Any

import torch
from torch.autograd import Function

_base_apply = torch._C._FunctionBase.__dict__["apply"]  # Function.apply, unbound
_functorch_active = torch._C._are_functorch_transforms_active


def _combined_form(cls: type, jvp: Any) -> type:
    """The eager twin: ``forward(ctx, *args)`` = ``cls.forward`` then ``cls.setup_context``."""
    fwd, setup = cls.forward, cls.setup_context
    params = list(inspect.signature(fwd).parameters.values())
    n_args = len(params)
    defaults = tuple(p.default for p in params if p.default is not p.empty)
    n_required = n_args - len(defaults)

    def forward(ctx: Any, *args: Any) -> Any:
        if len(args) < n_args:  # fill trailing defaults, as Function.apply's bind does
            args = args + defaults[len(args) - n_required:]
        output = fwd(*args)
        setup(ctx, args, output)
        return output

    namespace = {
        "forward": staticmethod(forward),
        "backward": staticmethod(cls.backward),
        "__module__": cls.__module__,
        "__qualname__": cls.__qualname__,
        "__doc__": cls.__doc__,
    }
    if jvp is not None:
        jvp_fn = jvp.__func__

        def jvp_all(ctx: Any, *tangents: Any) -> Any:  # one tangent per forward argument
            return jvp_fn(ctx, *tangents, *(None,) * (n_args - len(tangents)))

        namespace["jvp"] = staticmethod(jvp_all)
    return type(cls.__name__, (Function,), namespace)


class BPFunction(Function):
    """Base of every bptorch Function: write ``forward`` + ``setup_context`` + ``backward``
    (+ ``jvp``); ``apply`` picks the eager, torch.func or traced form (module docstring).

    Callers pass arguments positionally (no keywords); trailing defaults are filled in.
    """

    _twin = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("_twin"):
            return
        jvp = cls.__dict__.get("jvp")
        cls._eager = _combined_form(cls, jvp)
        # the torch.func form: cls itself with its jvp and Function's own apply
        cls._functorch = type(cls.__name__, (cls,), {
            "jvp": jvp if jvp is not None else Function.jvp, "_twin": True,
            "apply": _base_apply, "__module__": cls.__module__,
            "__qualname__": cls.__qualname__,
        })
        if jvp is not None:
            cls.jvp = Function.jvp  # what Dynamo sees: no custom jvp, no graph break
        # the setup_context form binds each call's arguments to forward's signature;
        # precomputed, inspect.signature becomes a read (~10 µs a call saved there)
        cls.forward.__signature__ = inspect.signature(cls.forward)

    @classmethod
    def apply(cls, *args: Any) -> Any:  # type: ignore[override]
        if _functorch_active():
            return cls._functorch.apply(*args)
        return cls._eager.apply(*args)
