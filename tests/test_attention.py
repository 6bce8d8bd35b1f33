"""Scaled dot-product attention and MultiheadAttention: gradcheck/gradgradcheck in float64
(masks, dropout, the weights as an output, both saving modes), agreement with torch's twins
under random upstream gradients (outputs, weights, every input, mask and parameter
gradient) in each mask variant, dropout masks aligned with torch's on the CPU, fully
masked rows, saved bytes, bad input, and a broken backward that the checks reject."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import gradcheck, gradgradcheck

import bptorch.functional as BF
from bptorch import nn as bnn
from bptorch.functions import attention as attn
from bptorch.functions.attention import AttentionFunction

F64 = torch.float64


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _qkv(device, batch=(2, 3), L=4, S=5, E=6, Ev=3, dtype=F64):
    q = torch.randn(*batch, L, E, dtype=dtype, device=device, requires_grad=True)
    k = torch.randn(*batch, S, E, dtype=dtype, device=device, requires_grad=True)
    v = torch.randn(*batch, S, Ev, dtype=dtype, device=device, requires_grad=True)
    return q, k, v


def _grads(outputs, inputs, upstream):
    return torch.autograd.grad(outputs, inputs, upstream, allow_unused=True)


def _close(ours, theirs, atol=1e-10, rtol=1e-8):
    for a, b in zip(ours, theirs, strict=True):
        if a is None or b is None:
            assert a is None and b is None
        else:
            torch.testing.assert_close(a, b, atol=atol, rtol=rtol)


# ---------------------------------------------------------------- the Function
@pytest.mark.parametrize("recompute", [False, True], ids=["save-P", "recompute"])
@pytest.mark.parametrize("case", ["plain", "bias", "dropout", "weights-out", "masked-row"])
def test_attention_gradcheck(device, case, recompute):
    q, k, v = _qkv(device, batch=(2,), L=3, S=4, E=5, Ev=2)
    bias = drop = None
    if case in ("bias", "masked-row"):
        bias = torch.randn(3, 4, dtype=F64, device=device)
        if case == "masked-row":
            bias[1] = float("-inf")  # query 1 sees no key
            bias[2, 0] = float("-inf")
        else:
            bias.requires_grad_()
    if case == "dropout":
        drop = torch.bernoulli(
            torch.full((2, 3, 4), 0.7, dtype=F64, device=device)) / 0.7
    args = (q, k, v) + ((bias,) if case == "bias" else ())

    def fn(q, k, v, b=bias):
        o, a, _ = AttentionFunction.apply(q, k, v, b, drop, 0.7, recompute)
        return (o, a) if case == "weights-out" else o

    assert gradcheck(fn, args)
    assert gradgradcheck(fn, args)


def test_attention_weights_output_gets_its_gradient(device):
    """∂C/∂A from a used weights output enters dP (torch's MHA returns weights with grad)."""
    q, k, v = _qkv(device, batch=(2,), L=3, S=4, E=5, Ev=2)
    o, a, _ = AttentionFunction.apply(q, k, v, None, None, 0.5, False)
    go, ga = torch.randn_like(o), torch.randn_like(a)
    s = (q * 0.5) @ k.transpose(-2, -1)
    p = torch.softmax(s, -1)
    _close(_grads((o, a), (q, k, v), (go, ga)), _grads((p @ v, p), (q, k, v), (go, ga)))


# ---------------------------------------------------------------- against torch's SDPA
MASKS = ["none", "causal", "causal-tall", "bool", "float", "float-grad", "scale", "broadcast"]


@pytest.mark.parametrize("recompute", [False, True], ids=["save-P", "recompute"])
@pytest.mark.parametrize("mask", MASKS)
def test_sdpa_matches_torch(device, mask, recompute):
    L, S = (6, 4) if mask == "causal-tall" else (4, 5)
    q, k, v = _qkv(device, L=L, S=S)
    kw: dict = {}
    extra = ()
    if mask.startswith("causal"):
        kw["is_causal"] = True
    elif mask == "bool":
        keep = torch.rand(2, 1, L, S, device=device) > 0.3
        keep[..., 0] = True  # no fully masked rows here (tested below)
        kw["attn_mask"] = keep
    elif mask.startswith("float"):
        kw["attn_mask"] = torch.randn(L, S, dtype=F64, device=device,
                                      requires_grad=mask == "float-grad")
        extra = (kw["attn_mask"],) if mask == "float-grad" else ()
    elif mask == "scale":
        kw["scale"] = 0.37
    elif mask == "broadcast":  # one key/value set shared across the heads
        k = k[:, :1].detach().requires_grad_()
        v = v[:, :1].detach().requires_grad_()
    ours = BF.scaled_dot_product_attention(q, k, v, recompute=recompute, **kw)
    theirs = F.scaled_dot_product_attention(q, k, v, **kw)
    torch.testing.assert_close(ours, theirs, atol=1e-12, rtol=1e-10)
    g = torch.randn_like(ours)
    _close(_grads(ours, (q, k, v) + extra, g), _grads(theirs, (q, k, v) + extra, g))


def test_sdpa_float32_matches_torch(device):
    q, k, v = _qkv(device, dtype=torch.float32)
    ours = BF.scaled_dot_product_attention(q, k, v, is_causal=True)
    theirs = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(ours, theirs)
    g = torch.randn_like(ours)
    _close(_grads(ours, (q, k, v), g), _grads(theirs, (q, k, v), g), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("recompute", [False, True], ids=["save-P", "recompute"])
def test_sdpa_fully_masked_rows_are_zero_as_torch(device, recompute):
    q, k, v = _qkv(device)
    keep = torch.rand(4, 5, device=device) > 0.4
    keep[2] = False  # query 2 sees nothing
    keep[0, 1] = True
    ours = BF.scaled_dot_product_attention(q, k, v, keep, recompute=recompute)
    theirs = F.scaled_dot_product_attention(q, k, v, keep)
    torch.testing.assert_close(ours, theirs)
    assert (ours[..., 2, :] == 0).all()
    g = torch.randn_like(ours)
    ours_g, theirs_g = _grads(ours, (q, k, v), g), _grads(theirs, (q, k, v), g)
    assert all(torch.isfinite(t).all() for t in ours_g)
    _close(ours_g, theirs_g)
    # second order too: no NaN from the −∞ row
    gq, = torch.autograd.grad(BF.scaled_dot_product_attention(q, k, v, keep), q, g,
                              create_graph=True)
    assert all(torch.isfinite(t).all() for t in torch.autograd.grad(gq.sum(), (q, k, v)))


def test_sdpa_dropout_mask_is_torchs_on_cpu():
    """The mask is drawn as torch's CPU SDPA draws it: same seed, same output and grads."""
    q, k, v = _qkv("cpu")
    g = torch.randn(2, 3, 4, 3, dtype=F64)
    results = []
    for fn in (BF.scaled_dot_product_attention, F.scaled_dot_product_attention):
        torch.manual_seed(7)
        o = fn(q, k, v, dropout_p=0.3)
        results.append((o, *_grads(o, (q, k, v), g)))
    _close(*results)


def test_sdpa_dropout_statistics(device):
    """Off the CPU torch's kernel draws its own mask: check ours statistically instead.
    With V = I the output rows are the dropped-out weights A = P ⊙ M themselves."""
    torch.manual_seed(0)
    S, p = 64, 0.25
    q = torch.zeros(50, S, 8, device=device)  # uniform P = 1/S
    k = torch.randn(50, S, 8, device=device)
    v = torch.eye(S, device=device).expand(50, S, S)
    a = BF.scaled_dot_product_attention(q, k, v, dropout_p=p)
    kept = a != 0
    torch.testing.assert_close(a[kept] * S, torch.full_like(a[kept], 1 / (1 - p)))
    frac = kept.double().mean().item()
    assert abs(frac - (1 - p)) < 4 * math.sqrt(p * (1 - p) / a.numel())


def test_sdpa_bad_input():
    q, k, v = _qkv("cpu")
    with pytest.raises(NotImplementedError, match="enable_gqa"):
        BF.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    with pytest.raises(ValueError, match="same E"):
        BF.scaled_dot_product_attention(q, k[..., :3], v)
    with pytest.raises(ValueError, match="same S"):
        BF.scaled_dot_product_attention(q, k, v[..., :2, :])
    with pytest.raises(ValueError, match="attn_mask broadcastable"):
        BF.scaled_dot_product_attention(q, k, v, attn_mask=torch.ones(4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="either attn_mask or is_causal"):
        BF.scaled_dot_product_attention(q, k, v, attn_mask=torch.ones(4, 5, dtype=torch.bool),
                                        is_causal=True)
    with pytest.raises(ValueError, match="do not broadcast"):
        BF.scaled_dot_product_attention(q, k[:, :2], v[:, :2])
    with pytest.raises(TypeError, match="floating-point"):
        BF.scaled_dot_product_attention(q, k, v, attn_mask=torch.ones(4, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="dropout probability"):
        BF.scaled_dot_product_attention(q, k, v, dropout_p=1.5)


def _saved_bytes_besides(fn, inputs) -> int:
    """Bytes of the storages saved for backward by fn(), the given inputs' excepted."""
    skip = {t.untyped_storage().data_ptr() for t in inputs}
    saved: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in skip:
            saved[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(saved.values())


def test_recompute_saves_rows_not_the_matrix():
    """Default: P, (N, h, L, S); recompute=True: the row log-sum-exp, (N, h, L)."""
    q, k, v = _qkv("cpu", batch=(4, 2), L=16, S=32, E=8, Ev=8, dtype=torch.float32)
    full = _saved_bytes_besides(lambda: BF.scaled_dot_product_attention(q, k, v), (q, k, v))
    lean = _saved_bytes_besides(
        lambda: BF.scaled_dot_product_attention(q, k, v, recompute=True), (q, k, v))
    assert full == 4 * 2 * 16 * 32 * 4
    assert lean == 4 * 2 * 16 * 4


# ---------------------------------------------------------------- a broken backward
def _broken_bwd(grad_o, grad_a, q, k, v, p, drop, scale, need):
    """dS = P ⊙ dP: the softmax Jacobian without its rowsum term."""
    dp = grad_o @ v.transpose(-2, -1)
    ds = p * dp
    return (ds @ k) * scale, (ds.transpose(-2, -1) @ q) * scale, p.transpose(-2, -1) @ grad_o, \
        None


def test_gradcheck_rejects_a_broken_backward(monkeypatch):
    q, k, v = _qkv("cpu", batch=(2,), L=3, S=4, E=5, Ev=2)
    fn = lambda q, k, v: AttentionFunction.apply(q, k, v, None, None, 0.5, False)[0]  # noqa: E731
    assert gradcheck(fn, (q, k, v))
    monkeypatch.setattr(attn, "attention_bwd", _broken_bwd)
    assert not gradcheck(fn, (q, k, v), raise_exception=False)


# ---------------------------------------------------------------- MultiheadAttention
def _twins(device, E=8, h=2, dtype=F64, **kw):
    torch.manual_seed(1)
    ours = bnn.MultiheadAttention(E, h, device=device, dtype=dtype, **kw)
    torch.manual_seed(1)
    theirs = nn.MultiheadAttention(E, h, device=device, dtype=dtype, **kw)
    return ours, theirs


def test_mha_parameters_init_and_state_dict_both_ways(device):
    ours, theirs = _twins(device, E=12, h=3)
    assert list(ours.state_dict()) == list(theirs.state_dict()) == [
        "in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"]
    for a, b in zip(ours.state_dict().values(), theirs.state_dict().values()):
        # the same draws in the same order: torch's init (bptorch's Linear computes the bound
        # 1/√n directly, torch's kaiming_uniform_ as gain·√(3/n): a last-bit difference)
        torch.testing.assert_close(a, b, atol=0, rtol=1e-15)
    assert ours._qkv_same_embed_dim and ours.head_dim == 4
    with torch.no_grad():
        for p in theirs.parameters():
            p.normal_()
    ours.load_state_dict(theirs.state_dict())
    theirs.load_state_dict(ours.state_dict())
    nobias, _ = _twins(device, bias=False)
    assert list(nobias.state_dict()) == ["in_proj_weight", "out_proj.weight"]


MHA_CASES = {
    "self": {},
    "cross": dict(cross=True),
    "batch_first": dict(batch_first=True),
    "bool-mask": dict(attn_mask="bool"),
    "float-mask": dict(attn_mask="float"),
    "3d-mask": dict(attn_mask="3d"),
    "key-padding": dict(key_padding_mask="bool"),
    "key-padding-float": dict(key_padding_mask="float"),
    "both-masks": dict(attn_mask="bool", key_padding_mask="bool"),
    "causal-hint": dict(attn_mask="causal", is_causal=True, need_weights=False),
    "causal-weights": dict(attn_mask="causal", is_causal=True),
    "per-head": dict(average_attn_weights=False),
    "no-weights": dict(need_weights=False),
    "no-bias": dict(bias=False),
    "unbatched": dict(unbatched=True),
    "recompute": dict(recompute=True, key_padding_mask="bool"),
}


def _mha_inputs(device, case, E=8, h=2, n=3, L=4, S=5):
    batch_first = case.get("batch_first", False)
    if not case.get("cross"):
        S = L
    shape = lambda T: (T, E) if case.get("unbatched") else (  # noqa: E731
        (n, T, E) if batch_first else (T, n, E))
    query = torch.randn(shape(L), dtype=F64, device=device, requires_grad=True)
    if case.get("cross"):
        key = torch.randn(shape(S), dtype=F64, device=device, requires_grad=True)
        value = torch.randn(shape(S), dtype=F64, device=device, requires_grad=True)
        inputs = (query, key, value)
    else:
        key = value = query
        inputs = (query,)
    kw = {k: case[k] for k in ("need_weights", "average_attn_weights", "is_causal")
          if k in case}
    m = case.get("attn_mask")
    if m == "bool":
        mask = torch.rand(L, S, device=device) > 0.7  # True: not allowed
        mask[:, 0] = False
        kw["attn_mask"] = mask
    elif m == "float":
        kw["attn_mask"] = torch.randn(L, S, dtype=F64, device=device)
    elif m == "3d":
        kw["attn_mask"] = torch.randn(n * h, L, S, dtype=F64, device=device)
    elif m == "causal":
        kw["attn_mask"] = nn.Transformer.generate_square_subsequent_mask(
            L, device=device, dtype=F64)
    p = case.get("key_padding_mask")
    if p is not None:
        pad = torch.zeros(n, S, dtype=torch.bool, device=device)
        pad[0, -2:] = True  # the first sequence is two keys shorter
        pad[2, -1] = True
        kw["key_padding_mask"] = pad if p == "bool" else torch.zeros(
            n, S, dtype=F64, device=device).masked_fill(pad, float("-inf"))
    return (query, key, value), inputs, kw


@pytest.mark.parametrize("name", list(MHA_CASES))
def test_mha_matches_torch(device, name):
    case = MHA_CASES[name]
    ours, theirs = _twins(device, batch_first=case.get("batch_first", False),
                          bias=case.get("bias", True))
    ours.recompute = case.get("recompute", False)
    (query, key, value), inputs, kw = _mha_inputs(device, case)
    out1, w1 = ours(query, key, value, **kw)
    out2, w2 = theirs(query, key, value, **kw)
    torch.testing.assert_close(out1, out2, atol=1e-12, rtol=1e-10)
    assert (w1 is None) == (w2 is None)
    outputs1, outputs2, upstream = [out1], [out2], [torch.randn_like(out1)]
    if w1 is not None:
        torch.testing.assert_close(w1, w2, atol=1e-12, rtol=1e-10)
        outputs1.append(w1), outputs2.append(w2), upstream.append(torch.randn_like(w1))
    wrt1, wrt2 = (*inputs, *ours.parameters()), (*inputs, *theirs.parameters())
    _close(_grads(outputs1, wrt1, upstream), _grads(outputs2, wrt2, upstream))


def test_mha_dropout_mask_is_torchs_on_cpu():
    ours, theirs = _twins("cpu", dropout=0.4, batch_first=True)
    (x, _, _), _, _ = _mha_inputs("cpu", {"batch_first": True})
    g, gw = torch.randn(3, 4, 8, dtype=F64), torch.randn(3, 4, 4, dtype=F64)
    results = []
    for m in (ours, theirs):
        torch.manual_seed(3)
        out, w = m(x, x, x)
        results.append((out, w, *_grads((out, w), (x, *m.parameters()), (g, gw))))
    _close(*results)
    ours.eval(), theirs.eval()
    _close(ours(x, x, x), theirs(x, x, x))


def test_mha_fully_masked_query_is_zero_not_nan(device):
    """torch gives NaN for such rows with need_weights=True; bptorch gives 0 (the out_proj
    bias) as torch's own need_weights=False path does."""
    ours, theirs = _twins(device, batch_first=True)
    x = torch.randn(2, 4, 8, dtype=F64, device=device, requires_grad=True)
    pad = torch.zeros(2, 4, dtype=torch.bool, device=device)
    pad[1] = True  # every key of sequence 1 padded
    out, w = ours(x, x, x, key_padding_mask=pad)
    ref, _ = theirs(x, x, x, key_padding_mask=pad, need_weights=False)
    torch.testing.assert_close(out, ref)
    assert (w[1] == 0).all()
    grads = _grads(out, (x, *ours.parameters()), torch.randn_like(out))
    assert all(torch.isfinite(g).all() for g in grads)


def test_mha_inside_torch_transformer_encoder_layer(device):
    """TransformerEncoderLayer reads batch_first and _qkv_same_embed_dim and calls
    self_attn(x, x, x, attn_mask=, key_padding_mask=, need_weights=False, is_causal=)."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True,
                                       device=device, dtype=F64)
    ref = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True,
                                     device=device, dtype=F64)
    ref.load_state_dict(layer.state_dict())
    mha = bnn.MultiheadAttention(8, 2, batch_first=True, device=device, dtype=F64)
    mha.load_state_dict(layer.self_attn.state_dict())
    layer.self_attn = mha
    x = torch.randn(3, 5, 8, dtype=F64, device=device, requires_grad=True)
    mask = nn.Transformer.generate_square_subsequent_mask(5, device=device, dtype=F64)
    out, out_ref = layer(x, src_mask=mask, is_causal=True), ref(x, src_mask=mask, is_causal=True)
    torch.testing.assert_close(out, out_ref)
    g = torch.randn_like(out)
    _close(_grads(out, (x, *layer.parameters()), g), _grads(out_ref, (x, *ref.parameters()), g))


def test_mha_gradgradcheck(device):
    torch.manual_seed(0)
    m = bnn.MultiheadAttention(4, 2, device=device, dtype=F64)
    q = torch.randn(3, 2, 4, dtype=F64, device=device, requires_grad=True)
    k = torch.randn(5, 2, 4, dtype=F64, device=device, requires_grad=True)
    pad = torch.zeros(2, 5, dtype=torch.bool, device=device)
    pad[0, -1] = True
    fn = lambda q, k: m(q, k, k, key_padding_mask=pad)  # noqa: E731
    assert gradcheck(fn, (q, k))
    assert gradgradcheck(fn, (q, k))


def test_mha_bad_input():
    with pytest.raises(ValueError, match="divisible by num_heads"):
        bnn.MultiheadAttention(10, 3)
    for kw, name in ((dict(kdim=4), "kdim=4"), (dict(vdim=4), "vdim=4")):  # implemented now:
        with pytest.raises(ValueError, match=name):  # the key/value width is checked
            bnn.MultiheadAttention(8, 2, **kw)(*[torch.randn(3, 2, 8)] * 3)
    m = bnn.MultiheadAttention(8, 2)
    x = torch.randn(4, 3, 8)
    with pytest.raises(ValueError, match="embed_dim=8"):
        m(x[..., :6], x[..., :6], x[..., :6])
    with pytest.raises(ValueError, match="key_padding_mask of shape"):
        m(x, x, x, key_padding_mask=torch.zeros(4, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="attn_mask of shape"):
        m(x, x, x, attn_mask=torch.zeros(3, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="attn_mask of shape"):
        m(x, x, x, attn_mask=torch.zeros(5, 4, 4))
    with pytest.raises(ValueError, match="3-dim"):
        m(x, x[0], x[0])
    with pytest.raises(ValueError, match="same batch size"):
        m(x, x[:, :2], x[:, :2])
    with pytest.raises(RuntimeError, match="Need attn_mask"):
        m(x, x, x, is_causal=True)
    with pytest.raises(TypeError, match="bool and floating-point"):
        m(x, x, x, attn_mask=torch.zeros(4, 4, dtype=torch.long))
