"""Each activation's fused ``delta`` (the fast path) against the book's formula
``grad_output * prime(saved)`` (the readable path), σ' against autograd, and the
Function's backward, double backward and forward mode in float64."""
from __future__ import annotations

import pickle

import pytest
import torch
import torch.nn.functional as TF
from torch.autograd import gradcheck, gradgradcheck

from bptorch.activations import ACTIVATIONS, get_activation, gelu, leaky_relu, softmax
from bptorch.activations import elu, hardtanh, softplus
from bptorch.functions.linear import ActivationFunction, DenseFunction

from helpers import away_from_zero, dense_inputs

F64 = torch.float64

# every elementwise σ, with torch's own function as the reference
ELEMENTWISE = {
    "sigmoid": (get_activation("sigmoid"), torch.sigmoid),
    "tanh": (get_activation("tanh"), torch.tanh),
    "relu": (get_activation("relu"), torch.relu),
    "leaky_relu": (get_activation("leaky_relu"), lambda t: TF.leaky_relu(t, 0.01)),
    "leaky_relu_0.3": (leaky_relu(0.3), lambda t: TF.leaky_relu(t, 0.3)),
    "leaky_relu_neg": (leaky_relu(-0.4), lambda t: TF.leaky_relu(t, -0.4)),
    "leaky_relu_neg_steep": (leaky_relu(-2.5), lambda t: TF.leaky_relu(t, -2.5)),
    "identity": (get_activation("identity"), lambda t: t * 1),
    "gelu": (get_activation("gelu"), TF.gelu),
    "gelu_tanh": (gelu("tanh"), lambda t: TF.gelu(t, approximate="tanh")),
    "silu": (get_activation("silu"), TF.silu),
    # issue 21's activations (tests/test_activations_new.py has their modules and twins)
    "relu6": (get_activation("relu6"), TF.relu6),
    "hardtanh": (get_activation("hardtanh"), TF.hardtanh),
    "hardtanh_-2_3": (hardtanh(-2.0, 3.0), lambda t: TF.hardtanh(t, -2.0, 3.0)),
    "hardsigmoid": (get_activation("hardsigmoid"), TF.hardsigmoid),
    "hardswish": (get_activation("hardswish"), TF.hardswish),
    "elu": (get_activation("elu"), TF.elu),
    "elu_0.5": (elu(0.5), lambda t: TF.elu(t, 0.5)),
    "elu_neg": (elu(-0.7), lambda t: TF.elu(t, -0.7)),
    "selu": (get_activation("selu"), TF.selu),
    # past the threshold (βz > 5, z > 2.5) inside the grid of the prime_max test, where
    # σ' = 1 is reached; the default (βz > 20) only beyond z = 20 (test_activations_new)
    "softplus": (softplus(2.0, 5.0), lambda t: TF.softplus(t, 2.0, 5.0)),
    "mish": (get_activation("mish"), TF.mish),
}
# GELU and SiLU: also values where σ' < 0 and σ' > 1 (z near ±√2, ±2.4)
SMOOTH = ["gelu", "gelu_tanh", "silu"]
SMOOTH += ["elu_neg", "hardswish", "softplus", "mish"]  # the new σ that save z


def saved_tensor(act, z, a):
    return {"a": a, "z": z, None: None}[act.saves]


def test_every_name_is_covered():
    assert {n for n in ACTIVATIONS if n != "softmax"} <= set(ELEMENTWISE)


@pytest.mark.parametrize("key", list(ELEMENTWISE))
def test_fused_delta_equals_book_formula(device, key):
    act, _ = ELEMENTWISE[key]
    z = away_from_zero(7, 5, dtype=F64, device=device) * 2
    a = act.fn(z)
    g = torch.randn_like(z)
    saved = saved_tensor(act, z, a)
    with torch.no_grad():  # as in a backward: the fused kernels (SiLU's only without grad)
        fused = act.delta(g, saved)
    torch.testing.assert_close(fused, g * act.prime(saved if saved is not None else z))


@pytest.mark.parametrize("key", list(ELEMENTWISE))
def test_prime_is_the_derivative(key):
    """σ'(z) from the saved tensor equals dσ/dz taken by autograd on torch's σ."""
    act, ref = ELEMENTWISE[key]
    z = (away_from_zero(6, 4, dtype=F64) * 2).requires_grad_()
    (dz,) = torch.autograd.grad(ref(z).sum(), z)
    zd = z.detach()
    saved = saved_tensor(act, zd, act.fn(zd))
    torch.testing.assert_close(act.prime(saved if saved is not None else zd), dz)
    assert float(dz.abs().max()) <= act.prime_max + 1e-12


@pytest.mark.parametrize("key", list(ELEMENTWISE))
def test_prime_max_is_the_maximum_of_abs_prime(key):
    """prime_max = max_z |σ'(z)|, computed on a fine grid with torch's own derivative."""
    act, ref = ELEMENTWISE[key]
    z = torch.linspace(-8, 8, 1_600_001, dtype=F64).requires_grad_()
    (dz,) = torch.autograd.grad(ref(z).sum(), z)
    assert abs(float(dz.abs().max()) - act.prime_max) < 1e-9


def test_gelu_silu_prime_max_values():
    """The numbers the diagnostics divide by: σ' exceeds 1 and dips below 0."""
    assert get_activation("gelu").prime_max == pytest.approx(1.1289041452, abs=1e-9)
    assert gelu("tanh").prime_max == pytest.approx(1.1289930687, abs=1e-9)
    assert get_activation("silu").prime_max == pytest.approx(1.0998393201, abs=1e-9)
    z = torch.tensor([-2**0.5, -2.3994], dtype=F64)
    assert float(get_activation("gelu").prime(z)[0]) == pytest.approx(-0.12890414518, abs=1e-9)
    assert float(get_activation("silu").prime(z)[1]) < -0.0998


@pytest.mark.parametrize("key", list(ELEMENTWISE))
def test_activation_function_matches_torch_under_random_upstream(device, key):
    act, ref = ELEMENTWISE[key]
    z = (away_from_zero(5, 7, dtype=F64, device=device) * 2).requires_grad_()
    g = torch.randn(5, 7, dtype=F64, device=device)
    out = ActivationFunction.apply(z, act, None)
    torch.testing.assert_close(out, ref(z))
    (ours,) = torch.autograd.grad(out, z, g)
    (theirs,) = torch.autograd.grad(ref(z), z, g)
    torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("key", ["leaky_relu_neg", "leaky_relu_neg_steep"] + SMOOTH)
def test_gradcheck_gradgradcheck_forward_ad(device, key):
    """float64 backward, double backward and forward mode (jvp) of the activation
    Function and of Dense, for the σ that save z."""
    act, _ = ELEMENTWISE[key]
    z = (away_from_zero(4, 6, dtype=F64, device=device) * 2).requires_grad_()
    fn = lambda z: ActivationFunction.apply(z, act, None)  # noqa: E731
    assert gradcheck(fn, (z,), check_forward_ad=True, check_batched_grad=True)
    assert gradgradcheck(fn, (z,))
    a, w, b = dense_inputs(7, 5, 3, device=device)
    dense = lambda a, w, b: DenseFunction.apply(a, w, b, act, None)  # noqa: E731
    assert gradcheck(dense, (a, w, b), check_forward_ad=True)
    assert gradgradcheck(dense, (a, w, b))


def test_negative_slope_saves_z_and_gets_the_kink_side_right():
    """With s < 0, a > 0 on both sides of the kink, so σ' must come from z."""
    act = leaky_relu(-0.5)
    assert act.saves == "z"
    assert leaky_relu(0.2).saves == "a" and leaky_relu(0.0).saves == "a"
    z = torch.tensor([[-2.0, 3.0]])
    a = act.fn(z)
    assert (a > 0).all()  # the output no longer tells the sides apart
    torch.testing.assert_close(act.delta(torch.ones_like(z), z), torch.tensor([[-0.5, 1.0]]))


def test_softmax_delta_is_the_jacobian_product(device):
    """δ = a ⊙ (g − Σ_k g_k a_k), i.e. Jᵀg with J_jk = a_j(1[j=k] − a_k)."""
    act = softmax(dim=-1)
    z = torch.randn(4, 6, dtype=F64, device=device)
    a, g = act.fn(z), torch.randn(4, 6, dtype=F64, device=device)
    book = a * (g - (g * a).sum(-1, keepdim=True))
    torch.testing.assert_close(act.delta(g, a), book)
    jac = torch.func.vmap(torch.func.jacrev(lambda r: torch.softmax(r, -1)))(z)
    torch.testing.assert_close(act.delta(g, a), torch.einsum("nj,njk->nk", g, jac))


@pytest.mark.parametrize("shape", [(), (5,), (3, 4), (2, 3, 4), (2, 3, 4, 5)])
def test_softmax_dim_none_is_torchs_implicit_dim(shape):
    z = torch.randn(shape, dtype=F64, requires_grad=True)
    g = torch.randn(shape, dtype=F64)
    act = softmax(None)
    out = ActivationFunction.apply(z, act, None)
    with pytest.warns(UserWarning, match="Implicit dimension choice"):
        ref = TF.softmax(z, dim=None)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(torch.autograd.grad(out, z, g)[0], torch.autograd.grad(ref, z, g)[0])


def test_leaky_relu_slope_is_used():
    act = leaky_relu(0.25)
    z = torch.tensor([[-2.0, 3.0]])
    g = torch.tensor([[1.0, 1.0]])
    torch.testing.assert_close(act.delta(g, act.fn(z)), torch.tensor([[0.25, 1.0]]))


def test_lookups_are_cached_and_pickle_to_the_same_object():
    """A lookup builds nothing new; pickling stores the name and parameters."""
    assert get_activation("leaky_relu", negative_slope=0.3) is leaky_relu(0.3)
    assert get_activation("leaky_relu") is leaky_relu()
    assert get_activation("softmax", dim=1) is softmax(1)
    assert get_activation("gelu", approximate="tanh") is gelu("tanh")
    for act in [*(a for a, _ in ELEMENTWISE.values()), softmax(-1), softmax(None), softmax(2)]:
        assert pickle.loads(pickle.dumps(act)) is act
        assert len(pickle.dumps(act)) < 200  # a name and parameters, not closures


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError, match="'none' or 'tanh'"):
        gelu("erf")
    with pytest.raises(TypeError):
        softmax(1.5)


def test_saturated_counts_abs_prime_below_one_percent_of_max():
    """GELU's σ' is negative for z < −0.75: "saturated" looks at |σ'|, so the deep
    negative tail and the zero of σ' count, the negative-σ' bulk does not."""
    from bptorch.diagnostics import layer_stats

    act = get_activation("gelu")
    z = torch.tensor([[-5.0, -1.5, -0.75, 0.5, 3.0]], dtype=F64)  # σ' ≈ 0, −0.13, 0, ...
    stats = layer_stats(act, torch.ones_like(z), z)
    assert float(stats[3]) == pytest.approx(2 / 5)  # z = −5 and z = −0.75
