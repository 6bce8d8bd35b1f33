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

The rest of the plumbing every Function shares lives here too, once:

* **autocast** (:meth:`BPFunction.autocast_policy`, :func:`policy_dtype`): under ``torch.autocast`` a Function casts its
  floating inputs as torch's own op lists say for its op on that device, runs forward
  and backward with autocast off (its ops see exactly the dtypes the policy chose), and
  gives each gradient back in its input's own dtype (float32 parameters get float32
  grads), as torch's casts do.
* **needs_input_grad**: ``backward`` unpacks ``ctx.saved_tensors``, then hands
  ``ctx.needs_input_grad`` (sliced to the differentiable inputs) to the family's pure
  ``*_bwd`` function as ``need``; that function computes a gradient only where
  ``need[i]`` and returns None elsewhere (``setup_context`` may read it too, to save less).
* **the kernel switch** (:func:`use_kernel`, the choice behind ``bptorch.kernels``): whether
  a Function's forward and backward run the reference (torch ops) or its family's Triton
  kernels; ``setup_context`` asks once per call and keeps the answer on ``ctx``, so the
  backward runs the forward's choice.
* **the diagnostics hook** (:data:`DELTA_HOOKS`): a layer that computes δ^l = ∂C/∂a ⊙ σ'(z)
  hands it to every callback in the list; ``bptorch.diagnostics`` registers one while it
  records. ``functions/`` imports nothing above itself.
* **the per-example hook** (:data:`PER_EXAMPLE`): a layer whose backward forms BP3/BP4
  (a sum over examples of δ^l and a^{l−1}) hands δ, a^{l−1} and its gradients to the
  collector in the list; ``bptorch.extensions.collect`` and ``bptorch.privacy`` put one
  there while they run. Empty otherwise: the backward pays one list read.
"""
from __future__ import annotations

import functools
import importlib.util
import inspect
import os
from typing import Any, Callable

import torch
from torch import Tensor
from torch.autograd import Function

# the argument types of the 2-d layers, defined once: a (height, width) pair, a conv's
# padding (a pair or "valid"/"same"), and torch's int-or-pair arguments
Pair = tuple[int, int]
Padding = Pair | str
IntPair = int | Pair

_base_apply = torch._C._FunctionBase.__dict__["apply"]  # Function.apply, unbound
_functorch_active = torch._C._are_functorch_transforms_active


def _combined_form(cls: type, jvp: Any) -> type:
    """The eager twin: ``forward(ctx, *args)`` = ``cls.forward`` then ``cls.setup_context``."""
    # the unwrapped forward and setup_context: autocast is handled here, casting once
    fwd, setup = inspect.unwrap(cls.forward), inspect.unwrap(cls.setup_context)
    params = list(inspect.signature(fwd).parameters.values())
    n_args = len(params)
    defaults = tuple(p.default for p in params if p.default is not p.empty)
    n_required = n_args - len(defaults)

    def forward(ctx: Any, *args: Any) -> Any:
        if len(args) < n_args:  # fill trailing defaults, as Function.apply's bind does
            args = args + defaults[len(args) - n_required:]
        t = _first_tensor(args)
        if t is None or not autocast_on(t.device.type):
            ctx.autocast_device = None
            output = fwd(*args)
            setup(ctx, args, output)
            return output
        device = ctx.autocast_device = t.device.type
        ctx.input_dtypes = tuple(a.dtype if isinstance(a, Tensor) else None for a in args)
        dtype = policy_dtype(cls.autocast_policy(device, args), device)
        if dtype is not None:
            args = _cast_args(dtype, args)
        with torch.autocast(device, enabled=False):
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

# ---------------------------------------------------------------- the kernel switch
# "reference": torch ops everywhere; "triton": the Triton kernels (CUDA tensors, or CPU
# tensors under TRITON_INTERPRET=1, Triton's interpreter); "auto": Triton on CUDA tensors
# where triton is importable, the reference elsewhere. One process-wide choice, not a
# thread-local one: autograd runs a CUDA backward on a thread of its own.
KERNEL_NAMES = ("reference", "triton", "auto")
# the starting choice: $BPTORCH_KERNELS if set (benchmarks/cuda.sh times both ways), else auto
_KERNEL = {"choice": os.environ.get("BPTORCH_KERNELS") or "auto"}
# asked once each (a dict read after that, which Dynamo traces; functools.cache it breaks on)
_TRITON: dict[str, bool] = {}
# kernel name -> launches so far: the tests count them (use("reference") launches none)
KERNEL_LAUNCHES: dict[str, int] = {}


def kernel_choice() -> str:
    """The current choice: one of :data:`KERNEL_NAMES`."""
    return _KERNEL["choice"]


def set_kernel_choice(name: str) -> str:
    """Make ``name`` the choice; returns the previous one. Unknown names raise ValueError."""
    if name not in KERNEL_NAMES:
        raise ValueError(f"bptorch.kernels: unknown kernel choice {name!r}; expected one of "
                         + ", ".join(repr(n) for n in KERNEL_NAMES))
    triton_available()  # asked here, outside any compiled region
    previous, _KERNEL["choice"] = _KERNEL["choice"], name
    return previous


def triton_available() -> bool:
    """Whether triton is importable (found, not imported: importing it costs a second)."""
    has = _TRITON.get("available")
    if has is None:
        has = _TRITON["available"] = importlib.util.find_spec("triton") is not None
        _TRITON["interpret"] = os.environ.get("TRITON_INTERPRET") == "1"
    return has


def use_kernel(t: Tensor) -> bool:
    """Whether a call on ``t`` takes the Triton kernels under the current choice.

    Never under torch.func transforms (a kernel cannot run on batched tensors) and never
    under "reference". "triton" on a tensor Triton cannot run on raises RuntimeError.
    """
    choice = _KERNEL["choice"]
    if choice == "reference" or _functorch_active():
        return False
    if choice not in KERNEL_NAMES:  # a bad $BPTORCH_KERNELS
        set_kernel_choice(choice)
    if choice == "auto":
        return t.is_cuda and triton_available()
    if triton_available() and (t.is_cuda or _TRITON["interpret"]):
        return True
    raise RuntimeError(
        f"bptorch.kernels: 'triton' runs on CUDA tensors, or on CPU tensors under "
        f"TRITON_INTERPRET=1 (set before triton is imported); got a {t.device.type} tensor"
        + ("" if triton_available() else " and triton is not installed"))


def count_launch(name: str) -> None:
    """Record one launch of kernel ``name`` in :data:`KERNEL_LAUNCHES`."""
    KERNEL_LAUNCHES[name] = KERNEL_LAUNCHES.get(name, 0) + 1


def built(builder: Callable[[], Any]) -> bool:
    """Run ``builder`` (a family's kernel builder, which imports triton once); True.

    Dynamo cannot trace an import, so it runs this call as it is and takes its result
    as a constant: a compiled region builds the kernels on first use with no graph break.
    """
    builder()
    return True


# what torch.compiler.assume_constant_result(built) does, without importing torch._dynamo
# (and triton with it: seconds) at import
built._dynamo_marked_constant = True  # type: ignore[attr-defined]


def kernel_family(build: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
    """``kernels()`` for one family of Triton kernels: the dict of custom ops ``build``
    returns (it imports triton and defines the @triton.jit kernels), built by the first
    call and kept. Each family's file ends with ``_triton_kernels = kernel_family(build)``,
    so importing it imports no triton; a compiled region may make the first call (the
    build runs through :func:`built`, a constant to Dynamo: no graph break)."""
    cache: dict[str, Any] = {}

    def fill() -> dict[str, Any]:
        if not cache:
            cache.update(build())
        return cache

    def kernels() -> dict[str, Any]:
        built(fill)
        return cache

    return kernels


def kernel_op(name: str, fake: Callable[..., Any], mutates_args: tuple = ()) -> Callable:
    """A decorator that registers a kernel launcher as the custom op ``bptorch::name``, so
    that torch.compile sees one op per launch and no graph break.

    On CUDA: ``torch.library.triton_op``, whose body launches through ``wrap_triton``
    (Inductor sees the Triton kernel itself). Under Triton's interpreter (CPU tensors):
    ``torch.library.custom_op`` with ``fake`` as its fake, an opaque op, since the
    interpreter cannot run a kernel on the fake tensors triton_op traces with.
    """
    def register(fn: Callable) -> Callable:
        if _TRITON.get("interpret", os.environ.get("TRITON_INTERPRET") == "1"):
            op = torch.library.custom_op(f"bptorch::{name}", fn, mutates_args=mutates_args)
            op.register_fake(fake)
            return op
        return torch.library.triton_op(f"bptorch::{name}", fn, mutates_args=mutates_args)

    return register


# ---------------------------------------------------------------- diagnostics hook
# Callbacks ``hook(name, activation, delta, saved, a_prev)`` called by every backward that
# computes δ^l = ∂C/∂a^l ⊙ σ'(z^l) (Dense and the activations). Empty unless a recorder of
# ``bptorch.diagnostics`` is active: the backward then pays one list read.
DELTA_HOOKS: list[Callable[..., None]] = []


def report_delta(name: str | None, activation: Any, delta: Tensor, saved: Tensor | None,
                 a_prev: Tensor | None = None) -> None:
    """Hand one layer's δ^l (and the tensor σ' came from, and a^{l−1}) to every hook."""
    for hook in DELTA_HOOKS:
        hook(name, activation, delta, saved, a_prev=a_prev)


# ---------------------------------------------------------------- per-example hook
# The collector of ``bptorch.extensions`` (or ``bptorch.privacy``) while one is active, else
# empty: ``collector(kind, ctx, grads, delta, a_prev)`` is called by each backward after it
# forms BP3/BP4, with the layer's kind ("linear", "conv2d", ...), its ctx (whose
# ``next_functions`` name the parameters), the gradient tuple it is about to return, δ and
# a^{l−1}. It returns the tuple to return: the collected parameters' sums taken out of
# it (the collector accounts for them). Outside a collection the backward pays one list read.
PER_EXAMPLE: list[Callable[..., tuple]] = []


def per_example(kind: str, ctx: Any, grads: tuple, delta: Tensor | None,
                a_prev: Tensor | None) -> tuple:
    """Hand one layer call's δ and a^{l−1} to the active collector; returns ``grads``
    as the backward should return them."""
    return PER_EXAMPLE[-1](kind, ctx, grads, delta, a_prev)


def per_example_need(kind: str, ctx: Any, need: tuple) -> tuple:
    """``need`` (``ctx.needs_input_grad``) less the parameter sums the active collector
    forms itself: a clipping collector (``bptorch.privacy``) forms Σ_n c_n g_n from δ and
    a^{l−1} when the backward ends (BP4 with δ_n scaled), so the layer skips its unclipped
    BP4 and the private step costs one backward. Called before BP3/BP4; the collector
    notes the skipped slots on ``ctx`` (``ctx.collected_slots``)."""
    skip = getattr(PER_EXAMPLE[-1], "skip", None)
    return tuple(need) if skip is None else skip(kind, ctx, tuple(need))


# ---------------------------------------------------------------- autocast
# The policies, after torch's own autocast op lists (torch.amp, "Autocast Op Reference"):
#   "lower"    the op is on the lower-precision list (linear, matmul, conv, bmm, attention,
#              the RNNs): floating inputs go to the autocast dtype;
#   "float32"  the op is on the float32 list (layer_norm and group_norm on CUDA,
#              softmax on CUDA, the losses): floating inputs go to float32;
#   None       the op is on neither list: it runs in its inputs' dtypes, uncast.
# A Function's ``autocast`` is one policy or a dict {device type: policy} (missing: None).
# float64 inputs are never cast, as torch's autocast leaves them alone.
LOWER, FLOAT32 = "lower", "float32"
LOW_PRECISION = (torch.float16, torch.bfloat16)  # the dtypes autocast runs "lower" ops in

# device type -> whether torch has autocast for it, asked once per type (a dict read
# after that; functools.cache would also work in eager, but Dynamo breaks the graph on it).
# CPU and CUDA are known: Dynamo before torch 2.12 cannot trace the question itself.
_HAS_AUTOCAST: dict[str, bool] = {"cpu": True, "cuda": True}


def autocast_on(device_type: str) -> bool:
    """Whether torch.autocast is on for ``device_type`` (devices with no autocast at all,
    such as ``meta``, never: asking torch about them raises)."""
    has = _HAS_AUTOCAST.get(device_type)
    if has is None:
        has = _HAS_AUTOCAST[device_type] = torch.amp.is_autocast_available(device_type)
    return has and torch.is_autocast_enabled(device_type)


def policy_dtype(policy: str | None, device_type: str) -> torch.dtype | None:
    """The dtype a Function of ``policy`` casts its floating inputs to while autocast is
    on for ``device_type``, or None (no cast)."""
    if policy == LOWER:
        return torch.get_autocast_dtype(device_type)
    if policy == FLOAT32:
        return torch.float32
    return None


def _first_tensor(args: tuple) -> Tensor | None:
    for a in args:
        if isinstance(a, Tensor):
            return a
    return None


def _cast_args(dtype: torch.dtype, args: tuple) -> tuple:
    """Floating tensors other than float64 in ``dtype``; everything else as it is."""
    return tuple(a.to(dtype) if isinstance(a, Tensor) and a.is_floating_point()
                 and a.dtype != torch.float64 else a for a in args)


def narrow(grad: Tensor, dtype: torch.dtype) -> Tensor:
    """``grad`` in ``dtype``; cast down to float16, clamped to its finite range first
    (±65504), since ±inf · σ'(z) = ±inf · 0 would be NaN further down."""
    if dtype == torch.float16 and grad.dtype != dtype:
        big = torch.finfo(dtype).max
        grad = grad.clamp(-big, big)
    return grad.to(dtype)


def _autocast_wrapped(cls: type) -> None:
    """Give ``cls``'s own forward, setup_context and backward the autocast plumbing."""
    fwd, setup, bwd = (cls.__dict__.get(k) for k in ("forward", "setup_context", "backward"))
    if fwd is not None and not hasattr(fwd.__func__, "__wrapped__"):
        raw_fwd = fwd.__func__

        @functools.wraps(raw_fwd)
        def forward(*args: Any) -> Any:
            t = _first_tensor(args)
            if t is None or not autocast_on(t.device.type):
                return raw_fwd(*args)
            dtype = policy_dtype(cls.autocast_policy(t.device.type, args), t.device.type)
            with torch.autocast(t.device.type, enabled=False):
                return raw_fwd(*(args if dtype is None else _cast_args(dtype, args)))

        cls.forward = staticmethod(forward)
    if setup is not None and not hasattr(setup.__func__, "__wrapped__"):
        raw_setup = setup.__func__

        @functools.wraps(raw_setup)
        def setup_context(ctx: Any, inputs: tuple, output: Any) -> None:
            t = _first_tensor(inputs)
            ctx.autocast_device = None
            if t is not None and autocast_on(t.device.type):
                dtype = policy_dtype(cls.autocast_policy(t.device.type, inputs), t.device.type)
                ctx.autocast_device = t.device.type
                ctx.input_dtypes = tuple(a.dtype if isinstance(a, Tensor) else None
                                         for a in inputs)
                if dtype is not None:
                    inputs = _cast_args(dtype, inputs)
            raw_setup(ctx, inputs, output)

        cls.setup_context = staticmethod(setup_context)
    if bwd is not None and not hasattr(bwd.__func__, "__wrapped__"):
        raw_bwd = bwd.__func__

        @functools.wraps(raw_bwd)
        def backward(ctx: Any, *grad_outputs: Any) -> Any:
            device = ctx.autocast_device
            if device is None:
                return raw_bwd(ctx, *grad_outputs)
            with torch.autocast(device, enabled=False):
                grads = raw_bwd(ctx, *grad_outputs)
            # as torch's casts do: each gradient in its own input's dtype
            return tuple(g if g is None or d is None or g.dtype == d else narrow(g, d)
                         for g, d in zip(grads, ctx.input_dtypes))

        cls.backward = staticmethod(backward)


class BPFunction(Function):
    """Base of every bptorch Function: write ``forward`` + ``setup_context`` + ``backward``
    (+ ``jvp``); ``apply`` picks the eager, torch.func or traced form (module docstring).

    Callers pass arguments positionally (no keywords); trailing defaults are filled in.

    ``autocast``: the Function's policy under ``torch.autocast`` ("lower", "float32" or
    None, or a dict by device type; see :func:`policy_dtype`), after the op list torch
    puts its twin's op on. A subclass whose policy depends on its arguments overrides
    :meth:`autocast_policy`.
    """

    _twin = False
    autocast: str | dict[str, str | None] | None = None

    @classmethod
    def autocast_policy(cls, device_type: str, args: tuple) -> str | None:
        """The policy for one call on ``device_type`` (by default the ``autocast`` attribute)."""
        policy = cls.autocast
        return policy.get(device_type) if isinstance(policy, dict) else policy

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("_twin"):
            return
        _autocast_wrapped(cls)
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
        cls.forward.__signature__ = inspect.signature(inspect.unwrap(cls.forward))

    @classmethod
    def apply(cls, *args: Any) -> Any:  # type: ignore[override]
        if _functorch_active():
            return cls._functorch.apply(*args)
        return cls._eager.apply(*args)


# ---------------------------------------------------------------- moved names
def moved(old: str, new: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for names that moved out of module ``old``: ``new`` maps
    each name to the module that holds it now. Each use warns (DeprecationWarning) and
    returns the new object. The aliases stay for one release."""
    def __getattr__(name: str) -> Any:
        if name not in new:
            raise AttributeError(f"module {old!r} has no attribute {name!r}")
        import importlib
        import warnings

        warnings.warn(f"{old}.{name} has moved to {new[name]}.{name}; {old} keeps it for one "
                      "release", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(new[name]), name)

    return __getattr__
