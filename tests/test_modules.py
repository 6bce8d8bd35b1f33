"""Each module against its native torch counterpart in float32: the forward, and every
gradient under a random upstream gradient (a constant one would hide a missing
``* grad_output`` or a wrong reduction axis)."""
from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as TF
from torch import nn as tnn

import bptorch.nn as bnn

from helpers import away_from_zero

TOL = dict(rtol=1e-5, atol=1e-6)

NATIVE_ACT = {
    "sigmoid": tnn.Sigmoid(),
    "tanh": tnn.Tanh(),
    "relu": tnn.ReLU(),
    "leaky_relu": tnn.LeakyReLU(0.01),
    "softmax": tnn.Softmax(dim=-1),
    "identity": tnn.Identity(),
}
BP_ACT = {
    "sigmoid": bnn.Sigmoid, "tanh": bnn.Tanh, "relu": bnn.ReLU,
    "leaky_relu": bnn.LeakyReLU, "softmax": bnn.Softmax, "identity": bnn.Identity,
}


def grads_under_random_upstream(model, x, *params):
    """Forward, then backward with a random upstream gradient; returns (out, grads)."""
    x = x.clone().requires_grad_()
    out = model(x)
    g = torch.randn_like(out, generator=None)
    grads = torch.autograd.grad(out, (x, *params), g)
    return out, grads, g


def compare(bp_model, native_model, x, bp_params, native_params):
    torch.manual_seed(1)
    out_b, grads_b, _ = grads_under_random_upstream(bp_model, x, *bp_params)
    torch.manual_seed(1)
    out_n, grads_n, _ = grads_under_random_upstream(native_model, x, *native_params)
    torch.testing.assert_close(out_b, out_n, **TOL)
    assert len(grads_b) == len(grads_n)
    for gb, gn in zip(grads_b, grads_n):
        torch.testing.assert_close(gb, gn, **TOL)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("lead", [(9,), (2, 3)], ids=["2d", "3d"])
def test_linear_matches_torch(device, bias, lead):
    native = tnn.Linear(7, 4, bias=bias, device=device)
    ours = bnn.Linear(7, 4, bias=bias, device=device)
    ours.load_state_dict(native.state_dict())
    x = torch.randn(*lead, 7, device=device)
    compare(ours, native, x, list(ours.parameters()), list(native.parameters()))


@pytest.mark.parametrize("name", list(BP_ACT))
def test_activation_module_matches_torch(device, name):
    x = away_from_zero(5, 6, device=device)
    compare(BP_ACT[name]().to(device), NATIVE_ACT[name], x, [], [])


@pytest.mark.parametrize("name", list(NATIVE_ACT))
def test_dense_matches_linear_then_activation(device, name):
    native = tnn.Sequential(tnn.Linear(7, 4, device=device), NATIVE_ACT[name])
    ours = bnn.Dense(7, 4, activation=name, device=device)
    ours.load_state_dict(native[0].state_dict())
    x = torch.randn(9, 7, device=device)
    compare(ours, native, x, list(ours.parameters()), list(native.parameters()))


def test_leaky_relu_slope_and_softmax_dim(device):
    x = away_from_zero(3, 4, 5, device=device)
    compare(bnn.LeakyReLU(0.3), tnn.LeakyReLU(0.3), x, [], [])
    compare(bnn.Softmax(dim=1), tnn.Softmax(dim=1), x, [], [])
    native = tnn.Sequential(tnn.Linear(5, 3, device=device), tnn.LeakyReLU(0.2))
    ours = bnn.Dense(5, 3, "leaky_relu", negative_slope=0.2, device=device)
    ours.load_state_dict(native[0].state_dict())
    compare(ours, native, x, list(ours.parameters()), list(native.parameters()))


def _native_cost(name, logits, out, y):
    n = out.shape[0]
    if name == "quadratic":
        return 0.5 * TF.mse_loss(out, y, reduction="sum") / n
    if name == "cross_entropy":
        f = TF.binary_cross_entropy_with_logits if logits else TF.binary_cross_entropy
        return f(out, y, reduction="sum") / n
    logp = TF.log_softmax(out, -1) if logits else out.log()
    return -(y * logp).sum() / n


COSTS = [
    (bnn.QuadraticCost, "quadratic", False),
    (bnn.CrossEntropyCost, "cross_entropy", False),
    (bnn.CrossEntropyCost, "cross_entropy", True),
    (bnn.LogLikelihoodCost, "log_likelihood", False),
    (bnn.LogLikelihoodCost, "log_likelihood", True),
]


@pytest.mark.parametrize("target_kind", ["indices", "soft"])
@pytest.mark.parametrize("cls,name,logits", COSTS)
def test_cost_matches_torch(device, cls, name, logits, target_kind):
    n, k = 8, 5
    raw = torch.randn(n, k, device=device)
    out = (raw if logits else torch.softmax(raw, -1) * 0.9 + 0.05).requires_grad_()
    if target_kind == "indices":
        idx = torch.randint(0, k, (n,), device=device)
        y, y_dense = idx, TF.one_hot(idx, k).float()
    else:
        y = y_dense = torch.softmax(torch.randn(n, k, device=device), -1)
    cost = cls(logits=logits) if name != "quadratic" else cls()
    g = torch.rand((), device=device) + 0.5  # a random upstream gradient for a scalar
    ours = cost(out, y)
    (gb,) = torch.autograd.grad(ours, out, g)
    native = _native_cost(name, logits, out, y_dense)
    (gn,) = torch.autograd.grad(native, out, g)
    torch.testing.assert_close(ours, native, **TOL)
    torch.testing.assert_close(gb, gn, **TOL)


def test_cost_reduction_sum_is_n_times_mean():
    out, y = torch.rand(6, 3) * 0.8 + 0.1, torch.randint(0, 3, (6,))
    mean = bnn.CrossEntropyCost()(out, y)
    total = bnn.CrossEntropyCost(reduction="sum")(out, y)
    torch.testing.assert_close(total, 6 * mean)


def test_state_dict_loads_both_ways():
    native = tnn.Sequential(tnn.Linear(6, 4), tnn.Sigmoid(), tnn.Linear(4, 3))
    ours = tnn.Sequential(bnn.Dense(6, 4), tnn.Identity(), bnn.Linear(4, 3))
    assert list(ours.state_dict()) == list(native.state_dict())
    ours.load_state_dict(native.state_dict())
    x = torch.randn(5, 6)
    torch.testing.assert_close(ours(x), native(x))
    buf = io.BytesIO()
    torch.save(ours.state_dict(), buf)
    buf.seek(0)
    native2 = tnn.Sequential(tnn.Linear(6, 4), tnn.Sigmoid(), tnn.Linear(4, 3))
    native2.load_state_dict(torch.load(buf, weights_only=True))
    torch.testing.assert_close(native2(x), native(x))


def test_module_dtype_device_and_optim_step(device):
    """float64 modules, a torch.optim step, and .to(): the PyTorch conventions."""
    model = tnn.Sequential(bnn.Dense(4, 3, "tanh"), bnn.Linear(3, 2)).to(device, torch.float64)
    assert all(p.dtype == torch.float64 and p.device.type == device for p in model.parameters())
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(10, 4, dtype=torch.float64, device=device)
    y = torch.randint(0, 2, (10,), device=device)
    cost = bnn.LogLikelihoodCost(logits=True)
    before = cost(model(x), y).item()
    for _ in range(20):
        opt.zero_grad()
        cost(model(x), y).backward()
        opt.step()
    assert cost(model(x), y).item() < before


def test_repr_looks_like_torch():
    assert repr(bnn.Linear(3, 2)) == "Linear(in_features=3, out_features=2, bias=True)"
    assert "activation='relu'" in repr(bnn.Dense(3, 2, "relu"))


def test_class_index_targets_saved_as_indices_not_one_hot():
    """Like torch's cross_entropy, the cost keeps int64 indices, not N×C one-hot floats."""
    z = torch.randn(64, 10, requires_grad=True)
    y = torch.randint(0, 10, (64,))
    from benchmarks.run import saved_bytes

    _, ours, _ = saved_bytes(lambda: bnn.LogLikelihoodCost(logits=True)(z, y))
    _, native, _ = saved_bytes(lambda: TF.cross_entropy(z, y))
    assert ours == 64 * 10 * 4 + 64 * 8  # z and the indices
    assert ours <= native
