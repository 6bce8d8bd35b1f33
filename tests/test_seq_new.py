"""Issue 21 (items 2 and 4), the recurrent and attention families: RNNCell, LSTMCell and
GRUCell; LSTM's proj_size; MultiheadAttention's add_bias_kv, add_zero_attn, kdim/vdim and
torch's output strides; the Transformer decoder family as composites of twins; and Linear
on (*, n_in) input followed by an in-place ReLU (the swin_v2 crash).

Each is compared with its torch.nn twin in float64 under random upstream gradients (outputs
and every input, state and parameter gradient), a first-order gradient taken with
``create_graph=True`` and the second-order product through it, ``torch.func.grad`` with
respect to the input, gradcheck/gradgradcheck, autocast on the CPU in bfloat16, the
from_torch_nn/to_torch_nn round trip, and bad input."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.autograd import gradcheck, gradgradcheck

import bptorch.functional as BF
from bptorch import nn as bnn
from bptorch.convert import from_torch_nn, to_torch_nn
from bptorch.functions import recurrent as rec

F64 = torch.float64
# torch's own TransformerEncoder says why it takes no nested tensors for the torch twins
pytestmark = [pytest.mark.filterwarnings("ignore:enable_nested_tensor is True"),
              pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask"),
              pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _flat(out) -> list[torch.Tensor]:
    """Every tensor of an output: a tensor, or nested tuples of tensors (None dropped)."""
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for o in out if o is not None for t in _flat(o)]


def _close(ours, theirs, atol=1e-12, rtol=1e-10):
    ours, theirs = list(ours), list(theirs)
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        if a is None or b is None:
            assert a is None and b is None
        else:
            torch.testing.assert_close(a, b, atol=atol, rtol=rtol)


def _grads(outputs, inputs, upstream, create_graph=False):
    return torch.autograd.grad(outputs, inputs, upstream, create_graph=create_graph,
                               allow_unused=True)


def _parity(ours, theirs, inputs, call, atol=1e-12, rtol=1e-10):
    """Forward, then every input and parameter gradient under one random upstream gradient
    per output; returns the outputs."""
    out1, out2 = _flat(call(ours, *inputs)), _flat(call(theirs, *inputs))
    _close(out1, out2, atol, rtol)
    upstream = [torch.randn_like(o) for o in out1]
    wrt1 = [*inputs, *ours.parameters()]
    wrt2 = [*inputs, *theirs.parameters()]
    _close(_grads(out1, wrt1, upstream), _grads(out2, wrt2, upstream), atol, rtol)
    return out1, out2


def _create_graph_parity(ours, theirs, inputs, call, atol=1e-10, rtol=1e-8):
    """The first-order gradient taken with create_graph=True equals torch's, and so does
    the gradient of ⟨that gradient, v⟩ (a Hessian-vector product through the backward)."""
    grads = []
    for m in (ours, theirs):
        out = _flat(call(m, *inputs))
        torch.manual_seed(11)
        upstream = [torch.randn_like(o) for o in out]
        wrt = [*inputs, *m.parameters()]
        first = _grads(out, wrt, upstream, create_graph=True)
        torch.manual_seed(12)
        v = [torch.randn_like(w) for w in wrt]
        dot = sum((g * vi).sum() for g, vi in zip(first, v) if g is not None)
        second = _grads(dot, wrt, None)
        grads.append((first, second))
    _close(grads[0][0], grads[1][0], atol, rtol)
    _close([g if g is not None else torch.zeros_like(w) for g, w in
            zip(grads[0][1], [*inputs, *ours.parameters()])],
           [g if g is not None else torch.zeros_like(w) for g, w in
            zip(grads[1][1], [*inputs, *theirs.parameters()])], atol, rtol)


def _func_grad_parity(ours, theirs, x, call, atol=1e-12, rtol=1e-10):
    """torch.func.grad with respect to the input equals torch's."""
    w = torch.randn_like(_flat(call(theirs, x))[0])

    def loss(m):
        return lambda t: (_flat(call(m, t))[0] * w).sum()

    _close([torch.func.grad(loss(ours))(x.detach())],
           [torch.func.grad(loss(theirs))(x.detach())], atol, rtol)


def _seeded(make, seed=3):
    torch.manual_seed(seed)
    return make()


def _same_init(ours, theirs):
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for a, b in zip(ours.state_dict().values(), theirs.state_dict().values()):
        # torch's init: the same draws in the same order (bptorch's Linear computes the bound
        # 1/√n directly, torch's kaiming_uniform_ as gain·√(3/n): a last-bit difference)
        torch.testing.assert_close(a, b, atol=0, rtol=1e-15)


# ================================================================ Linear (the swin_v2 crash)
def test_linear_on_3d_input_is_no_view_and_an_inplace_relu_after_it_trains_as_torch():
    ours = _seeded(lambda: bnn.Linear(6, 5, dtype=F64))
    theirs = _seeded(lambda: nn.Linear(6, 5, dtype=F64))
    x = torch.randn(2, 3, 4, 6, dtype=F64, requires_grad=True)
    for shape in ((2, 3, 4, 6), (3, 4, 6), (4, 6), (6,)):
        z = ours(x[(0,) * (4 - len(shape))])
        assert not z._is_view()
        assert z.stride() == theirs(x[(0,) * (4 - len(shape))]).stride()
    # Linear → ReLU(inplace=True) → Linear, as swin_v2's MLP: trains, equals torch
    model_t = nn.Sequential(theirs, nn.ReLU(inplace=True), nn.Linear(5, 2, dtype=F64))
    model_b = from_torch_nn(model_t)
    assert isinstance(model_b[0], bnn.Linear)
    model_b[1] = nn.ReLU(inplace=True)  # torch's in-place ReLU on bptorch's output
    x = torch.randn(3, 4, 6, dtype=F64, requires_grad=True)
    _parity(model_b, model_t, (x,), lambda m, t: m(t))
    for _ in range(3):  # three steps of plain SGD, by hand
        for m in (model_b, model_t):
            m.zero_grad()
            m(x).square().mean().backward()
            with torch.no_grad():
                for p in m.parameters():
                    p -= 0.1 * p.grad
    _close(model_b.parameters(), model_t.parameters())
    # and bptorch's own in-place ReLU after a bptorch Linear on 3-D input
    y = bnn.Linear(6, 5, dtype=F64)(x)
    torch.relu_(y).sum().backward()
    assert x.grad is not None


def test_dense_identity_on_3d_input_is_no_view():
    d = bnn.Dense(6, 5, activation="identity", dtype=F64)
    x = torch.randn(3, 4, 6, dtype=F64, requires_grad=True)
    a = d(x)
    assert not a._is_view()
    torch.relu_(a).sum().backward()
    ref = torch.relu(x @ d.weight.T + d.bias)
    torch.testing.assert_close(a, ref)


# ================================================================ the recurrent cells
CELLS = {
    "rnn-tanh": ("RNNCell", {}), "rnn-relu": ("RNNCell", dict(nonlinearity="relu")),
    "rnn-no-bias": ("RNNCell", dict(bias=False)),
    "lstm": ("LSTMCell", {}), "lstm-no-bias": ("LSTMCell", dict(bias=False)),
    "gru": ("GRUCell", {}), "gru-no-bias": ("GRUCell", dict(bias=False)),
}
H_IN, H, N = 5, 3, 4  # non-square everywhere


def _cell_twins(name, dtype=F64):
    cls, kw = CELLS[name]
    ours = _seeded(lambda: getattr(bnn, cls)(H_IN, H, **kw, dtype=dtype))
    theirs = _seeded(lambda: getattr(nn, cls)(H_IN, H, **kw, dtype=dtype))
    return ours, theirs


def _cell_inputs(name, batched=True, given=True, dtype=F64):
    lead = (N,) if batched else ()
    x = torch.randn(*lead, H_IN, dtype=dtype, requires_grad=True)
    if not given:
        return (x,), lambda m, t: m(t)
    h = torch.randn(*lead, H, dtype=dtype, requires_grad=True)
    if name.startswith("lstm"):
        c = torch.randn(*lead, H, dtype=dtype, requires_grad=True)
        return (x, h, c), lambda m, t, h, c: m(t, (h, c))
    return (x, h), lambda m, t, h: m(t, h)


@pytest.mark.parametrize("variant", ["batched", "unbatched", "no-state",
                                     "unbatched-no-state"])
@pytest.mark.parametrize("name", list(CELLS))
def test_cell_matches_torch(name, variant):
    ours, theirs = _cell_twins(name)
    _same_init(ours, theirs)
    assert repr(ours) == repr(theirs)
    inputs, call = _cell_inputs(name, batched="unbatched" not in variant,
                                given="no-state" not in variant)
    out1, out2 = _parity(ours, theirs, inputs, call)
    assert [o.shape for o in out1] == [o.shape for o in out2]


@pytest.mark.parametrize("name", list(CELLS))
def test_cell_create_graph_and_func_grad_match_torch(name):
    ours, theirs = _cell_twins(name)
    inputs, call = _cell_inputs(name)
    _create_graph_parity(ours, theirs, inputs, call)
    rest = inputs[1:]
    _func_grad_parity(ours, theirs, inputs[0], lambda m, t: call(m, t, *rest))


@pytest.mark.parametrize("kind", ["tanh", "relu", "lstm", "gru"])
def test_cell_functions_gradcheck(kind):
    x = torch.randn(N, H_IN, dtype=F64, requires_grad=True)
    h = torch.randn(N, H, dtype=F64, requires_grad=True)
    c = torch.randn(N, H, dtype=F64, requires_grad=True)
    G = {"tanh": 1, "relu": 1, "lstm": 4, "gru": 3}[kind]
    params = [torch.randn(*s, dtype=F64, requires_grad=True) / 2
              for s in ((G * H, H_IN), (G * H, H), (G * H,), (G * H,))]
    params = [p.detach().requires_grad_() for p in params]
    if kind == "lstm":
        fn, args = (lambda x, h, c, *p: BF.lstm_cell(x, (h, c), *p)), (x, h, c, *params)
    else:
        f = {"tanh": BF.rnn_tanh_cell, "relu": BF.rnn_relu_cell, "gru": BF.gru_cell}[kind]
        fn, args = f, (x, h, *params)
    assert gradcheck(fn, args)
    if kind != "relu":  # relu'' = 0 almost everywhere
        assert gradgradcheck(fn, args)


@pytest.mark.parametrize("name", ["rnn-tanh", "rnn-relu", "lstm", "gru"])
def test_cell_autocast_bfloat16_on_cpu_as_torch(name):
    ours, theirs = _cell_twins(name, dtype=torch.float32)
    x = torch.randn(N, H_IN, requires_grad=True)
    results = []
    for m in (ours, theirs):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = _flat(m(x))
        g = _grads(out, [x, *m.parameters()], [torch.ones_like(o) for o in out])
        results.append((out, g))
    (o1, g1), (o2, g2) = results
    assert [o.dtype for o in o1] == [o.dtype for o in o2]
    assert [g.dtype for g in g1] == [g.dtype for g in g2]
    for a, b in zip((*o1, *g1), (*o2, *g2)):
        scale = b.float().abs().max().clamp_min(1e-3)
        assert ((a.float() - b.float()).abs().max() / scale) < 0.05


@pytest.mark.parametrize("name", list(CELLS))
def test_cell_round_trip(name):
    ours, theirs = _cell_twins(name)
    inputs, call = _cell_inputs(name)
    converted = from_torch_nn(theirs)
    assert type(converted) is type(ours)
    back = to_torch_nn(converted)
    assert type(back) is type(theirs) and repr(back) == repr(theirs)
    _close(_flat(call(converted, *inputs)), _flat(call(theirs, *inputs)))
    _close(_flat(call(back, *inputs)), _flat(call(theirs, *inputs)))


def test_cell_signatures_and_state_dicts_follow_torch():
    import inspect

    for cls in ("RNNCell", "LSTMCell", "GRUCell"):
        assert list(inspect.signature(getattr(bnn, cls)).parameters) == \
            list(inspect.signature(getattr(nn, cls)).parameters)
        ours, theirs = getattr(bnn, cls)(2, 3), getattr(nn, cls)(2, 3)
        assert list(ours.state_dict()) == ["weight_ih", "weight_hh", "bias_ih", "bias_hh"]
        ours.load_state_dict(theirs.state_dict())
        theirs.load_state_dict(ours.state_dict())
        assert ours.bias is True and ours.input_size == 2 and ours.hidden_size == 3
    cell = bnn.GRUCell(2, 3, False)
    assert cell.bias_ih is None and list(cell.state_dict()) == ["weight_ih", "weight_hh"]
    import pickle

    again = pickle.loads(pickle.dumps(bnn.LSTMCell(2, 3)))
    assert isinstance(again, bnn.LSTMCell)


def test_cell_bad_input():
    with pytest.raises(ValueError, match="nonlinearity"):
        bnn.RNNCell(3, 4, nonlinearity="sigmoid")
    cell = bnn.LSTMCell(3, 4)
    with pytest.raises(ValueError, match="1D .* or 2D .*got 3D"):
        cell(torch.randn(2, 5, 3))
    with pytest.raises(ValueError, match="input_size: got 5, expected 3"):
        cell(torch.randn(2, 5))
    with pytest.raises(ValueError, match=r"hidden state 1 of shape \(N, H\) = \(2, 4\)"):
        cell(torch.randn(2, 3), (torch.zeros(2, 4), torch.zeros(3, 4)))
    with pytest.raises(TypeError, match="tuple"):
        cell(torch.randn(2, 3), torch.zeros(2, 4))
    with pytest.raises(TypeError, match="floating-point"):
        cell(torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="dtype torch.float64"):
        cell(torch.randn(2, 3, dtype=F64))
    gru = bnn.GRUCell(3, 4)
    with pytest.raises(ValueError, match="hidden to be 1D"):
        gru(torch.randn(2, 3), torch.zeros(1, 2, 4))
    with pytest.raises(ValueError, match=r"hidden state 0 of shape \(N, H\) = \(2, 4\)"):
        gru(torch.randn(2, 3), torch.zeros(2, 5))
    with pytest.raises(ValueError, match="weight_ih"):
        BF.gru_cell(torch.randn(2, 3), torch.zeros(2, 4), torch.randn(8, 3),
                    torch.randn(12, 4))


def test_cells_reject_a_broken_backward(monkeypatch):
    """Planted in the shared step: the forget gate dropped from the cell path."""
    x = torch.randn(N, H_IN, dtype=F64, requires_grad=True)
    h = torch.randn(N, H, dtype=F64, requires_grad=True)
    c = torch.randn(N, H, dtype=F64, requires_grad=True)
    params = [torch.randn(*s, dtype=F64, requires_grad=True)
              for s in ((4 * H, H_IN), (4 * H, H), (4 * H,), (4 * H,))]
    fn = lambda *a: BF.lstm_cell(a[0], (a[1], a[2]), *a[3:])  # noqa: E731
    assert gradcheck(fn, (x, h, c, *params))
    real = rec.lstm_step_bwd

    def no_forget(*args):
        delta, dh, dc = real(*args)
        f = args[2].chunk(4, -1)[1]
        return delta, dh, dc / f

    monkeypatch.setattr(rec, "lstm_step_bwd", no_forget)
    assert not gradcheck(fn, (x, h, c, *params), raise_exception=False)


# ================================================================ LSTM proj_size
PROJ_VARIANTS = {
    "1-layer": {},
    "2-layers": dict(num_layers=2),
    "bidirectional": dict(bidirectional=True),
    "2-layers-bidirectional-batch_first": dict(num_layers=2, bidirectional=True,
                                               batch_first=True),
    "3-layers-no-bias": dict(num_layers=3, bias=False),
    "given-state-2-layers-bidirectional": dict(num_layers=2, bidirectional=True, state=True),
    "unbatched-given-state": dict(num_layers=2, unbatched=True, state=True),
}
T = 4


def _proj_twins(kw, proj=2, hidden=4, dtype=F64):
    ours = _seeded(lambda: bnn.LSTM(H_IN, hidden, proj_size=proj, **kw, dtype=dtype))
    theirs = _seeded(lambda: nn.LSTM(H_IN, hidden, proj_size=proj, **kw, dtype=dtype))
    return ours, theirs


def _proj_inputs(v, proj=2, hidden=4, dtype=F64):
    D = 2 if v.get("bidirectional") else 1
    L = v.get("num_layers", 1)
    unbatched = v.get("unbatched", False)
    shape = (T, H_IN) if unbatched else ((N, T, H_IN) if v.get("batch_first") else (T, N, H_IN))
    x = torch.randn(shape, dtype=dtype, requires_grad=True)
    if not v.get("state"):
        return (x,), lambda m, t: m(t)
    lead = (L * D,) if unbatched else (L * D, N)
    h0 = torch.randn(*lead, proj, dtype=dtype, requires_grad=True)
    c0 = torch.randn(*lead, hidden, dtype=dtype, requires_grad=True)
    return (x, h0, c0), lambda m, t, h, c: m(t, (h, c))


@pytest.mark.parametrize("proj", [1, 2])
@pytest.mark.parametrize("variant", list(PROJ_VARIANTS))
def test_lstm_proj_size_matches_torch(variant, proj):
    v = dict(PROJ_VARIANTS[variant])
    state, unbatched = v.pop("state", False), v.pop("unbatched", False)
    ours, theirs = _proj_twins(v, proj)
    _same_init(ours, theirs)
    assert repr(ours) == repr(theirs)
    inputs, call = _proj_inputs({**v, "state": state, "unbatched": unbatched}, proj)
    out1, out2 = _parity(ours, theirs, inputs, call)
    D = 2 if v.get("bidirectional") else 1
    assert out1[0].shape[-1] == D * proj and out1[1].shape[-1] == proj
    assert out1[2].shape[-1] == 4


def test_lstm_proj_size_parameters_follow_torch():
    ours, theirs = _proj_twins(dict(num_layers=2, bidirectional=True), proj=3, hidden=5)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert "weight_hr_l1_reverse" in ours.state_dict()
    assert ours.weight_hr_l0.shape == (3, 5) and ours.weight_hh_l0.shape == (20, 3)
    assert ours.weight_ih_l1.shape == (20, 6)  # the next layer reads D·P
    assert [p.shape for p in ours.all_weights[0]] == [p.shape for p in theirs.all_weights[0]]
    ours.load_state_dict(theirs.state_dict())
    theirs.load_state_dict(ours.state_dict())


def test_lstm_proj_size_create_graph_func_grad_and_round_trip():
    ours, theirs = _proj_twins(dict(num_layers=2, bidirectional=True))
    inputs, call = _proj_inputs(dict(num_layers=2, bidirectional=True, state=True))
    _create_graph_parity(ours, theirs, inputs, call)
    _func_grad_parity(ours, theirs, inputs[0], lambda m, t: call(m, t, *inputs[1:]))
    converted = from_torch_nn(theirs)
    assert isinstance(converted, bnn.LSTM) and converted.proj_size == 2
    back = to_torch_nn(converted)
    assert type(back) is nn.LSTM and back.proj_size == 2
    _close(_flat(call(converted, *inputs)), _flat(call(theirs, *inputs)))
    _close(_flat(call(back, *inputs)), _flat(call(theirs, *inputs)))


def test_lstm_layer_function_with_projection_gradcheck():
    x = torch.randn(2, 2, 3, dtype=F64, requires_grad=True)
    h0 = torch.randn(2, 1, dtype=F64, requires_grad=True)
    c0 = torch.randn(2, 2, dtype=F64, requires_grad=True)
    params = [torch.randn(*s, dtype=F64).div(2).requires_grad_()
              for s in ((8, 3), (8, 1), (8,), (8,), (1, 2))]
    fn = lambda *a: rec.LSTMLayerFunction.apply(*a)[:3]  # noqa: E731
    assert gradcheck(fn, (x, h0, c0, *params))
    assert gradgradcheck(fn, (x, h0, c0, *params))


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
def test_lstm_proj_size_autocast_bfloat16_on_cpu_as_torch():
    """With a projection torch's LSTM runs under CPU autocast (its default implementation,
    not oneDNN's): output and h_n in bfloat16, as bptorch's; gradients to bfloat16's scale.
    (torch's c_n comes back in float32, bptorch's in bfloat16: not compared.)"""
    ours, theirs = _proj_twins({}, dtype=torch.float32)
    x = torch.randn(T, N, H_IN, requires_grad=True)
    results = []
    for m in (ours, theirs):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = _flat(m(x))[:2]  # output, h_n
        g = _grads(out, [x, *m.parameters()], [torch.ones_like(o) for o in out])
        results.append((out, g))
    (o1, g1), (o2, g2) = results
    assert [o.dtype for o in o1] == [o.dtype for o in o2] == [torch.bfloat16] * 2
    assert [g.dtype for g in g1] == [g.dtype for g in g2]
    for a, b in zip((*o1, *g1), (*o2, *g2)):
        scale = b.float().abs().max().clamp_min(1e-3)
        assert ((a.float() - b.float()).abs().max() / scale) < 0.05


def test_lstm_proj_size_bad_input():
    with pytest.raises(ValueError, match="smaller than hidden_size"):
        bnn.LSTM(3, 4, proj_size=4)
    with pytest.raises(ValueError, match="positive integer or zero"):
        bnn.LSTM(3, 4, proj_size=-1)
    m = bnn.LSTM(3, 4, num_layers=2, proj_size=2)
    x = torch.randn(5, 2, 3)
    with pytest.raises(ValueError, match=r"h_0 of shape .* = \(2, 2, 2\)"):
        m(x, (torch.zeros(2, 2, 4), torch.zeros(2, 2, 4)))
    with pytest.raises(ValueError, match=r"c_0 of shape .* = \(2, 2, 4\)"):
        m(x, (torch.zeros(2, 2, 2), torch.zeros(2, 2, 2)))


def test_lstm_projection_rejects_a_broken_backward(monkeypatch):
    """Planted: W_hr's BP4 transposed-wrong (Σ_t m_t dh_tᵀ read back as (P, H))."""
    x = torch.randn(3, 2, H_IN, dtype=F64, requires_grad=True)
    h0 = torch.randn(2, 2, dtype=F64, requires_grad=True)
    c0 = torch.randn(2, 3, dtype=F64, requires_grad=True)
    params = [torch.randn(*s, dtype=F64).div(2).requires_grad_()
              for s in ((12, H_IN), (12, 2), (12,), (12,), (2, 3))]
    fn = lambda *a: rec.LSTMLayerFunction.apply(*a)[:3]  # noqa: E731
    real = rec.lstm_bwd

    def wrong_projection(*args):
        grads = list(real(*args))
        if grads[7] is not None:  # drop the contribution of the last step's output
            grads[7] = grads[7] * 0.5
        return tuple(grads)

    monkeypatch.setattr(rec, "lstm_bwd", wrong_projection)
    assert not gradcheck(fn, (x, h0, c0, *params), raise_exception=False)


# ================================================================ MultiheadAttention options
MHA_OPTIONS = {
    "bias_kv": dict(add_bias_kv=True),
    "zero_attn": dict(add_zero_attn=True),
    "bias_kv-zero_attn": dict(add_bias_kv=True, add_zero_attn=True),
    "kdim": dict(kdim=5),
    "vdim": dict(vdim=3),
    "kdim-vdim-bias_kv-zero_attn": dict(kdim=5, vdim=3, add_bias_kv=True, add_zero_attn=True),
    "kdim-no-bias": dict(kdim=5, bias=False),
    "kdim-equal-embed_dim": dict(kdim=8, vdim=8),
}
MHA_CALLS = {
    "plain": {},
    "masks": dict(attn_mask="bool", key_padding_mask=True),
    "float-3d-mask": dict(attn_mask="3d"),
    "causal-hint": dict(attn_mask="causal", is_causal=True, need_weights=False),
    "causal-weights-per-head": dict(attn_mask="causal", is_causal=True,
                                    average_attn_weights=False),
    "padding-no-weights": dict(key_padding_mask=True, need_weights=False),
}
E_, HEADS, L_, S_ = 8, 2, 4, 5


def _mha_twins(kw, dtype=F64, dropout=0.0):
    ours = _seeded(lambda: bnn.MultiheadAttention(E_, HEADS, dropout, **kw, dtype=dtype))
    theirs = _seeded(lambda: nn.MultiheadAttention(E_, HEADS, dropout, **kw, dtype=dtype))
    return ours, theirs


def _mha_call(kw, call, batch_first=False, unbatched=False, dtype=F64):
    """(inputs, call(m, q, k, v)) for one option set and one call variant."""
    S = L_ if call.get("attn_mask") == "causal" else S_
    kdim, vdim = kw.get("kdim") or E_, kw.get("vdim") or E_

    def shape(T, D):
        return (T, D) if unbatched else ((N, T, D) if batch_first else (T, N, D))

    q = torch.randn(shape(L_, E_), dtype=dtype, requires_grad=True)
    k = torch.randn(shape(S, kdim), dtype=dtype, requires_grad=True)
    v = torch.randn(shape(S, vdim), dtype=dtype, requires_grad=True)
    extra = {k_: call[k_] for k_ in ("need_weights", "average_attn_weights", "is_causal")
             if k_ in call}
    mask = call.get("attn_mask")
    if mask == "bool":
        m = torch.rand(L_, S) > 0.6
        m[:, 0] = False
        extra["attn_mask"] = m
    elif mask == "3d":
        extra["attn_mask"] = torch.randn((HEADS if unbatched else N * HEADS), L_, S,
                                         dtype=dtype)
    elif mask == "causal":
        extra["attn_mask"] = nn.Transformer.generate_square_subsequent_mask(L_, dtype=dtype)
    if call.get("key_padding_mask"):
        pad = torch.zeros(*(() if unbatched else (N,)), S, dtype=torch.bool)
        pad[..., -2:] = True  # the last two keys padded (b^K and the zero key never are)
        pad[..., 0] = False
        extra["key_padding_mask"] = pad
    return (q, k, v), lambda m, q, k, v: m(q, k, v, **extra)


@pytest.mark.parametrize("call", list(MHA_CALLS))
@pytest.mark.parametrize("option", list(MHA_OPTIONS))
def test_mha_options_match_torch(option, call):
    kw = MHA_OPTIONS[option]
    for batch_first in (False, True):
        ours, theirs = _mha_twins(dict(kw, batch_first=batch_first))
        inputs, fn = _mha_call(kw, MHA_CALLS[call], batch_first)
        out1, out2 = _parity(ours, theirs, inputs, fn)
        assert out1[0].stride() == out2[0].stride()  # laid out as torch's


@pytest.mark.parametrize("option", ["bias_kv-zero_attn", "kdim-vdim-bias_kv-zero_attn"])
def test_mha_options_unbatched_match_torch(option):
    kw = MHA_OPTIONS[option]
    for call in ("plain", "masks", "float-3d-mask"):
        ours, theirs = _mha_twins(kw)
        inputs, fn = _mha_call(kw, MHA_CALLS[call], unbatched=True)
        out1, out2 = _parity(ours, theirs, inputs, fn)
        assert out1[0].stride() == out2[0].stride()


@pytest.mark.parametrize("option", list(MHA_OPTIONS))
def test_mha_options_parameters_init_and_state_dict_as_torch(option):
    ours, theirs = _mha_twins(MHA_OPTIONS[option])
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for a, b in zip(ours.state_dict().values(), theirs.state_dict().values()):
        torch.testing.assert_close(a, b, atol=0, rtol=1e-15)  # the same draws, same order
    assert ours._qkv_same_embed_dim == theirs._qkv_same_embed_dim
    assert (ours.kdim, ours.vdim, ours.add_zero_attn) == \
        (theirs.kdim, theirs.vdim, theirs.add_zero_attn)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    with torch.no_grad():
        for p in theirs.parameters():
            p.normal_()
    ours.load_state_dict(theirs.state_dict())
    theirs.load_state_dict(ours.state_dict())
    converted, back = from_torch_nn(theirs), None
    assert isinstance(converted, bnn.MultiheadAttention)
    back = to_torch_nn(converted)
    assert type(back) is nn.MultiheadAttention
    inputs, fn = _mha_call(MHA_OPTIONS[option], MHA_CALLS["masks"])
    _close(_flat(fn(converted, *inputs)), _flat(fn(theirs, *inputs)))
    _close(_flat(fn(back, *inputs)), _flat(fn(theirs, *inputs)))


def test_mha_options_create_graph_and_func_grad_match_torch():
    kw = MHA_OPTIONS["kdim-vdim-bias_kv-zero_attn"]
    ours, theirs = _mha_twins(dict(kw, batch_first=True))
    inputs, fn = _mha_call(kw, MHA_CALLS["masks"], batch_first=True)
    _create_graph_parity(ours, theirs, inputs, fn)
    q, k, v = inputs
    _func_grad_parity(ours, theirs, q, lambda m, t: fn(m, t, k, v))
    _func_grad_parity(ours, theirs, k, lambda m, t: fn(m, q, t, v))


def test_mha_options_gradcheck_and_gradgradcheck():
    torch.manual_seed(0)
    m = bnn.MultiheadAttention(4, 2, add_bias_kv=True, add_zero_attn=True, kdim=3, vdim=2,
                               dtype=F64)
    q = torch.randn(2, 2, 4, dtype=F64, requires_grad=True)
    k = torch.randn(2, 2, 3, dtype=F64, requires_grad=True)
    v = torch.randn(2, 2, 2, dtype=F64, requires_grad=True)
    pad = torch.tensor([[False, True], [False, False]])
    fn = lambda q, k, v, bk, bv: m(q, k, v, key_padding_mask=pad)  # noqa: E731
    m.bias_k, m.bias_v = (nn.Parameter(m.bias_k.detach()), nn.Parameter(m.bias_v.detach()))
    args = (q, k, v, m.bias_k, m.bias_v)
    assert gradcheck(fn, args)
    assert gradgradcheck(fn, args)


def test_mha_options_autocast_bfloat16_on_cpu_as_torch():
    kw = dict(MHA_OPTIONS["kdim-vdim-bias_kv-zero_attn"], batch_first=True)
    ours, theirs = _mha_twins(kw, dtype=torch.float32)
    inputs, fn = _mha_call(kw, MHA_CALLS["masks"], batch_first=True, dtype=torch.float32)
    results = []
    for m in (ours, theirs):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = _flat(fn(m, *inputs))
        g = _grads(out, [*inputs, *m.parameters()], [torch.ones_like(o) for o in out])
        results.append((out, g))
    (o1, g1), (o2, g2) = results
    assert [o.dtype for o in o1] == [o.dtype for o in o2]
    assert [g.dtype for g in g1] == [g.dtype for g in g2]
    for a, b in zip((*o1, *g1), (*o2, *g2)):
        scale = b.float().abs().max().clamp_min(1e-3)
        assert ((a.float() - b.float()).abs().max() / scale) < 0.05


@pytest.mark.parametrize("batch_first", [False, True])
def test_mha_output_strides_are_torchs_so_a_dropout_after_it_draws_torchs_mask(batch_first):
    ours, theirs = _mha_twins(dict(batch_first=batch_first))
    for x in (torch.randn(3, 4, E_, dtype=F64), torch.randn(4, E_, dtype=F64)):
        for cross in (False, True):
            kv = torch.randn_like(x) if cross else x
            o1, o2 = ours(x, kv, kv)[0], theirs(x, kv, kv)[0]
            assert o1.stride() == o2.stride()
            torch.manual_seed(4)
            d1 = torch.nn.functional.dropout(o1, 0.5)
            torch.manual_seed(4)
            d2 = torch.nn.functional.dropout(o2, 0.5)
            torch.testing.assert_close(d1, d2)


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
def test_converted_encoder_layer_with_dropout_in_train_mode_equals_torch(batch_first,
                                                                        norm_first):
    theirs = _seeded(lambda: nn.TransformerEncoderLayer(
        E_, HEADS, 16, dropout=0.3, batch_first=batch_first, norm_first=norm_first,
        dtype=F64))
    ours = from_torch_nn(theirs)
    assert isinstance(ours.self_attn, bnn.MultiheadAttention) and ours.training
    x = torch.randn(*((3, 5) if batch_first else (5, 3)), E_, dtype=F64, requires_grad=True)
    mask = nn.Transformer.generate_square_subsequent_mask(5, dtype=F64)
    results = []
    for m in (ours, theirs):
        torch.manual_seed(5)  # the same seed: every dropout mask the same
        out = m(x, src_mask=mask)
        results.append((out, *_grads(out, [x, *m.parameters()], torch.ones_like(out) * 0.1
                                     + torch.linspace(0, 1, out.numel(), dtype=F64
                                                      ).view_as(out))))
    _close(results[0], results[1])


def test_mha_options_bad_input():
    m = bnn.MultiheadAttention(8, 2, kdim=5, vdim=3)
    q = torch.randn(4, 2, 8)
    with pytest.raises(ValueError, match="kdim=5"):
        m(q, torch.randn(6, 2, 8), torch.randn(6, 2, 3))
    with pytest.raises(ValueError, match="vdim=3"):
        m(q, torch.randn(6, 2, 5), torch.randn(6, 2, 5))
    with pytest.raises(ValueError, match="key and value of the same shape but the last dim"):
        m(q, torch.randn(6, 2, 5), torch.randn(7, 2, 3))
    m = bnn.MultiheadAttention(8, 2, add_bias_kv=True)
    with pytest.raises(ValueError, match="key_padding_mask of shape"):
        m(q, q, q, key_padding_mask=torch.zeros(2, 5, dtype=torch.bool))  # S, not S + 1


# ================================================================ the Transformer family
D_MODEL, FF = 8, 12


def _transformer_pair(name, seed=0, **kw):
    """(bptorch.nn's by name, torch.nn's, torch's converted by from_torch_nn), one seed."""
    def make(M):
        if name == "Transformer":
            return M.Transformer(D_MODEL, HEADS, 2, 2, FF, dtype=F64, **kw)
        if name in ("TransformerDecoder", "TransformerEncoder"):
            layer = getattr(M, name + "Layer")(D_MODEL, HEADS, FF, dtype=F64, **kw)
            return getattr(M, name)(layer, 2, M.LayerNorm(D_MODEL, dtype=F64))
        return getattr(M, name)(D_MODEL, HEADS, FF, dtype=F64, **kw)

    ours = _seeded(lambda: make(bnn), seed)
    theirs = _seeded(lambda: make(nn), seed)
    return ours, theirs, from_torch_nn(theirs)


def _transformer_call(name, batch_first, masks=True):
    """(inputs, call(m, *inputs)) with every mask torch takes for ``name``."""
    shape = lambda T: (N, T, D_MODEL) if batch_first else (T, N, D_MODEL)  # noqa: E731
    src = torch.randn(shape(5), dtype=F64, requires_grad=True)
    tgt = torch.randn(shape(4), dtype=F64, requires_grad=True)
    kw: dict = {}
    if masks:
        causal = nn.Transformer.generate_square_subsequent_mask(4, dtype=F64)
        src_pad = torch.zeros(N, 5, dtype=torch.bool)
        src_pad[0, -2:] = True
        tgt_pad = torch.zeros(N, 4, dtype=torch.bool)
        tgt_pad[1, -1] = True
        memory_mask = torch.randn(4, 5, dtype=F64)
        if name == "Transformer":
            kw = dict(tgt_mask=causal, tgt_is_causal=True, src_key_padding_mask=src_pad,
                      tgt_key_padding_mask=tgt_pad, memory_key_padding_mask=src_pad,
                      memory_mask=memory_mask)
        elif name.startswith("TransformerDecoder"):
            kw = dict(tgt_mask=causal, tgt_is_causal=True, memory_mask=memory_mask,
                      tgt_key_padding_mask=tgt_pad, memory_key_padding_mask=src_pad)
        else:
            kw = dict(src_key_padding_mask=src_pad)
    if name == "Transformer":
        return (src, tgt), lambda m, s, t: m(s, t, **kw)
    if name.startswith("TransformerDecoder"):
        return (tgt, src), lambda m, t, s: m(t, s, **kw)
    return (src,), lambda m, s: m(s, **kw)


def _seeded_parity(models, inputs, call):
    """Forward and every gradient of each model under the same seed (the same dropout
    masks), against the last model's."""
    upstream, results = None, []
    for m in models:
        torch.manual_seed(9)
        out = call(m, *inputs)
        if upstream is None:
            upstream = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
        results.append((out, *_grads(out, [*inputs, *m.parameters()], upstream)))
    for r in results[:-1]:
        _close(r, results[-1], atol=1e-11, rtol=1e-9)


ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "F.gelu": torch.nn.functional.gelu,
               "callable": lambda t: torch.nn.functional.silu(t)}


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("name", ["TransformerDecoderLayer", "TransformerDecoder",
                                  "Transformer"])
def test_decoder_family_matches_torch_in_train_mode_with_dropout(name, norm_first, activation):
    for batch_first in (False, True):
        ours, theirs, converted = _transformer_pair(
            name, dropout=0.2, norm_first=norm_first, batch_first=batch_first,
            activation=ACTIVATIONS[activation])
        _same_init(ours, theirs)
        assert isinstance(ours, getattr(nn, name)) and ours.training
        inputs, call = _transformer_call(name, batch_first)
        _seeded_parity([ours, converted, theirs], inputs, call)


@pytest.mark.parametrize("name", ["TransformerEncoderLayer", "TransformerEncoder"])
def test_encoder_family_by_name_matches_torch(name):
    for batch_first, norm_first in ((False, False), (True, True), (True, False)):
        ours, theirs, converted = _transformer_pair(name, dropout=0.2, norm_first=norm_first,
                                                    batch_first=batch_first)
        _same_init(ours, theirs)
        inputs, call = _transformer_call(name, batch_first)
        _seeded_parity([ours, converted, theirs], inputs, call)
        ours.eval(), theirs.eval()
        with torch.no_grad():  # torch's fused inference path; bptorch's stays its own
            out1, out2 = call(ours, *inputs), call(theirs, *inputs)
        # where torch takes nested tensors (batch_first, post-norm) it gives 0 at padded
        # positions; elsewhere both compute them: compare the positions that are not padding
        keep = torch.ones(N, 5, 1, dtype=F64)
        keep[0, -2:] = 0  # _transformer_call's src_key_padding_mask
        keep = keep if batch_first else keep.transpose(0, 1)
        _close([out1 * keep], [out2 * keep], atol=1e-11, rtol=1e-9)


@pytest.mark.parametrize("name", ["TransformerDecoderLayer", "Transformer"])
def test_decoder_family_eval_mode_and_no_masks(name):
    ours, theirs, converted = _transformer_pair(name, batch_first=True)
    for m in (ours, theirs, converted):
        m.eval()
    inputs, call = _transformer_call(name, True, masks=False)
    _seeded_parity([ours, converted, theirs], inputs, call)


def test_decoder_layer_every_child_is_bptorchs():
    ours, _theirs, converted = _transformer_pair("Transformer")
    for model in (ours, converted):
        for sub in model.modules():
            if type(sub).__module__.startswith("torch.nn.modules"):  # containers only
                assert isinstance(sub, (nn.Transformer, nn.TransformerEncoder,
                                        nn.TransformerDecoder, nn.TransformerEncoderLayer,
                                        nn.TransformerDecoderLayer, nn.ModuleList)), sub
        layer = model.decoder.layers[0]
        assert layer.activation is BF.relu
        assert isinstance(layer.multihead_attn, bnn.MultiheadAttention)
        assert model.encoder.layers[0].activation_relu_or_gelu == 0


def test_decoder_family_create_graph_and_func_grad_match_torch():
    ours, theirs, _ = _transformer_pair("TransformerDecoderLayer", dropout=0.0,
                                        activation="gelu", batch_first=True)
    inputs, call = _transformer_call("TransformerDecoderLayer", True)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):  # torch's CPU flash kernel has no double backward
        _create_graph_parity(ours, theirs, inputs, call)
    tgt, src = inputs
    _func_grad_parity(ours, theirs, tgt, lambda m, t: call(m, t, src))
    _func_grad_parity(ours, theirs, src, lambda m, s: call(m, tgt, s))


def test_decoder_layer_gradcheck_and_gradgradcheck():
    torch.manual_seed(0)
    layer = bnn.TransformerDecoderLayer(4, 2, 6, dropout=0.0, activation="gelu",
                                        norm_first=True, dtype=F64)
    tgt = torch.randn(2, 1, 4, dtype=F64, requires_grad=True)
    mem = torch.randn(2, 1, 4, dtype=F64, requires_grad=True)
    mask = nn.Transformer.generate_square_subsequent_mask(2, dtype=F64)
    fn = lambda t, m: layer(t, m, tgt_mask=mask, tgt_is_causal=True)  # noqa: E731
    assert gradcheck(fn, (tgt, mem))
    assert gradgradcheck(fn, (tgt, mem))


def test_decoder_family_autocast_bfloat16_on_cpu_as_torch():
    ours = _seeded(lambda: bnn.TransformerDecoderLayer(D_MODEL, HEADS, FF, dropout=0.0,
                                                       batch_first=True, norm_first=True))
    theirs = _seeded(lambda: nn.TransformerDecoderLayer(D_MODEL, HEADS, FF, dropout=0.0,
                                                        batch_first=True, norm_first=True))
    tgt = torch.randn(N, 4, D_MODEL, requires_grad=True)
    src = torch.randn(N, 5, D_MODEL, requires_grad=True)
    results = []
    for m in (ours, theirs):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = m(tgt, src)
        g = _grads(out, [tgt, src, *m.parameters()], torch.ones_like(out))
        results.append((out, g))
    (o1, g1), (o2, g2) = results
    assert o1.dtype == o2.dtype
    assert [g.dtype for g in g1] == [g.dtype for g in g2]
    for a, b in zip((o1, *g1), (o2, *g2)):
        scale = b.float().abs().max().clamp_min(1e-3)
        assert ((a.float() - b.float()).abs().max() / scale) < 0.05


@pytest.mark.parametrize("name", ["TransformerEncoderLayer", "TransformerEncoder",
                                  "TransformerDecoderLayer", "TransformerDecoder",
                                  "Transformer"])
def test_transformer_family_round_trip(name):
    import pickle

    ours, theirs, converted = _transformer_pair(name, batch_first=True, activation="gelu")
    inputs, call = _transformer_call(name, True)
    for model in (ours, converted):
        back = to_torch_nn(model)
        assert type(back) is getattr(nn, name)
        assert all(type(m).__module__.startswith("torch.") for m in back.modules())
        for m in (back, model, theirs):
            m.eval()
        _close([call(back, *inputs)], [call(theirs, *inputs)], atol=1e-11, rtol=1e-9)
        _close([call(model, *inputs)], [call(theirs, *inputs)], atol=1e-11, rtol=1e-9)
    again = pickle.loads(pickle.dumps(ours))
    assert type(again) is type(ours)
    _close([call(again, *inputs)], [call(ours, *inputs)])


def test_transformer_family_signatures_and_bad_input():
    import inspect

    for name in ("TransformerEncoderLayer", "TransformerEncoder", "TransformerDecoderLayer",
                 "TransformerDecoder", "Transformer"):
        ours, theirs = inspect.signature(getattr(bnn, name)), inspect.signature(getattr(nn, name))
        assert list(ours.parameters) == list(theirs.parameters)
        assert [p.default for p in ours.parameters.values()] == \
            [p.default for p in theirs.parameters.values()]
    with pytest.raises(RuntimeError, match="activation should be relu/gelu, not tanh"):
        bnn.TransformerDecoderLayer(8, 2, activation="tanh")
    with pytest.raises(TypeError, match="bptorch.nn.TransformerDecoderLayer"):
        bnn.TransformerDecoder(nn.TransformerDecoderLayer(8, 2), 2)
    with pytest.raises(TypeError, match="bptorch.nn.TransformerEncoderLayer"):
        bnn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2), 2)
    model = bnn.Transformer(8, 2, 1, 1, 16)
    with pytest.raises(RuntimeError, match="d_model"):
        model(torch.randn(5, 2, 8), torch.randn(4, 2, 6))
    layer = bnn.TransformerDecoderLayer(8, 2, 16)
    with pytest.raises(RuntimeError, match="Need attn_mask"):
        layer(torch.randn(4, 2, 8), torch.randn(5, 2, 8), tgt_is_causal=True)
