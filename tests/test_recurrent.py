"""RNN, LSTM and GRU: gradcheck/gradgradcheck of each layer Function in float64, agreement
with torch's twins under random upstream gradients on every output (LSTM: output, h_n and
c_n) and every input, state and parameter gradient, in each variant (batch_first both ways,
2 layers, bidirectional, given and default initial states, no bias, unbatched), state_dicts
both ways, dropout between layers aligned with torch's on the CPU, bad input, and broken
backwards that the checks reject."""
from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn
from torch.autograd import gradcheck, gradgradcheck

from bptorch import nn as bnn
from bptorch.functions import recurrent as rec
from bptorch.functions.recurrent import GRULayerFunction, LSTMLayerFunction, RNNLayerFunction

F64 = torch.float64


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


T, N, H_IN, H = 4, 3, 5, 2  # non-square everywhere


def _layer_args(device, gates, bias=True):
    x = torch.randn(T, N, H_IN, dtype=F64, device=device, requires_grad=True)
    h0 = torch.randn(N, H, dtype=F64, device=device, requires_grad=True)
    c0 = torch.randn(N, H, dtype=F64, device=device, requires_grad=True)
    shapes = [(gates * H, H_IN), (gates * H, H)] + ([(gates * H,)] * 2 if bias else [])
    params = [torch.randn(*s, dtype=F64, device=device, requires_grad=True) for s in shapes]
    return x, h0, c0, params + [None] * (4 - len(params))


def _layer_fn(kind):
    """(function of (x, h0, [c0], W_ih, W_hh, b_ih, b_hh) returning the differentiable
    outputs, whether it takes c0)."""
    if kind in ("tanh", "relu"):
        return lambda *a: RNNLayerFunction.apply(*a, kind), False
    if kind == "lstm":
        return lambda *a: LSTMLayerFunction.apply(*a)[:3], True
    return lambda *a: GRULayerFunction.apply(*a)[:2], False


GATES = {"tanh": 1, "relu": 1, "lstm": 4, "gru": 3}


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("kind", list(GATES))
def test_layer_gradcheck(device, kind, bias):
    x, h0, c0, params = _layer_args(device, GATES[kind], bias)
    fn, takes_c = _layer_fn(kind)
    given = [p for p in params if p is not None]
    args = (x, h0, c0, *given) if takes_c else (x, h0, *given)
    full = (lambda *a: fn(*a, None, None)) if not bias else fn
    if kind == "relu":  # away from the kink: |z| not tiny for these seeds is all we need
        assert gradcheck(full, args)
        return  # relu'' = 0 almost everywhere; its double backward is covered by tanh's
    assert gradcheck(full, args)
    assert gradgradcheck(full, args)


# ---------------------------------------------------------------- against torch's modules
VARIANTS = {
    "default": {},
    "batch_first": dict(batch_first=True),
    "2-layers": dict(num_layers=2),
    "bidirectional": dict(bidirectional=True),
    "2-layers-bidirectional-batch_first": dict(num_layers=2, bidirectional=True,
                                               batch_first=True),
    "given-state": dict(state=True),
    "given-state-2-layers-bidirectional": dict(state=True, num_layers=2, bidirectional=True),
    "no-bias": dict(bias=False),
    "unbatched": dict(unbatched=True),
    "unbatched-given-state": dict(unbatched=True, state=True, num_layers=2),
}
MODULES = {"rnn-tanh": ("RNN", {}), "rnn-relu": ("RNN", dict(nonlinearity="relu")),
           "lstm": ("LSTM", {}), "gru": ("GRU", {})}


def _twins(device, name, kw, dtype=F64):
    cls, extra = MODULES[name]
    torch.manual_seed(2)
    ours = getattr(bnn, cls)(H_IN, 3, **extra, **kw, device=device, dtype=dtype)
    torch.manual_seed(2)
    theirs = getattr(nn, cls)(H_IN, 3, **extra, **kw, device=device, dtype=dtype)
    return ours, theirs


def _flat(out):
    """(output, h_n) or (output, (h_n, c_n)) as a flat list."""
    output, state = out
    return [output, *state] if isinstance(state, tuple) else [output, state]


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("name", list(MODULES))
def test_module_matches_torch(device, name, variant):
    v = dict(VARIANTS[variant])
    state, unbatched = v.pop("state", False), v.pop("unbatched", False)
    ours, theirs = _twins(device, name, v)
    for a, b in zip(ours.state_dict().values(), theirs.state_dict().values()):
        assert torch.equal(a, b)  # torch's init: the same draws in the same order
    D = 2 if v.get("bidirectional") else 1
    L = v.get("num_layers", 1)
    shape = (T, H_IN) if unbatched else ((N, T, H_IN) if v.get("batch_first") else (T, N, H_IN))
    x = torch.randn(shape, dtype=F64, device=device, requires_grad=True)
    wrt, hx = [x], None
    if state:
        s_shape = (L * D, 3) if unbatched else (L * D, N, 3)
        h0 = torch.randn(s_shape, dtype=F64, device=device, requires_grad=True)
        c0 = torch.randn(s_shape, dtype=F64, device=device, requires_grad=True)
        hx = (h0, c0) if name == "lstm" else h0
        wrt += [h0, c0] if name == "lstm" else [h0]
    outs1, outs2 = _flat(ours(x, hx)), _flat(theirs(x, hx))
    for a, b in zip(outs1, outs2, strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)
    upstream = [torch.randn_like(o) for o in outs1]  # on output, h_n (and c_n) at once
    g1 = torch.autograd.grad(outs1, [*wrt, *ours.parameters()], upstream)
    g2 = torch.autograd.grad(outs2, [*wrt, *theirs.parameters()], upstream)
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("name", list(MODULES))
def test_each_output_alone(name):
    """Upstream gradient on one output at a time (None on the others)."""
    ours, theirs = _twins("cpu", name, dict(num_layers=2))
    x = torch.randn(T, N, H_IN, dtype=F64, requires_grad=True)
    outs1, outs2 = _flat(ours(x)), _flat(theirs(x))
    for i in range(len(outs1)):
        g = torch.randn_like(outs1[i])
        a = torch.autograd.grad(outs1[i], [x, *ours.parameters()], g, retain_graph=True)
        b = torch.autograd.grad(outs2[i], [x, *theirs.parameters()], g, retain_graph=True)
        for p, q in zip(a, b):
            torch.testing.assert_close(p, q, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("name", list(MODULES))
def test_state_dict_both_ways_and_float32(name):
    ours, theirs = _twins("cpu", name, dict(num_layers=2, bidirectional=True), torch.float32)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert [n for n, _ in ours.named_parameters()] == theirs._flat_weights_names \
        == ours._flat_weights_names
    with torch.no_grad():
        for p in theirs.parameters():
            p.normal_()
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(T, N, H_IN)
    for a, b in zip(_flat(ours(x)), _flat(theirs(x))):
        torch.testing.assert_close(a, b)
    with torch.no_grad():
        for p in ours.parameters():
            p.normal_()
    theirs.load_state_dict(ours.state_dict())
    for a, b in zip(_flat(ours(x)), _flat(theirs(x))):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", list(MODULES))
def test_dropout_between_layers_is_torchs_on_cpu(name):
    """torch's CPU RNNs draw one Bernoulli mask per layer output but the last, as
    bptorch's dropout does: the same seed gives the same masks, outputs and gradients."""
    ours, theirs = _twins("cpu", name, dict(num_layers=3, dropout=0.5, bidirectional=True))
    x = torch.randn(T, N, H_IN, dtype=F64, requires_grad=True)
    results = []
    for m in (ours, theirs):
        torch.manual_seed(11)
        outs = _flat(m(x))
        g = [torch.ones_like(o) * (i + 1) for i, o in enumerate(outs)]
        results.append((*outs, *torch.autograd.grad(outs, [x, *m.parameters()], g)))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)
    ours.eval(), theirs.eval()  # no dropout in eval mode
    for a, b in zip(_flat(ours(x)), _flat(theirs(x))):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


def test_dropout_between_layers_statistics(device):
    """Off the CPU torch's (cuDNN) masks cannot be aligned: check that our layer-1 input is
    the layer-0 output times a {0, 1/(1 − p)} mask with P(0) ≈ p, by running layer 1 on
    its own with the state of a seeded draw."""
    torch.manual_seed(0)
    p = 0.3
    m = bnn.RNN(4, 64, num_layers=2, dropout=p, device=device, dtype=F64)
    x = torch.randn(20, 16, 4, dtype=F64, device=device)
    torch.manual_seed(5)
    out, _ = m(x)
    first, _ = RNNLayerFunction.apply(x, torch.zeros(16, 64, dtype=F64, device=device),
                                      *m.all_weights[0], "tanh")
    torch.manual_seed(5)
    mask = torch.empty_like(first).bernoulli_(1 - p) / (1 - p)  # the draw the module made
    again, _ = RNNLayerFunction.apply(first * mask, torch.zeros(16, 64, dtype=F64,
                                      device=device), *m.all_weights[1], "tanh")
    torch.testing.assert_close(out, again)
    frac = (mask == 0).double().mean().item()
    assert abs(frac - p) < 0.02


def test_signatures_follow_torch():
    names = lambda f: list(inspect.signature(f).parameters)[1:]  # noqa: E731
    base = ["input_size", "hidden_size", "num_layers"]
    tail = ["bias", "batch_first", "dropout", "bidirectional"]
    assert names(bnn.RNN.__init__) == [*base, "nonlinearity", *tail, "device", "dtype"]
    assert names(bnn.LSTM.__init__) == [*base, *tail, "proj_size", "device", "dtype"]
    assert names(bnn.GRU.__init__) == [*base, *tail, "device", "dtype"]
    # positional, as torch's *args: RNN(input_size, hidden_size, num_layers, nonlinearity, bias)
    ours, theirs = bnn.RNN(3, 4, 2, "relu", False), nn.RNN(3, 4, 2, "relu", False)
    assert (ours.nonlinearity, ours.bias, ours.num_layers) == \
        (theirs.nonlinearity, theirs.bias, theirs.num_layers)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert repr(bnn.LSTM(3, 4, 2, batch_first=True)) == repr(nn.LSTM(3, 4, 2, batch_first=True))


def test_bad_input():
    from torch.nn.utils.rnn import pack_padded_sequence

    with pytest.raises(ValueError, match="proj_size has to be smaller"):  # (implemented now)
        bnn.LSTM(3, 4, proj_size=4)
    with pytest.raises(ValueError, match="Unknown nonlinearity"):
        bnn.RNN(3, 4, nonlinearity="sigmoid")
    with pytest.raises(ValueError, match="dropout should be a number"):
        bnn.GRU(3, 4, 2, dropout=1.5)
    with pytest.raises(ValueError, match="hidden_size must be greater than zero"):
        bnn.GRU(3, 0)
    with pytest.warns(UserWarning, match="num_layers greater than 1"):
        bnn.LSTM(3, 4, dropout=0.5)
    m = bnn.LSTM(3, 4, num_layers=2)
    x = torch.randn(5, 2, 3)
    with pytest.raises(ValueError, match="input_size=3"):
        m(torch.randn(5, 2, 4))
    with pytest.raises(ValueError, match="2-dim tensor|got a 1-dim"):
        m(torch.randn(5))
    with pytest.raises(ValueError, match=r"h_0 of shape .* = \(2, 2, 4\)"):
        m(x, (torch.zeros(1, 2, 4), torch.zeros(2, 2, 4)))
    with pytest.raises(ValueError, match=r"c_0 of shape"):
        m(x, (torch.zeros(2, 2, 4), torch.zeros(2, 3, 4)))
    with pytest.raises(ValueError, match="3-D too"):
        m(x, (torch.zeros(2, 4), torch.zeros(2, 4)))
    with pytest.raises(TypeError, match="tuple"):
        m(x, torch.zeros(2, 2, 4))
    with pytest.raises(TypeError, match="floating-point"):
        m(x.long())
    with pytest.raises(TypeError, match="weight_ih_l0 has dtype torch.float32"):
        m(x.double())
    packed = pack_padded_sequence(x, torch.tensor([5, 3]))
    with pytest.raises(NotImplementedError, match="PackedSequence"):
        m(packed)


# ---------------------------------------------------------------- broken backwards
def test_gradcheck_rejects_a_broken_backward(monkeypatch):
    x, h0, _, params = _layer_args("cpu", 1)
    rnn = lambda *a: RNNLayerFunction.apply(*a, "tanh")  # noqa: E731
    assert gradcheck(rnn, (x, h0, *params))
    real_weight_grads = rec._weight_grads

    def bp4_over_wrong_axis(delta_ih, delta_hh, x, h_prev, w_ih, need):
        grads = list(real_weight_grads(delta_ih, delta_hh, x, h_prev, w_ih, need))
        # Σ over the batch at each step, then the last step only: BP4 not summed over t
        grads[2] = torch.einsum("tnh,tnk->thk", delta_hh, h_prev)[-1]
        return tuple(grads)

    monkeypatch.setattr(rec, "_weight_grads", bp4_over_wrong_axis)
    assert not gradcheck(rnn, (x, h0, *params), raise_exception=False)
