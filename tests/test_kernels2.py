"""The Triton kernels of attention, the LSTM/GRU gates and Embedding's scatter-add.

As tests/test_kernels.py: the kernel tests need Triton's interpreter (``TRITON_INTERPRET=1``
before triton is imported), so they run in one child pytest process
(:func:`test_kernels_through_the_interpreter`) and skip in this one; on a GPU they run
on CUDA tensors here. Each compares a kernel with the reference (``use("reference")``)
and with torch, forward and backward with a random upstream gradient, at small
non-square shapes that cross several tiles and whose feature sizes are not powers of two.
The interpreter is slow (about a second for an attention forward and backward at these
shapes), so the cases are few and small.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bptorch
from bptorch import functional as BF
from bptorch import nn as bnn

from helpers import INTERPRET, interpreter_only, run_in_interpreter
from helpers import assert_all_close as _close
from helpers import upstream_grads as _grads


def _launches(*names: str) -> tuple[int, ...]:
    return tuple(bptorch.kernels.LAUNCHES.get(n, 0) for n in names)


@pytest.mark.skipif(INTERPRET, reason="this is the parent")
def test_kernels_through_the_interpreter():
    """Every kernel test below on CPU tensors, in a child process with TRITON_INTERPRET=1."""
    run_in_interpreter(__file__)


# ---------------------------------------------------------------- attention
# (batch dims, L, S, E, Ev, causal): with 16 × 16 tiles under the interpreter, L and S
# cross two or three tiles and end inside one; L > S puts causal rows past the last key
ATTN_CASES = [((1, 2), 20, 33, 12, 7, False), ((2,), 33, 18, 5, 9, True),
              ((1, 2), 20, 33, 12, 7, True), ((2,), 33, 18, 5, 9, False)]


def _sdpa_case(dtype, batch, L, S, E, Ev):
    q = torch.randn(*batch, L, E, dtype=dtype, requires_grad=True)
    k = torch.randn(*batch, S, E, dtype=dtype, requires_grad=True)
    v = torch.randn(*batch, S, Ev, dtype=dtype, requires_grad=True)
    return q, k, v, torch.randn(*batch, L, Ev, dtype=dtype)


@interpreter_only
@pytest.mark.parametrize("dtype,case", [
    (torch.float64, ATTN_CASES[0]), (torch.float64, ATTN_CASES[1]),
    (torch.float32, ATTN_CASES[2]), (torch.float32, ATTN_CASES[3])])
def test_attention_kernels(dtype, case):
    """O = softmax(scale · Q Kᵀ + B) V forward, dQ, dK, dV backward, B none or causal."""
    batch, L, S, E, Ev, causal = case
    q, k, v, g = _sdpa_case(dtype, batch, L, S, E, Ev)
    scale = None if causal else 0.3
    before = _launches("attention_fwd", "attention_bwd")
    with bptorch.kernels.use("triton"):
        o = BF.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
        got = (o, *_grads(o, (q, k, v), g))
    assert _launches("attention_fwd", "attention_bwd") == (before[0] + 1, before[1] + 1)
    with bptorch.kernels.use("reference"):
        o = BF.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
        ref = (o, *_grads(o, (q, k, v), g))
    o = F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
    _close(got, ref, dtype)
    _close(got, (o, *_grads(o, (q, k, v), g)), dtype)


@interpreter_only
def test_attention_mask_dropout_and_broadcast_take_the_reference():
    """An explicit mask, dropout and broadcast batch dims launch no attention kernel."""
    q, k, v, g = _sdpa_case(torch.float64, (2,), 5, 6, 3, 4)
    mask = torch.rand(5, 6) > 0.3
    before = _launches("attention_fwd", "attention_bwd")
    with bptorch.kernels.use("triton"):
        o = BF.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        got = (o, *_grads(o, (q, k, v), g))
        BF.scaled_dot_product_attention(q, k, v, dropout_p=0.5)
        BF.scaled_dot_product_attention(q, k[:1], v[:1])  # batch 2 against 1
    assert _launches("attention_fwd", "attention_bwd") == before
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    _close(got, (o, *_grads(o, (q, k, v), g)), torch.float64)


@interpreter_only
def test_attention_double_backward_takes_the_reference():
    """create_graph: the first gradient from the reference's differentiable ops, so its
    own gradient (double backward) equals torch's."""
    q, k, v, g = _sdpa_case(torch.float64, (1,), 6, 5, 4, 3)
    with bptorch.kernels.use("triton"):
        o = BF.scaled_dot_product_attention(q, k, v, is_causal=True)
        (gq,) = torch.autograd.grad(o, q, g, create_graph=True)
        got = torch.autograd.grad(gq, (q, k, v), torch.ones_like(gq))
    o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    (gq,) = torch.autograd.grad(o, q, g, create_graph=True)
    _close(got, torch.autograd.grad(gq, (q, k, v), torch.ones_like(gq)), torch.float64)


# ---------------------------------------------------------------- LSTM and GRU gates
RNN_CASES = [("LSTM", {}, torch.float64), ("LSTM", {"proj_size": 3}, torch.float32),
             ("GRU", {}, torch.float64), ("GRU", {"bias": False}, torch.float32)]


@interpreter_only
@pytest.mark.parametrize("kind,options,dtype", RNN_CASES,
                         ids=[f"{c[0]}{c[1]}-{c[2]}".replace(" ", "") for c in RNN_CASES])
def test_recurrent_gate_kernels(kind, options, dtype):
    """One layer over T = 3 steps (H = 5, N = 2): one gate launch per step each way;
    upstream gradients on the output and on the final states, given initial states."""
    T, N, H = 3, 2, 5
    ours = getattr(bnn, kind)(4, H, dtype=dtype, **options)
    ref = getattr(nn, kind)(4, H, dtype=dtype, **options)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(T, N, 4, dtype=dtype, requires_grad=True)
    h_out = options.get("proj_size", 0) or H
    h0 = torch.randn(1, N, h_out, dtype=dtype, requires_grad=True)
    state = (h0, torch.randn(1, N, H, dtype=dtype, requires_grad=True)) if kind == "LSTM" else h0
    inputs = [x, *(state if kind == "LSTM" else (state,))]
    gs = [torch.randn(T, N, h_out, dtype=dtype), torch.randn(1, N, h_out, dtype=dtype),
          torch.randn(1, N, H, dtype=dtype)][:len(inputs) + 1]  # on out, h_n (and c_n)
    names = (f"{kind.lower()}_gates_fwd", f"{kind.lower()}_gates_bwd")

    def run(model):
        out, s = model(x, state)
        outs = (out, *(s if kind == "LSTM" else (s,)))
        return (*outs, *_grads(outs, [*inputs, *model.parameters()], gs))

    results = {}
    for choice in ("triton", "reference"):
        before = _launches(*names)
        with bptorch.kernels.use(choice):
            results[choice] = run(ours)
        assert _launches(*names) == tuple(b + (T if choice == "triton" else 0) for b in before)
    results["nn"] = run(ref)
    _close(results["triton"], results["reference"], dtype)
    _close(results["triton"], results["nn"], dtype)


@interpreter_only
@pytest.mark.parametrize("kind", ["LSTMCell", "GRUCell"])
def test_recurrent_cell_gate_kernels(kind):
    ours = getattr(bnn, kind)(4, 6, dtype=torch.float64)
    ref = getattr(nn, kind)(4, 6, dtype=torch.float64)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    h = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    state = (h, torch.randn(3, 6, dtype=torch.float64, requires_grad=True)) \
        if kind == "LSTMCell" else h
    inputs = [x, *(state if kind == "LSTMCell" else (state,))]
    gs = [torch.randn(3, 6, dtype=torch.float64) for _ in range(2 if kind == "LSTMCell" else 1)]
    gate = kind[:-4].lower()
    results = {}
    for name, model in (("triton", ours), ("reference", ours), ("nn", ref)):
        before = _launches(f"{gate}_gates_fwd", f"{gate}_gates_bwd")
        with bptorch.kernels.use("triton" if name == "triton" else "reference"):
            out = model(x, state)
            outs = out if isinstance(out, tuple) else (out,)
            results[name] = (*outs, *_grads(outs, [*inputs, *model.parameters()], gs))
        launched = _launches(f"{gate}_gates_fwd", f"{gate}_gates_bwd")
        assert launched == tuple(b + (name == "triton") for b in before)
    _close(results["triton"], results["reference"], torch.float64)
    _close(results["triton"], results["nn"], torch.float64)


# ---------------------------------------------------------------- Embedding
@interpreter_only
@pytest.mark.parametrize("dtype,padding_idx,freq", [
    (torch.float64, None, False), (torch.float32, 2, True), (torch.float64, -1, True)])
def test_embedding_scatter_add_kernel(dtype, padding_idx, freq):
    """∂C/∂W = Σ_p δ_p e_{i_p}ᵀ, rows repeated (and the padding row used) on purpose;
    D = 300 spans two column blocks."""
    w = torch.randn(7, 300, dtype=dtype, requires_grad=True)
    idx = torch.randint(7, (3, 5))
    idx[0, :3] = 2
    idx[1, 0] = 6
    g = torch.randn(3, 5, 300, dtype=dtype)
    results = {}
    for choice in ("triton", "reference"):
        before = _launches("embedding_bwd")
        with bptorch.kernels.use(choice):
            y = BF.embedding(idx, w, padding_idx, scale_grad_by_freq=freq)
            results[choice] = (y, *_grads(y, (w,), g))
        assert _launches("embedding_bwd") == (before[0] + (choice == "triton"),)
    y = F.embedding(idx, w, padding_idx, scale_grad_by_freq=freq)
    _close(results["triton"], results["reference"], dtype)
    _close(results["triton"], (y, *_grads(y, (w,), g)), dtype)


# ---------------------------------------------------------------- torch.compile, half
@interpreter_only
def test_new_kernels_under_torch_compile_fullgraph():
    """Attention, the LSTM gates and the scatter-add, each one custom op to Dynamo:
    fullgraph (no graph break), equal to eager."""
    q, k, v, _g = _sdpa_case(torch.float32, (2,), 17, 19, 6, 5)
    w = torch.randn(9, 5, requires_grad=True)
    idx = torch.randint(9, (2, 17))
    lstm = bnn.LSTM(5, 4)

    def f(q, k, v, w):
        o = BF.scaled_dot_product_attention(q, k, v, is_causal=True) + BF.embedding(idx, w)
        out, _state = lstm(o.transpose(0, 1)[:2])  # (T = 2, N = 2, 5)
        return out.square().sum()

    names = ("attention_fwd", "attention_bwd", "lstm_gates_fwd", "lstm_gates_bwd",
             "embedding_bwd")
    leaves = (q, k, v, w, *lstm.parameters())
    with bptorch.kernels.use("triton"):
        before = _launches(*names)
        loss = torch.compile(f, backend="aot_eager", fullgraph=True)(q, k, v, w)
        grads = torch.autograd.grad(loss, leaves)
        assert all(a > b for a, b in zip(_launches(*names), before)), bptorch.kernels.LAUNCHES
        want = f(q, k, v, w)
        _close((loss, *grads), (want, *torch.autograd.grad(want, leaves)), torch.float32)


@interpreter_only
@pytest.mark.parametrize("dtype", [torch.float16, pytest.param(torch.bfloat16, marks=(
    pytest.mark.skipif(INTERPRET, reason="the interpreter's tl.dot gives wrong bfloat16 "
                       "products (float16 is right); bfloat16 runs on a GPU")))])
def test_new_kernels_in_half_precision(dtype):
    """Half in, float32 arithmetic (the matmuls' products in half, sums in float32), equal
    to the reference to half's rounding."""
    q, k, v, g = _sdpa_case(dtype, (2,), 20, 17, 8, 8)
    w = torch.randn(6, 8, dtype=dtype, requires_grad=True)
    idx = torch.randint(6, (2, 20))
    lstm = bnn.LSTM(8, 8, dtype=dtype)

    def f(q, k, v, w):
        o = BF.scaled_dot_product_attention(q, k, v, is_causal=True) + BF.embedding(idx, w)
        return lstm(o.transpose(0, 1)[:2])[0]

    leaves = (q, k, v, w, *lstm.parameters())
    results = {}
    for choice in ("triton", "reference"):
        with bptorch.kernels.use(choice):
            out = f(q, k, v, w)
            results[choice] = (out, *torch.autograd.grad(out, leaves, torch.ones_like(out)))
    for a, b in zip(results["triton"], results["reference"], strict=True):
        assert a.dtype == b.dtype
        scale = b.float().abs().max().item()
        torch.testing.assert_close(a.float(), b.float(), rtol=0, atol=0.03 * scale)
