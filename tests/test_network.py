"""Network.backprop (the explicit engine) against torch autograd: costs, per-layer
deltas and gradients, for every cost/activation pair; and update_mini_batch against
torch.optim.SGD."""
from __future__ import annotations

import pytest
import torch

import bptorch
from bptorch import Network

from helpers import book_sgd_step

COSTS = ["quadratic", "cross_entropy", "log_likelihood"]
# gelu and silu take σ' from z^l, the others from a^l; softmax as a hidden layer too
ACTS = ["sigmoid", "tanh", "relu", "leaky_relu", "identity", "gelu", "silu", "softmax"]
SIZES = [6, 5, 4, 3]


def make(cost, act, device="cpu", dtype=torch.float64):
    torch.manual_seed(0)
    net = Network(SIZES, activation=act, cost=cost, init="scaled", device=device, dtype=dtype)
    x = torch.randn(9, SIZES[0], dtype=dtype, device=device)
    y = torch.randint(0, SIZES[-1], (9,), device=device)
    return net, x, y


def autograd_reference(net, x, y):
    """∂C/∂z^l for every layer, the cost and the parameter gradients, by torch autograd
    over plain torch ops (no bptorch Function involved)."""
    zs, a = [], x
    for layer in net.layers:
        z = torch.nn.functional.linear(a, layer.weight, layer.bias)
        z.retain_grad()
        zs.append(z)
        a = torch.softmax(z, -1) if layer.activation.name == "softmax" else {
            "sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu,
            "leaky_relu": lambda t: torch.nn.functional.leaky_relu(t, 0.01),
            "gelu": torch.nn.functional.gelu, "silu": torch.nn.functional.silu,
            "identity": lambda t: t}[layer.activation.name](z)
    onehot = torch.nn.functional.one_hot(y, a.shape[1]).to(a.dtype)
    n = x.shape[0]
    if net.cost == "quadratic":
        c = 0.5 * ((a - onehot) ** 2).sum() / n
    elif net.cost == "cross_entropy":
        c = -(onehot * a.log() + (1 - onehot) * (1 - a).log()).sum() / n
    else:
        c = -(onehot * a.log()).sum() / n
    params = [p for layer in net.layers for p in (layer.weight, layer.bias)]
    grads = torch.autograd.grad(c, params + zs)
    return c, grads[: len(params)], grads[len(params):]


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("cost", COSTS)
def test_backprop_matches_autograd(cost, act):
    net, x, y = make(cost, act)
    c_ref, g_ref, dz_ref = autograd_reference(net, x, y)
    c = net.backprop(x, y)
    torch.testing.assert_close(c, c_ref.detach())
    grads = [p.grad for p in net.parameters()]
    for g, gr in zip(grads, g_ref):
        torch.testing.assert_close(g, gr)
    # net.deltas are per example: the batch-mean cost's ∂C/∂z^l is δ^l / N
    for d, dz in zip(net.deltas, dz_ref):
        assert d.shape == dz.shape
        torch.testing.assert_close(d / x.shape[0], dz)
    # and the batch's ∂C/∂b is the mean of δ^l over rows (BP3)
    for layer, d in zip(net.layers, net.deltas):
        torch.testing.assert_close(layer.bias.grad, d.mean(0))


def test_backprop_accepts_one_hot_and_works_under_no_grad(device):
    net, x, y = make("cross_entropy", "sigmoid", device)
    with torch.no_grad():
        c1 = net.backprop(x, y)
    g1 = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    c2 = net.backprop(x, torch.nn.functional.one_hot(y, 3).double())
    torch.testing.assert_close(c1, c2)
    for a, b in zip(g1, net.parameters()):
        torch.testing.assert_close(a, b.grad)


def test_backprop_accumulates_like_backward():
    net, x, y = make("quadratic", "sigmoid")
    net.backprop(x, y)
    once = [p.grad.clone() for p in net.parameters()]
    net.backprop(x, y)
    for g, p in zip(once, net.parameters()):
        torch.testing.assert_close(p.grad, 2 * g)


def test_autograd_path_matches_explicit_engine(device):
    """net.loss(x, y).backward() through the Dense Functions gives backprop's gradients."""
    for cost in COSTS:
        net, x, y = make(cost, "tanh", device)
        net.loss(x, y).backward()
        auto = [p.grad.clone() for p in net.parameters()]
        net.zero_grad()
        net.backprop(x, y)
        for a, p in zip(auto, net.parameters()):
            torch.testing.assert_close(a, p.grad)


@pytest.mark.parametrize("optimizer", [
    lambda ps: torch.optim.SGD(ps, lr=0.5, momentum=0.9),
    lambda ps: torch.optim.Adam(ps, lr=0.01),
])
def test_backprop_drives_torch_optim(optimizer):
    """Three optimizer steps fed by backprop equal three fed by autograd."""
    nets = [make("cross_entropy", "sigmoid")[0] for _ in range(2)]
    _, x, y = make("cross_entropy", "sigmoid")
    opts = [optimizer(n.parameters()) for n in nets]
    for _ in range(3):
        for i, (net, opt) in enumerate(zip(nets, opts)):
            opt.zero_grad()
            if i == 0:
                net.backprop(x, y)
            else:
                net.loss(x, y).backward()
            opt.step()
    for p, q in zip(nets[0].parameters(), nets[1].parameters()):
        torch.testing.assert_close(p, q)


@pytest.mark.parametrize("act", ["sigmoid", "gelu"])
@pytest.mark.parametrize("cost", COSTS)
def test_update_mini_batch_is_sgd_with_weight_decay(cost, act):
    """The fused update equals backprop + the book's rule W ← (1 − ηλ/n)W − η∇W."""
    eta, lmbda, n = 0.7, 5.0, 100
    fused, x, y = make(cost, act)
    plain, _, _ = make(cost, act)
    fused.update_mini_batch(x, y, eta, lmbda, n)
    plain.backprop(x, y)
    book_sgd_step(plain, eta, lmbda, n)
    for p, q in zip(fused.parameters(), plain.parameters()):
        torch.testing.assert_close(p, q)
    for d_fused, d_plain in zip(fused.deltas, plain.deltas):
        torch.testing.assert_close(d_fused, d_plain)


def test_network_structure_and_init():
    net = Network([784, 30, 10], cost="log_likelihood", init="large")
    assert isinstance(net.layers, torch.nn.ModuleList)
    assert all(isinstance(layer, bptorch.nn.Dense) for layer in net.layers)
    assert [layer.activation.name for layer in net.layers] == ["sigmoid", "softmax"]
    assert list(net.state_dict()) == ["layers.0.weight", "layers.0.bias",
                                      "layers.1.weight", "layers.1.bias"]
    assert 0.9 < net.layers[0].weight.std() < 1.1  # large: N(0, 1)
    scaled = Network([784, 30, 10], init="scaled")
    assert abs(scaled.layers[0].weight.std() * 784 ** 0.5 - 1) < 0.1  # N(0, 1/n_in)
    assert 0.7 < scaled.layers[0].bias.std() < 1.3


def test_network_bad_arguments():
    with pytest.raises(ValueError, match="large, scaled"):
        Network([3, 2], init="xavier")
    with pytest.raises(ValueError, match="quadratic, cross_entropy, log_likelihood"):
        Network([3, 2], cost="mse")
    with pytest.raises(ValueError, match="sigmoid, tanh"):
        Network([3, 2, 2], activation="swish")
    net = Network([4, 3, 2])
    with pytest.raises(ValueError, match="in_features=4"):
        net.backprop(torch.randn(5, 3), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"class indices must lie in \[0, 1\]"):
        net.backprop(torch.randn(5, 4), torch.full((5,), 2))


def test_presets_are_one_table():
    """experiments/mnist.py and benchmarks/run.py read the book's presets from
    bptorch.presets: the same objects, not copies that could drift apart."""
    pytest.importorskip("numpy")
    from benchmarks import run
    from experiments import mnist

    from bptorch.presets import BOOK_ACCURACY, PRESETS

    assert mnist.PRESETS is PRESETS and mnist.BOOK_ACCURACY is BOOK_ACCURACY
    assert list(run.PRESETS) == ["ch1", "ch3"]
    assert all(run.PRESETS[k] is PRESETS[k] for k in run.PRESETS)
    assert PRESETS["ch1"]["sizes"] == [784, 30, 10] and PRESETS["ch3"]["lmbda"] == 5.0
