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
    cost = bptorch.functional.cost
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


# ---------------------------------------------------------------- every layer against its twin
# One table: (bptorch module, torch twin, inputs). Under torch.autocast each bptorch layer
# gives the outputs and gradients (inputs' and parameters') in the dtypes its torch twin
# gives, and values within REL of each reference's own scale. On the CPU the autocast
# dtype is bfloat16; on CUDA float16 and bfloat16.
import torch.nn.functional as TF  # noqa: E402
from torch import nn  # noqa: E402


def _x(*shape):
    return lambda d: (torch.randn(*shape, device=d),)


def _x2(*shapes):
    return lambda d: tuple(torch.randn(*s, device=d) for s in shapes)


def _qkv(d):
    return tuple(torch.randn(5, 2, 8, device=d) for _ in range(3))


def _low(factory):  # the same inputs, already in the autocast dtype (a layer's output)
    return lambda d, dtype: tuple(t.to(dtype) for t in factory(d))


class _Seq(nn.Module):  # a torch twin made of two modules: Linear, then an activation
    def __init__(self, *mods):
        super().__init__()
        self.mods = nn.ModuleList(mods)

    def forward(self, x):
        for m in self.mods:
            x = m(x)
        return x


class _Cost(nn.Module):
    """A bptorch cost and its torch twin as modules of (output, target)."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, a, y):
        return self.fn(a, y)


def _target(d):
    return torch.randint(0, 6, (8,), device=d)


def _soft(d):
    return torch.rand(8, 6, device=d)


ACTS = {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "relu": nn.ReLU, "leaky_relu": nn.LeakyReLU,
        "softmax": lambda: nn.Softmax(-1), "gelu": nn.GELU, "silu": nn.SiLU,
        "identity": nn.Identity}
BACTS = {"sigmoid": bnn.Sigmoid, "tanh": bnn.Tanh, "relu": bnn.ReLU,
         "leaky_relu": bnn.LeakyReLU, "softmax": lambda: bnn.Softmax(-1), "gelu": bnn.GELU,
         "silu": bnn.SiLU, "identity": bnn.Identity}

# name: (bptorch factory, torch factory, inputs (device -> tuple), input dtype: "float32"
# or "low" (the autocast dtype, as a previous layer's output under autocast))
TWINS = {
    "Linear": (lambda: bnn.Linear(7, 5), lambda: nn.Linear(7, 5), _x(6, 7)),
    **{f"Dense-{a}": (lambda a=a: bnn.Dense(7, 5, a),
                      lambda a=a: _Seq(nn.Linear(7, 5), ACTS[a]()), _x(6, 7))
       for a in ("sigmoid", "relu", "softmax", "gelu")},
    **{f"act-{a}": (BACTS[a], ACTS[a], _x(6, 7)) for a in ACTS},
    **{f"act-{a}-low": (BACTS[a], ACTS[a], _low(_x(6, 7))) for a in ("sigmoid", "softmax")},
    "Conv2d": (lambda: bnn.Conv2d(3, 4, 3, padding=1), lambda: nn.Conv2d(3, 4, 3, padding=1),
               _x(2, 3, 6, 5)),
    "MaxPool2d": (lambda: bnn.MaxPool2d(2), lambda: nn.MaxPool2d(2), _x(2, 3, 6, 4)),
    "MaxPool2d-low": (lambda: bnn.MaxPool2d(2), lambda: nn.MaxPool2d(2), _low(_x(2, 3, 6, 4))),
    "AvgPool2d": (lambda: bnn.AvgPool2d(2), lambda: nn.AvgPool2d(2), _x(2, 3, 6, 4)),
    "AdaptiveAvgPool2d": (lambda: bnn.AdaptiveAvgPool2d((2, 3)),
                          lambda: nn.AdaptiveAvgPool2d((2, 3)), _x(2, 3, 6, 5)),
    # the pools over 1 and 3 dims and Upsample (issue 21); torch's CPU autocast runs the 3-d
    # pools in float32, except max_pool3d with indices (max_pool3d_with_indices)
    "MaxPool1d": (lambda: bnn.MaxPool1d(3, 2, 1), lambda: nn.MaxPool1d(3, 2, 1), _x(2, 3, 9)),
    "MaxPool3d-low": (lambda: bnn.MaxPool3d(2), lambda: nn.MaxPool3d(2),
                      _low(_x(2, 3, 4, 6, 5))),
    "MaxPool3d-indices-low": (lambda: bnn.MaxPool3d(2, return_indices=True),
                              lambda: nn.MaxPool3d(2, return_indices=True),
                              _low(_x(2, 3, 4, 6, 5))),
    "AvgPool1d": (lambda: bnn.AvgPool1d(3, 2, 1), lambda: nn.AvgPool1d(3, 2, 1), _x(2, 3, 9)),
    "AvgPool3d-low": (lambda: bnn.AvgPool3d(2, padding=1), lambda: nn.AvgPool3d(2, padding=1),
                      _low(_x(2, 3, 4, 6, 5))),
    "AdaptiveAvgPool3d-low": (lambda: bnn.AdaptiveAvgPool3d((2, 3, 2)),
                              lambda: nn.AdaptiveAvgPool3d((2, 3, 2)),
                              _low(_x(2, 3, 4, 6, 5))),
    "AdaptiveMaxPool2d": (lambda: bnn.AdaptiveMaxPool2d((2, 3)),
                          lambda: nn.AdaptiveMaxPool2d((2, 3)), _x(2, 3, 6, 5)),
    "AdaptiveMaxPool3d-low": (lambda: bnn.AdaptiveMaxPool3d(2), lambda: nn.AdaptiveMaxPool3d(2),
                              _low(_x(2, 3, 4, 6, 5))),
    "Upsample-bilinear": (lambda: bnn.Upsample(scale_factor=2, mode="bilinear"),
                          lambda: nn.Upsample(scale_factor=2, mode="bilinear"), _x(2, 3, 4, 5)),
    "Upsample-nearest-low": (lambda: bnn.Upsample(size=(7, 9)), lambda: nn.Upsample(size=(7, 9)),
                             _low(_x(2, 3, 4, 5))),
    "Upsample-trilinear-low": (lambda: bnn.Upsample(scale_factor=1.5, mode="trilinear"),
                               lambda: nn.Upsample(scale_factor=1.5, mode="trilinear"),
                               _low(_x(1, 2, 3, 4, 5))),
    "Dropout": (lambda: bnn.Dropout(0.3), lambda: nn.Dropout(0.3), _x(6, 7)),
    "Flatten": (bnn.Flatten, nn.Flatten, _x(2, 3, 4, 2)),
    "BatchNorm1d": (lambda: bnn.BatchNorm1d(5), lambda: nn.BatchNorm1d(5), _x(6, 5)),
    "BatchNorm2d": (lambda: bnn.BatchNorm2d(3), lambda: nn.BatchNorm2d(3), _x(4, 3, 5, 4)),
    "BatchNorm2d-low": (lambda: bnn.BatchNorm2d(3), lambda: nn.BatchNorm2d(3),
                        _low(_x(4, 3, 5, 4))),
    "LayerNorm": (lambda: bnn.LayerNorm(7), lambda: nn.LayerNorm(7), _x(3, 4, 7)),
    "LayerNorm-low": (lambda: bnn.LayerNorm(7), lambda: nn.LayerNorm(7), _low(_x(3, 4, 7))),
    "Embedding": (lambda: bnn.Embedding(10, 6), lambda: nn.Embedding(10, 6),
                  lambda d: (torch.randint(0, 10, (3, 4), device=d),)),
    "MultiheadAttention": (lambda: bnn.MultiheadAttention(8, 2),
                           lambda: nn.MultiheadAttention(8, 2), _qkv),
    "RNN": (lambda: bnn.RNN(4, 6), lambda: nn.RNN(4, 6), _x(5, 2, 4)),
    "LSTM": (lambda: bnn.LSTM(4, 6), lambda: nn.LSTM(4, 6), _x(5, 2, 4)),
    "GRU": (lambda: bnn.GRU(4, 6), lambda: nn.GRU(4, 6), _x(5, 2, 4)),
    "QuadraticCost": (
        lambda: bnn.QuadraticCost(),
        lambda: _Cost(lambda a, y: 0.5 * TF.mse_loss(a, y, reduction="sum") / a.shape[0]),
        lambda d: (torch.rand(8, 6, device=d), _soft(d))),
    "CrossEntropyCost": (
        lambda: bnn.CrossEntropyCost(),
        lambda: _Cost(lambda a, y: TF.binary_cross_entropy(a, y, reduction="sum") / a.shape[0]),
        lambda d: (torch.rand(8, 6, device=d), _soft(d))),
    "CrossEntropyCost-logits": (
        lambda: bnn.CrossEntropyCost(logits=True),
        lambda: _Cost(lambda z, y: TF.binary_cross_entropy_with_logits(z, y, reduction="sum")
                      / z.shape[0]),
        lambda d: (torch.randn(8, 6, device=d), _soft(d))),
    "LogLikelihoodCost-logits": (
        lambda: bnn.LogLikelihoodCost(logits=True),
        lambda: _Cost(TF.cross_entropy), lambda d: (torch.randn(8, 6, device=d), _target(d))),
    "LogLikelihoodCost": (
        lambda: bnn.LogLikelihoodCost(),
        lambda: _Cost(lambda a, y: TF.nll_loss(torch.log(a), y)),
        lambda d: (torch.softmax(torch.randn(8, 6, device=d), -1), _target(d))),
}
# the convolutions of any d (bptorch/functions/conv.py, last section)
TWINS.update({
    "Conv1d": (lambda: bnn.Conv1d(3, 4, 3, stride=2, padding=1, padding_mode="reflect"),
               lambda: nn.Conv1d(3, 4, 3, stride=2, padding=1, padding_mode="reflect"),
               _x(2, 3, 9)),
    "Conv3d": (lambda: bnn.Conv3d(2, 4, (2, 3, 2), padding=1),
               lambda: nn.Conv3d(2, 4, (2, 3, 2), padding=1), _x(2, 2, 4, 5, 3)),
    "ConvTranspose1d": (lambda: bnn.ConvTranspose1d(3, 4, 3, stride=2, output_padding=1),
                        lambda: nn.ConvTranspose1d(3, 4, 3, stride=2, output_padding=1),
                        _x(2, 3, 6)),
    "ConvTranspose2d": (lambda: bnn.ConvTranspose2d(3, 4, (3, 2), stride=(2, 1), padding=1),
                        lambda: nn.ConvTranspose2d(3, 4, (3, 2), stride=(2, 1), padding=1),
                        _x(2, 3, 5, 4)),
    "ConvTranspose3d": (lambda: bnn.ConvTranspose3d(2, 3, 2, stride=2),
                        lambda: nn.ConvTranspose3d(2, 3, 2, stride=2), _x(2, 2, 3, 2, 3)),
})
# issue 21: the recurrent cells, LSTM's projection, MultiheadAttention's options and the
# decoder layer (tests/test_seq_new.py has their other checks)
TWINS.update({
    # (x, h): with h = 0, ∂C/∂W_hh = δᵀ h would be 0 (LSTMCell's (h, c) pair: test_seq_new)
    "RNNCell": (lambda: bnn.RNNCell(4, 6), lambda: nn.RNNCell(4, 6), _x2((3, 4), (3, 6))),
    "RNNCell-relu": (lambda: bnn.RNNCell(4, 6, nonlinearity="relu"),
                     lambda: nn.RNNCell(4, 6, nonlinearity="relu"), _x2((3, 4), (3, 6))),
    "GRUCell": (lambda: bnn.GRUCell(4, 6), lambda: nn.GRUCell(4, 6), _x2((3, 4), (3, 6))),
    "MultiheadAttention-options": (
        lambda: bnn.MultiheadAttention(8, 2, add_bias_kv=True, add_zero_attn=True),
        lambda: nn.MultiheadAttention(8, 2, add_bias_kv=True, add_zero_attn=True), _qkv),
    "TransformerDecoderLayer": (
        lambda: bnn.TransformerDecoderLayer(8, 2, 12, dropout=0.0),
        lambda: nn.TransformerDecoderLayer(8, 2, 12, dropout=0.0),
        lambda d: (torch.randn(5, 2, 8, device=d), torch.randn(4, 2, 8, device=d))),
})
# costs also take an output already in the autocast dtype (a Linear's output)
TWINS.update({f"{k}-low": (o, t, (lambda f: lambda d, dtype: (f(d)[0].to(dtype), f(d)[1]))(i))
              for k, (o, t, i) in list(TWINS.items()) if "Cost" in k})
# Where torch's twin cannot run under autocast, bptorch's is compared with the twin run
# without it, and its outputs must come in the dtype given here: torch's LSTM under CPU
# autocast (oneDNN: "could not create a primitive descriptor for the LSTM forward"),
# where bptorch's follows torch's CUDA rule (lower precision); torch's BCELoss, which
# refuses CUDA autocast ("unsafe to autocast"), where bptorch's cost runs in float32 as
# every other loss.
NO_TWIN = {("cpu", "LSTM"): "autocast",
           ("cuda", "CrossEntropyCost"): torch.float32,
           ("cuda", "CrossEntropyCost-low"): torch.float32}
# torch's CUDA dropout draws another mask than its CPU one (which bptorch's draws): there
# only the dtypes are compared
DTYPES_ONLY = {("cuda", "Dropout")}
DEVICE_DTYPES = [("cpu", torch.bfloat16)] + [
    pytest.param("cuda", dt, marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                      reason="CUDA not available"))
    for dt in (torch.float16, torch.bfloat16)]


def _flat(out) -> list:
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for o in out if o is not None for t in _flat(o)]


def _copy_params(ours: nn.Module, theirs: nn.Module) -> None:
    with torch.no_grad():
        for p, q in zip(ours.parameters(), theirs.parameters(), strict=True):
            q.copy_(p)


def _run(module, inputs, device, dtype, autocast, seed=0):
    """Outputs, and the gradients of inputs and parameters under a random upstream
    gradient (drawn in each output's own dtype)."""
    inputs = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
    torch.manual_seed(seed)  # the same dropout masks for both
    with torch.autocast(device, dtype=dtype, enabled=autocast):
        outs = _flat(module(*inputs))
    gen = torch.Generator(device).manual_seed(1)
    grads_out = [torch.randn(o.shape, generator=gen, device=device).to(o.dtype) for o in outs]
    diff = [(o, g) for o, g in zip(outs, grads_out) if o.requires_grad]
    leaves = [t for t in inputs if t.requires_grad] + list(module.parameters())
    grads = torch.autograd.grad([o for o, _ in diff], leaves, [g for _, g in diff],
                                allow_unused=True)
    return outs, [(t.dtype, g) for t, g in zip(leaves, grads)]


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("name", list(TWINS))
def test_every_layer_matches_its_torch_twin_under_autocast(name, device, dtype):
    make_ours, make_theirs, make_inputs = TWINS[name]
    torch.manual_seed(0)
    ours, theirs = make_ours().to(device), make_theirs().to(device)
    _copy_params(ours, theirs)
    low = name.endswith("-low")
    inputs = make_inputs(device, dtype) if low else make_inputs(device)
    rel = REL[dtype] * (2 if name.startswith(("RNN", "LSTM", "GRU", "Multihead")) else 1)
    got_out, got_grads = _run(ours, inputs, device, dtype, True)
    no_twin = NO_TWIN.get((device, name))
    want_out, want_grads = _run(theirs, inputs, device, dtype, no_twin is None)
    values = (device, name) not in DTYPES_ONLY
    assert len(got_out) == len(want_out)
    for g, w in zip(got_out, want_out):
        want_dtype = w.dtype if no_twin is None else dtype if no_twin == "autocast" else no_twin
        assert g.dtype == want_dtype, f"{name}: output {g.dtype}, torch's {want_dtype}"
        if g.is_floating_point() and values:
            assert_close_to_scale(g, w, rel)
        elif values:
            assert torch.equal(g, w)
    for (t_dtype, g), (_, w) in zip(got_grads, want_grads):
        assert (g is None) == (w is None), name
        if g is not None:
            assert g.dtype == w.dtype == t_dtype  # each gradient in its own input's dtype
            if values:
                assert_close_to_scale(g, w, rel)
