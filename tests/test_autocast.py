"""Mixed precision: under torch.autocast the matmuls of Linear/Dense run in the
autocast dtype, costs and their reductions in float32, and every gradient comes back
in its input's own dtype (float32 parameters get float32 grads)."""
from __future__ import annotations

import pytest
import torch

import bptorch
import bptorch.nn as bnn
from bptorch.functions import get_cost

LOW = [torch.bfloat16, torch.float16]
# Tolerances relative to the reference's own scale: ‖g − g_ref‖ ≤ REL·‖g_ref‖, and each
# element within REL·max|g_ref|. An absolute tolerance larger than the gradient (the
# input gradient here is ~0.01) would pass a zeroed or sign-flipped gradient; these
# cannot (their relative errors are 1 and 2). Measured: bf16 ≈ 0.005, fp16 ≈ 0.001.
REL = {torch.bfloat16: 0.05, torch.float16: 0.01}


def assert_close_to_scale(actual, expected, rel):
    """``actual`` matches ``expected`` to ``rel`` of expected's own size."""
    actual, expected = actual.detach().float(), expected.detach().float()
    scale = expected.norm()
    assert scale > 0, "a zero reference gradient cannot tell right from wrong"
    err = (actual - expected).norm() / scale
    assert err <= rel, f"relative error {float(err):.3g} > {rel}"
    torch.testing.assert_close(actual, expected, rtol=rel,
                               atol=rel * float(expected.abs().max()))


def _model(device):
    return torch.nn.Sequential(bnn.Dense(20, 16, "tanh"), bnn.Linear(16, 12), bnn.Sigmoid(),
                               bnn.Dense(12, 10, "softmax")).to(device)


@pytest.mark.parametrize("dtype", LOW)
def test_layers_run_in_autocast_dtype_grads_in_param_dtype(device, dtype):
    model = _model(device)
    x = torch.randn(32, 20, device=device, requires_grad=True)
    y = torch.randint(0, 10, (32,), device=device)
    g = torch.randn(32, 10, device=device)  # a random upstream gradient
    out32 = model(x)
    ref = torch.autograd.grad(out32, [x, *model.parameters()], g)
    with torch.autocast(device, dtype=dtype):
        out = model(x)
        loss = bnn.LogLikelihoodCost()(out, y)
        # torch's autocast policy for softmax, the last layer's σ: the autocast dtype on
        # the CPU, float32 on CUDA (its float32 list); nn.Linear + nn.Softmax give the same
        policy = torch.softmax(torch.zeros(2, 2, device=device, dtype=dtype), -1).dtype
    assert policy == (dtype if device == "cpu" else torch.float32)
    assert out.dtype == policy
    assert loss.dtype == torch.float32  # the cost runs in float32
    grads = torch.autograd.grad(out, [x, *model.parameters()], g.to(dtype))
    for gr, r in zip(grads, ref):
        assert gr.dtype == torch.float32  # each input's own dtype
        assert_close_to_scale(gr, r, REL[dtype])
    assert_close_to_scale(out, out32, REL[dtype])


@pytest.mark.parametrize("name,logits", [("quadratic", False), ("cross_entropy", False),
                                         ("cross_entropy", True), ("log_likelihood", True)])
def test_cost_upcasts_to_float32(name, logits):
    z = torch.randn(16, 10)
    a = z if logits else torch.sigmoid(z)
    a = a.to(torch.bfloat16).requires_grad_()
    y = torch.randint(0, 10, (16,))
    cost = bptorch.functional._cost
    with torch.autocast("cpu", dtype=torch.bfloat16):
        c = cost(name, a, y, logits, "mean")
    (ga,) = torch.autograd.grad(c, a)
    a32 = a.detach().float().requires_grad_()
    c32 = cost(name, a32, y, logits, "mean")  # no autocast: plain float32 reference
    (ga32,) = torch.autograd.grad(c32, a32)
    assert c.dtype == torch.float32 and ga.dtype == torch.bfloat16
    torch.testing.assert_close(c, c32, rtol=1e-6, atol=1e-6)  # same float32 math
    assert_close_to_scale(ga, ga32, REL[torch.bfloat16])


def test_network_loss_under_autocast():
    net = bptorch.Network([20, 15, 10], cost="cross_entropy")
    x, y = torch.rand(64, 20), torch.randint(0, 10, (64,))
    ref = torch.autograd.grad(net.loss(x, y), list(net.parameters()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = net.loss(x, y)
    grads = torch.autograd.grad(loss, list(net.parameters()))
    assert loss.dtype == torch.float32
    for gr, r in zip(grads, ref):
        assert gr.dtype == torch.float32
        assert_close_to_scale(gr, r, REL[torch.bfloat16])


def _train(mnist, autocast: bool) -> float:
    """1 epoch of SGD (η = 0.5, m = 10) on 5,000 MNIST images; validation accuracy in %."""
    torch.manual_seed(0)
    x, y = mnist.train[0][:5000], mnist.train[1][:5000]
    net = bptorch.Network([784, 30, 10], cost="cross_entropy")
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    for idx in torch.randperm(len(x)).split(10):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = net.loss(x[idx], y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    xv, yv = mnist.validation
    return 100 * net.evaluate(xv, yv) / len(yv)


def test_mnist_autocast_matches_float32(mnist):
    acc32, acc16 = _train(mnist, False), _train(mnist, True)
    assert acc32 > 85  # it learned
    assert abs(acc16 - acc32) < 1.5, (acc32, acc16)


def test_conv2d_under_autocast_backward_runs_and_keeps_param_dtypes():
    """The conv forward runs in bfloat16 under autocast; backward recasts what it saved
    and gives float32 parameters float32 gradients (it used to crash in oneDNN)."""
    torch.manual_seed(0)
    conv = bnn.Conv2d(2, 3, 3, padding=1)
    x = torch.randn(4, 2, 8, 9, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = conv(x)
    assert z.dtype == torch.bfloat16
    z.float().square().sum().backward()
    assert conv.weight.grad.dtype == torch.float32 and x.grad.dtype == torch.float32
    ref = torch.nn.Conv2d(2, 3, 3, padding=1)
    ref.load_state_dict(conv.state_dict())
    xr = x.detach().clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        zr = ref(xr)
    zr.float().square().sum().backward()
    for ours, theirs in [(conv.weight.grad, ref.weight.grad), (conv.bias.grad, ref.bias.grad),
                         (x.grad, xr.grad)]:
        assert_close_to_scale(ours, theirs, REL[torch.bfloat16])


def test_float64_is_left_alone_under_autocast():
    """As torch's autocast, float64 inputs and weights are not cast down."""
    layer = bnn.Dense(4, 3, "sigmoid", dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a = layer(torch.randn(5, 4, dtype=torch.float64))
    assert a.dtype == torch.float64


def test_diagnostics_under_autocast():
    from collections import OrderedDict

    from bptorch.diagnostics import record

    model = torch.nn.Sequential(OrderedDict(hidden=bnn.Dense(6, 5, "sigmoid"),
                                            out=bnn.Dense(5, 3, "sigmoid")))
    with record(model) as rec:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            a = model(torch.randn(8, 6))
        bnn.QuadraticCost()(a, torch.randint(0, 3, (8,))).backward()
    stats = rec.stats()
    assert set(stats) == {"hidden", "out"}
    assert all(s["weight_grad_norm"] > 0 for s in stats.values())
