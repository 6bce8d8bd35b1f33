"""The activation functions σ, their derivatives σ', and what each saves for backward.

Every layer's backward needs one product, the factor ``⊙ σ'(z^l)`` of BP1 and BP2:

    δ^l = ∇_{a^l} C ⊙ σ'(z^l)

An :class:`Activation` holds, for one σ:

* ``fn(z)``: the forward, a = σ(z), and ``fn_(z)`` the same in place (or None);
* ``prime(saved)``: σ'(z) written as the book writes it, from the tensor the layer
  saved (``saves`` says which: the output ``"a"`` where σ' is cheapest from it, the
  input ``"z"`` where σ' cannot be read off a, or nothing);
* ``delta(grad_output, saved)``: δ = grad_output ⊙ σ'(z), the same product through
  one fused ATen kernel where one exists (one pass over memory instead of three).
  ``tests/test_activations.py`` checks ``delta`` against ``grad_output * prime``.

``prime`` and ``delta`` are built from differentiable torch ops, so a backward that uses them can
itself be differentiated (double backward, gradgradcheck).

The table: the book's sigmoid, tanh and relu; leaky_relu, softmax, gelu, silu and identity;
and torch's relu6, hardtanh, hardsigmoid, hardswish, elu, selu, softplus and mish (issue 21),
whose ``delta`` is the book's product itself, g ⊙ σ'(z), in plain ops. PReLU, whose slope is a
parameter with a gradient of its own, is a Function of its own (``functions/linear.py``).

The built-in activations are made once per parameter value (cached), so a lookup
allocates nothing, and they pickle by name and parameters (their fields hold torch
builtins and closures, which pickle cannot store): an unpickled or deep-copied one
is the same cached object.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

aten = torch.ops.aten
F = torch.nn.functional


@dataclass(frozen=True)
class Activation:
    """One activation σ: forward, derivative, and the saved tensor both use."""

    name: str
    fn: Callable[[Tensor], Tensor]  # a = σ(z)
    prime: Callable[[Tensor], Tensor]  # σ'(z), from the saved tensor
    delta: Callable[[Tensor, Tensor], Tensor]  # grad_output ⊙ σ'(z), from the saved tensor
    saves: str | None  # "a" (output), "z" (input) or None
    prime_max: float  # max over z of |σ'(z)|; "saturated" means |σ'(z)| < 1% of this
    elementwise: bool = True  # False for softmax, whose Jacobian is not diagonal
    negative_slope: float | None = None  # leaky_relu's s
    dim: int | None = None  # softmax's dim (None: torch's implicit choice)
    approximate: str | None = None  # gelu's "none" or "tanh"
    fn_: Callable[[Tensor], Tensor] | None = None  # σ in place, for inplace=True
    # the other parametrised σ's arguments, in torch's order: hardtanh's (min_val, max_val),
    # elu's (alpha,), softplus's (beta, threshold); () for the rest
    params: tuple[float, ...] = ()

    def __reduce_ex__(self, protocol):
        # A built-in pickles as "look me up again": (name, parameters).
        params = (self.name, self.negative_slope, self.dim, self.approximate)
        if self.params:
            params = (*params, self.params)
        if self is _lookup(*params):
            return _lookup, params
        return super().__reduce_ex__(protocol)  # a user's own Activation: its fields


def _lookup(name: str, negative_slope, dim, approximate, params: tuple = ()
            ) -> Activation | None:
    """The built-in activation with this name and these parameters (what unpickling
    calls), or None for a name that is not built in."""
    if name == "leaky_relu":
        return leaky_relu(negative_slope)
    if name == "softmax":
        return softmax(dim)
    if name == "gelu":
        return gelu(approximate)
    if name in _PARAMETRISED:
        return _PARAMETRISED[name](*params)
    return _BY_NAME.get(name)


# (name, parameter) -> Activation: each parametrised activation is built once, so a
# lookup allocates nothing and an unpickled one is the same object. A plain dict, not
# functools.lru_cache, which torch.compile warns about on every traced lookup.
_CACHE: dict[tuple, Activation] = {}


def _cached(name: str, param, build: Callable[..., Activation]) -> Activation:
    act = _CACHE.get((name, param))
    if act is None:
        act = _CACHE[(name, param)] = build(param)
    return act


def _argmax(f: Callable[[float], float], lo: float, hi: float) -> float:
    """max of a unimodal f on [lo, hi] by golden-section search (for prime_max)."""
    r = (math.sqrt(5) - 1) / 2
    for _ in range(80):
        m1, m2 = hi - r * (hi - lo), lo + r * (hi - lo)
        lo, hi = (m1, hi) if f(m1) < f(m2) else (lo, m2)
    return f((lo + hi) / 2)


# sigmoid: σ(z) = 1/(1+e^{−z}), σ'(z) = σ(z)(1 − σ(z)) = a(1 − a): keep a, not z.
def _sigmoid_prime(a: Tensor) -> Tensor:
    return a * (1 - a)


SIGMOID = Activation(
    "sigmoid",
    fn=torch.sigmoid,
    prime=_sigmoid_prime,
    delta=aten.sigmoid_backward,  # fused g * a * (1 - a)
    saves="a",
    prime_max=0.25,
)


# tanh: σ'(z) = 1 − tanh²(z) = 1 − a²: keep a.
def _tanh_prime(a: Tensor) -> Tensor:
    return 1 - a * a


TANH = Activation(
    "tanh",
    fn=torch.tanh,
    prime=_tanh_prime,
    delta=aten.tanh_backward,  # fused g * (1 - a²)
    saves="a",
    prime_max=1.0,
)


# relu: σ(z) = max(z, 0), σ'(z) = 1 if z > 0 else 0. At the kink z = 0 we use the
# subgradient 0, as torch does. a > 0 exactly when z > 0, so the output suffices
# (and relu_ may overwrite z: backward never needs it).
def _relu_prime(a: Tensor) -> Tensor:
    return (a > 0).to(a.dtype)


def _relu_delta(grad_output: Tensor, a: Tensor) -> Tensor:
    return aten.threshold_backward(grad_output, a, 0)  # fused g where a > 0 else 0


RELU = Activation(
    "relu",
    fn=torch.relu,
    prime=_relu_prime,
    delta=_relu_delta,
    saves="a",
    prime_max=1.0,
    fn_=torch.relu_,
)


def _identity(z: Tensor) -> Tensor:
    return z


def _identity_prime(z: Tensor) -> Tensor:
    return torch.ones_like(z)


def _identity_delta(grad_output: Tensor, _saved: Tensor | None) -> Tensor:
    return grad_output


IDENTITY = Activation(
    "identity",
    fn=_identity,
    prime=_identity_prime,
    delta=_identity_delta,
    saves=None,
    prime_max=1.0,
)


def leaky_relu(negative_slope: float = 0.01) -> Activation:
    """σ(z) = z if z > 0 else s·z; σ'(z) = 1 if z > 0 else s (s at the kink, as torch).

    For s ≥ 0, a > 0 exactly when z > 0, so the output a is saved. For s < 0 (torch
    accepts it) a > 0 also where z < 0, so a no longer tells which side of the kink
    z was on: z is saved instead.
    """
    return _cached("leaky_relu", float(negative_slope), _leaky_relu)


def _leaky_relu(s: float) -> Activation:

    def fn(z: Tensor) -> Tensor:
        return F.leaky_relu(z, s)

    def fn_(z: Tensor) -> Tensor:
        return F.leaky_relu(z, s, inplace=True)

    saves = "a" if s >= 0 else "z"

    def prime(saved: Tensor) -> Tensor:  # saved > 0 exactly where z > 0, a or z alike
        return torch.where(saved > 0, 1.0, s).to(saved.dtype)

    def delta(grad_output: Tensor, saved: Tensor) -> Tensor:
        # fused g where z > 0 else s·g; self_is_result says whether it is given a or z
        return aten.leaky_relu_backward(grad_output, saved, s, saves == "a")

    return Activation(
        "leaky_relu",
        fn=fn,
        prime=prime,
        delta=delta,
        saves=saves,
        prime_max=max(1.0, abs(s)),
        negative_slope=s,
        fn_=fn_,
    )


def softmax_dim(ndim: int) -> int:
    """torch's implicit softmax dim (``F._get_softmax_dim`` without its warning):
    0 for 0-, 1- and 3-dim input, else 1."""
    return 0 if ndim in (0, 1, 3) else 1


def softmax(dim: int | None = -1) -> Activation:
    """a_j = e^{z_j} / Σ_k e^{z_k} along ``dim``.

    Its Jacobian is not diagonal: ∂a_j/∂z_k = a_j(1[j=k] − a_k), so
    δ = a ⊙ (grad_output − Σ_k grad_output_k a_k). ``prime`` returns the diagonal
    a(1 − a), which is what the saturation diagnostics look at. ``dim=None`` takes
    torch's implicit choice (:func:`softmax_dim`) from each input's number of dims;
    the module and functional forms warn about it, as torch does.
    """
    return _cached("softmax", None if dim is None else operator.index(dim), _softmax)


def _softmax(dim: int | None) -> Activation:

    def fn(z: Tensor) -> Tensor:
        return torch.softmax(z, softmax_dim(z.dim()) if dim is None else dim)

    def delta(grad_output: Tensor, a: Tensor) -> Tensor:
        d = softmax_dim(a.dim()) if dim is None else dim
        return aten._softmax_backward_data(grad_output, a, d, a.dtype)  # fused form above

    return Activation(
        "softmax",
        fn=fn,
        prime=_sigmoid_prime,
        delta=delta,
        saves="a",
        prime_max=0.25,
        elementwise=False,
        dim=dim,
    )


# gelu: σ(z) = z Φ(z), Φ the standard normal CDF, φ its density.
#   σ'(z) = Φ(z) + z φ(z)
# With approximate="tanh": σ(z) = ½ z (1 + tanh u), u = √(2/π)(z + 0.044715 z³),
#   σ'(z) = ½(1 + tanh u) + ½ z (1 − tanh² u) √(2/π)(1 + 3·0.044715 z²).
# σ' is not a function of a (σ is not monotone), so z is saved. σ' dips below 0
# (min −0.129 at z = −√2) and rises above 1 (max at z = √2 for "none").
_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)
_GELU_C = 0.044715
_GELU_PRIME_MAX = (1 + math.erf(1)) / 2 + 1 / (math.e * math.sqrt(math.pi))  # σ'(√2)


def _gelu_prime_exact(z: Tensor) -> Tensor:
    cdf = 0.5 * (1 + torch.erf(z / math.sqrt(2)))  # Φ(z)
    pdf = torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)  # φ(z)
    return cdf + z * pdf


def _gelu_prime_tanh(z: Tensor) -> Tensor:
    t = torch.tanh(_SQRT_2_OVER_PI * (z + _GELU_C * z**3))  # tanh u
    return 0.5 * (1 + t) + 0.5 * z * (1 - t * t) * _SQRT_2_OVER_PI * (1 + 3 * _GELU_C * z * z)


def _gelu_tanh_prime_max() -> float:
    """max σ' of the tanh form: the same formula on floats, maximised numerically."""

    def prime(z: float) -> float:
        t = math.tanh(_SQRT_2_OVER_PI * (z + _GELU_C * z**3))
        return 0.5 * (1 + t) + 0.5 * z * (1 - t * t) * _SQRT_2_OVER_PI * (1 + 3 * _GELU_C * z * z)

    return _argmax(prime, 0.0, 4.0)


def gelu(approximate: str = "none") -> Activation:
    """σ(z) = z Φ(z) (``approximate="tanh"``: torch's tanh form); saves z.

    max σ' = Φ(√2) + √2 φ(√2) = (1 + erf 1)/2 + 1/(e√π) ≈ 1.1289 for "none"; the
    tanh form's maximum (≈ 1.1290) is found numerically.
    """
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu expects approximate 'none' or 'tanh', got {approximate!r}")
    return _cached("gelu", approximate, _gelu)


def _gelu(approximate: str) -> Activation:
    def fn(z: Tensor) -> Tensor:
        return F.gelu(z, approximate=approximate)

    def delta(grad_output: Tensor, z: Tensor) -> Tensor:
        return aten.gelu_backward(grad_output, z, approximate=approximate)  # fused g ⊙ σ'(z)

    return Activation(
        "gelu",
        fn=fn,
        prime=_gelu_prime_tanh if approximate == "tanh" else _gelu_prime_exact,
        delta=delta,
        saves="z",
        prime_max=_gelu_tanh_prime_max() if approximate == "tanh" else _GELU_PRIME_MAX,
        approximate=approximate,
    )


# silu (swish): σ(z) = z s(z), s = 1/(1 + e^{−z}) the sigmoid.
#   σ'(z) = s(z) (1 + z (1 − s(z)))
# Not monotone either, so z is saved (the in-place form keeps a copy of z, as torch's
# silu_ does). σ'' = s(1 − s)(2 + z(1 − 2s)) vanishes where z tanh(z/2) = 2,
# z ≈ ±2.3994: max σ' ≈ 1.0998, min σ' ≈ −0.0998.
def _silu_prime(z: Tensor) -> Tensor:
    s = torch.sigmoid(z)
    return s * (1 + z * (1 - s))


def _silu_delta(grad_output: Tensor, z: Tensor) -> Tensor:
    # aten.silu_backward (fused g ⊙ σ'(z)) has no derivative of its own: when the
    # backward is itself being taped (create_graph), use the formula, as torch does.
    if torch.is_grad_enabled():
        return grad_output * _silu_prime(z)
    return aten.silu_backward(grad_output, z)


def _silu(z: Tensor) -> Tensor:
    return F.silu(z)


def _silu_(z: Tensor) -> Tensor:
    return F.silu(z, inplace=True)


def _scalar_silu_prime(z: float) -> float:  # the same formula on floats, for prime_max
    s = 1 / (1 + math.exp(-z))
    return s * (1 + z * (1 - s))


SILU = Activation(
    "silu",
    fn=_silu,
    prime=_silu_prime,
    delta=_silu_delta,
    saves="z",
    prime_max=_argmax(_scalar_silu_prime, 0.0, 6.0),
    fn_=_silu_,
)

# ---------------------------------------------------------------- torch's other σ
# The piecewise-linear family (hardtanh, relu6, hardsigmoid, hardswish), the exponential
# family (elu, selu), softplus and mish. Each σ' is written as the book writes sigmoid's:
# from the tensor that makes it cheapest, and with torch's choice at every kink (the
# comparison torch's own backward makes: ≤ or <). ``delta`` is g ⊙ σ'(z) in plain
# differentiable ops (no fused ATen backward kernel), so double backward follows.
def _mul_delta(prime: Callable[[Tensor], Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
    def delta(grad_output: Tensor, saved: Tensor) -> Tensor:
        return grad_output * prime(saved)  # δ = ∂C/∂a ⊙ σ'(z)
    return delta


def hardtanh(min_val: float = -1.0, max_val: float = 1.0) -> Activation:
    """σ(z) = min(max(z, min_val), max_val); σ' = 1 strictly inside (min_val, max_val),
    0 outside and at both kinks (as torch). a is strictly inside exactly when z is, so the
    output a is saved (and ``hardtanh_`` may overwrite z)."""
    return _cached("hardtanh", (float(min_val), float(max_val)), _hardtanh)


def _hardtanh(bounds: tuple[float, float], name: str = "hardtanh") -> Activation:
    lo, hi = bounds
    relu6_form = name == "relu6"  # torch's relu6 is hardtanh(0, 6) under its own name

    def fn(z: Tensor) -> Tensor:
        return F.relu6(z) if relu6_form else F.hardtanh(z, lo, hi)

    def fn_(z: Tensor) -> Tensor:
        return F.relu6(z, inplace=True) if relu6_form else F.hardtanh(z, lo, hi, inplace=True)

    def prime(a: Tensor) -> Tensor:  # a = clamp(z): lo < a < hi exactly where lo < z < hi
        return ((a > lo) & (a < hi)).to(a.dtype)

    return Activation(name, fn=fn, prime=prime, delta=_mul_delta(prime), saves="a",
                      prime_max=1.0 if lo < hi else 0.0, fn_=fn_, params=bounds)


# torch's hardsigmoid backward multiplies by 1/6 rounded to float32 (``1.0f / 6.0f``) in
# every dtype, float64 too: the same constant here, so gradients agree to the last bit
_ONE_SIXTH = float(torch.tensor(1 / 6, dtype=torch.float32))


def _hardsigmoid_prime(a: Tensor) -> Tensor:
    # a = relu6(z + 3)/6 is strictly inside (0, 1) exactly where −3 < z < 3
    return ((a > 0) & (a < 1)).to(a.dtype) * _ONE_SIXTH


# hardsigmoid: σ(z) = relu6(z + 3)/6, σ' = 1/6 on (−3, 3), 0 outside and at the kinks.
HARDSIGMOID = Activation(
    "hardsigmoid",
    fn=F.hardsigmoid,
    prime=_hardsigmoid_prime,
    delta=_mul_delta(_hardsigmoid_prime),
    saves="a",
    prime_max=_ONE_SIXTH,
    fn_=lambda z: F.hardsigmoid(z, inplace=True),
)


def _hardswish_prime(z: Tensor) -> Tensor:
    # σ(z) = z·relu6(z + 3)/6: 0 for z < −3, z²/6 + z/2 between (σ' = z/3 + 1/2, torch's
    # choice at both kinks, z = −3 and z = 3), z above (σ' = 1)
    return torch.where(z < -3, 0.0, torch.where(z <= 3, z / 3 + 0.5, 1.0)).to(z.dtype)


# hardswish: not monotone (a = 0 at z = 0 and for z ≤ −3), so z is saved; max σ' = 3/2,
# at z = 3, min σ' = −1/2 at z = −3.
HARDSWISH = Activation(
    "hardswish",
    fn=F.hardswish,
    prime=_hardswish_prime,
    delta=_mul_delta(_hardswish_prime),
    saves="z",
    prime_max=1.5,
    fn_=lambda z: F.hardswish(z, inplace=True),
)


def elu(alpha: float = 1.0) -> Activation:
    """σ(z) = z for z > 0, α(e^z − 1) for z ≤ 0; σ' = 1 or αe^z = a + α.

    For α ≥ 0, a > 0 exactly where z > 0, so a is saved and σ' = a + α on the negative
    side (no exp in backward). For α < 0 (torch accepts it) a > 0 on both sides, so z is
    saved, and ``inplace=True`` keeps none: backward then raises, as torch's does.
    """
    return _cached("elu", (float(alpha),), _elu)


def _elu(params: tuple[float]) -> Activation:
    (alpha,) = params
    saves = "a" if alpha >= 0 else "z"

    def fn(z: Tensor) -> Tensor:
        return F.elu(z, alpha)

    def fn_(z: Tensor) -> Tensor:
        return F.elu(z, alpha, inplace=True)

    def prime(saved: Tensor) -> Tensor:
        if saves == "a":  # a ≤ 0 exactly where z ≤ 0, and there σ' = αe^z = a + α
            return torch.where(saved > 0, 1.0, saved + alpha).to(saved.dtype)
        return torch.where(saved > 0, 1.0, alpha * saved.exp()).to(saved.dtype)

    return Activation("elu", fn=fn, prime=prime, delta=_mul_delta(prime), saves=saves,
                      prime_max=max(1.0, abs(alpha)), fn_=fn_, params=params)


# selu: σ(z) = λ z for z > 0, λα(e^z − 1) for z ≤ 0, with Klambauer et al.'s fixed
# λ ≈ 1.0507 and α ≈ 1.6733 (torch's constants); σ' = λ or λαe^z = a + λα. Saves a.
_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946


def _selu_prime(a: Tensor) -> Tensor:
    return torch.where(a > 0, _SELU_SCALE, a + _SELU_SCALE * _SELU_ALPHA).to(a.dtype)


SELU = Activation(
    "selu",
    fn=F.selu,
    prime=_selu_prime,
    delta=_mul_delta(_selu_prime),
    saves="a",
    prime_max=_SELU_SCALE * _SELU_ALPHA,  # at z → 0⁻
    fn_=lambda z: F.selu(z, inplace=True),
)


def softplus(beta: float = 1.0, threshold: float = 20.0) -> Activation:
    """σ(z) = (1/β) ln(1 + e^{βz}), and z itself where βz > threshold (torch's switch for
    numerical stability); σ' = s(βz), s the sigmoid, and 1 past the threshold. Saves z.
    No in-place form, as torch's."""
    return _cached("softplus", (float(beta), float(threshold)), _softplus)


def _softplus(params: tuple[float, float]) -> Activation:
    beta, threshold = params

    def fn(z: Tensor) -> Tensor:
        return F.softplus(z, beta, threshold)

    def prime(z: Tensor) -> Tensor:
        bz = z * beta
        return torch.where(bz > threshold, 1.0, torch.sigmoid(bz)).to(z.dtype)

    return Activation("softplus", fn=fn, prime=prime, delta=_mul_delta(prime), saves="z",
                      prime_max=1.0, params=params)


# mish: σ(z) = z tanh(softplus(z)). With t = tanh(softplus(z)) and s the sigmoid
# (d softplus/dz = s, d tanh u/du = 1 − tanh² u):
#   σ'(z) = t + z s (1 − t²).
# Not monotone, so z is saved (the in-place form keeps a copy, as silu's);
# max σ' ≈ 1.0885 at z ≈ 1.19, min σ' ≈ −0.1125.
def _mish_prime(z: Tensor) -> Tensor:
    t = torch.tanh(F.softplus(z))
    return t + z * torch.sigmoid(z) * (1 - t * t)


def _scalar_mish_prime(z: float) -> float:  # the same formula on floats, for prime_max
    t = math.tanh(math.log1p(math.exp(z)))
    return t + z / (1 + math.exp(-z)) * (1 - t * t)


MISH = Activation(
    "mish",
    fn=F.mish,
    prime=_mish_prime,
    delta=_mul_delta(_mish_prime),
    saves="z",
    prime_max=_argmax(_scalar_mish_prime, 0.0, 6.0),
    fn_=lambda z: F.mish(z, inplace=True),
)

RELU6 = _hardtanh((0.0, 6.0), "relu6")
HARDTANH = hardtanh(-1.0, 1.0)
ELU = elu(1.0)
SOFTPLUS = softplus(1.0, 20.0)
# name -> builder from the ``params`` tuple (what unpickling calls)
_PARAMETRISED: dict[str, Callable[..., Activation]] = {
    "hardtanh": hardtanh, "elu": elu, "softplus": softplus,
}

LEAKY_RELU = leaky_relu(0.01)
SOFTMAX = softmax(-1)
GELU = gelu("none")

_BY_NAME = {
    "sigmoid": SIGMOID,
    "tanh": TANH,
    "relu": RELU,
    "leaky_relu": LEAKY_RELU,
    "softmax": SOFTMAX,
    "identity": IDENTITY,
    "gelu": GELU,
    "silu": SILU,
    "relu6": RELU6,
    "hardtanh": HARDTANH,
    "hardsigmoid": HARDSIGMOID,
    "hardswish": HARDSWISH,
    "elu": ELU,
    "selu": SELU,
    "softplus": SOFTPLUS,
    "mish": MISH,
}
ACTIVATIONS: tuple[str, ...] = tuple(_BY_NAME)


def get_activation(
    activation: str | Activation,
    *,
    negative_slope: float = 0.01,
    dim: int | None = -1,
    approximate: str = "none",
    min_val: float = -1.0,
    max_val: float = 1.0,
    alpha: float = 1.0,
    beta: float = 1.0,
    threshold: float = 20.0,
) -> Activation:
    """Look up an activation by name (or pass an :class:`Activation` through).

    ``negative_slope``, ``dim`` and ``approximate`` parametrise "leaky_relu",
    "softmax" and "gelu"; ``min_val``/``max_val`` "hardtanh", ``alpha`` "elu",
    ``beta``/``threshold`` "softplus"; each value is built once and then reused.
    """
    if isinstance(activation, Activation):
        return activation
    if activation == "leaky_relu":
        return leaky_relu(negative_slope)
    if activation == "softmax":
        return softmax(dim)
    if activation == "gelu":
        return gelu(approximate)
    if activation == "hardtanh":
        return hardtanh(min_val, max_val)
    if activation == "elu":
        return elu(alpha)
    if activation == "softplus":
        return softplus(beta, threshold)
    try:
        return _BY_NAME[activation]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown activation {activation!r}; expected one of {', '.join(ACTIVATIONS)}"
        ) from None
