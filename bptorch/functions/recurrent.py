"""Recurrent layers (Elman RNN, LSTM, GRU), with backpropagation through time written out.

A recurrent layer applies the same weights at every time step, so the seed's BP2, which
passes δ one layer down, here passes it one *step back*: the step t+1 that used h_t
sends (W_hh)ᵀ δ_{t+1} to it, and the output at step t sends its own ∂C/∂h_t. With
z_t = W_ih x_t + b_ih + W_hh h_{t−1} + b_hh and h_t = σ(z_t) (the Elman RNN):

    δ_t = ((W_hh)ᵀ δ_{t+1} + ∂C/∂h_t) ⊙ σ'(z_t)          BP2 through time
    ∂C/∂b_ih = ∂C/∂b_hh = Σ_t δ_t                           BP3, summed over the steps
    ∂C/∂W_ih = Σ_t δ_t x_tᵀ,  ∂C/∂W_hh = Σ_t δ_t h_{t−1}ᵀ   BP4, summed over the steps
    ∂C/∂x_t = (W_ih)ᵀ δ_t,  ∂C/∂h_0 = (W_hh)ᵀ δ_1            passed to the layer below / h_0

BP3 and BP4 sum over the steps because the weights are shared: each step's use of W
contributes its own δ_t (a_prev)ᵀ, as each example of a batch does.

The product of T factors (W_hh)ᵀ diag(σ'(z_t)) is what vanishes (or explodes) over long
sequences, chapter 5's lesson on the time axis. The LSTM's cell path, dc_{t−1} = dc_t ⊙ f_t,
has no weight matrix and no σ' in it: with forget gates near 1 the error flows back intact.

Shapes, time-first as torch's RNNs are inside: x (T, N, H_in), h_0 and c_0 (N, H), gates
stacked as torch stacks them in W_ih (G·H, H_in), W_hh (G·H, H) and the biases (G·H,):
LSTM (i, f, g, o), GRU (r, z, n). Rows are examples, so each step is batch-first:
``z_t = x_t @ W_ih.T + b_ih + h_prev @ W_hh.T + b_hh``, ``grad_W_hh = delta.T @ h_prev``.

Each step is a pair of plain functions, ``*_step`` and ``*_step_bwd`` (the written-out
equations of one step: δ_t, and what goes back to step t−1). One Function runs a whole
sequence for one layer and one direction through them: the forward loop keeps what the
backward needs, the backward runs the loop in reverse collecting δ_t, then BP3 and BP4 are
one matmul each over all T·N rows. What is kept, and why:

* RNN: the output h_1..h_T (an output anyway): σ'(z_t) = 1 − h_t² (tanh) or [h_t > 0]
  (ReLU; the subgradient at 0 is 0, as torch), and h_{t−1} for BP4.
* LSTM: the gate activations i, f, g, o (4H per step) and the cells c_1..c_T: every gate's
  σ' comes from its activation (σ' = a(1 − a), tanh' = 1 − a²), tanh(c_t) is recomputed.
* GRU: the gates r, z, n (3H per step) and W_hn h_{t−1} + b_hn (H per step), which δ_r needs.

The cells (RNNCell, LSTMCell, GRUCell) are one step: their Functions, at the end of this
file, call the same step pair, then BP3 and BP4 over the batch's rows.

The LSTM's projection (torch's ``proj_size`` P > 0) makes h_t = W_hr m_t with
m_t = o_t ⊙ tanh(c_t) (P < H): then dm_t = (W_hr)ᵀ ∂C/∂h_t takes the place of ∂C/∂h_t in
the gates' δ, and BP4 gives ∂C/∂W_hr = Σ_t ∂C/∂h_t m_tᵀ; h_t, W_hh's columns and the
layer's output are P wide.

The kept gates are constants to autograd: when the backward itself is differentiated
(``create_graph=True``) it reruns the forward loop with differentiable ops first, so that
double backward sees their dependence on the inputs.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import (LOWER, PER_EXAMPLE, BPFunction, count_launch, kernel_family, kernel_op,
                   per_example, per_example_need, use_kernel)

# a collection is on (bptorch.extensions): _weight_grads leaves (δ^ih, δ^hh) and (x, h_prev)
# here, and the Function's backward that called it hands them on with its ctx
_FACTORS: list[tuple] = []


# ---------------------------------------------------------------- shared BP3 / BP4
def _zeros_like_state(h0: Tensor) -> Tensor:
    return torch.zeros_like(h0)


def _h_prev(h0: Tensor, output: Tensor) -> Tensor:
    """h_0, …, h_{T−1}: (T, N, H), the hidden state each step started from."""
    return torch.cat([h0.unsqueeze(0), output[:-1]])


def _weight_grads(delta_ih: Tensor, delta_hh: Tensor, x: Tensor, h_prev: Tensor,
                  w_ih: Tensor, need: tuple[bool, ...]) -> tuple[Tensor | None, ...]:
    """∂C/∂x, ∂C/∂W_ih, ∂C/∂W_hh, ∂C/∂b_ih, ∂C/∂b_hh from the δ of every step (T, N, G·H).

    ``delta_ih`` is δ for z's input part W_ih x_t + b_ih, ``delta_hh`` for its hidden
    part W_hh h_{t−1} + b_hh (the same tensor except in the GRU, where r gates the latter).
    ``need``: (x, W_ih, W_hh, b_ih, b_hh).
    """
    need_x, need_w_ih, need_w_hh, need_b_ih, need_b_hh = need
    if PER_EXAMPLE:  # one entry at most: the Function that called this pops it
        _FACTORS[:] = [((delta_ih, delta_hh), (x, h_prev))]
    d_ih = delta_ih.reshape(-1, delta_ih.shape[-1])  # (T·N, G·H): every step's rows
    d_hh = delta_hh.reshape(-1, delta_hh.shape[-1])
    grad_x = grad_w_ih = grad_w_hh = grad_b_ih = grad_b_hh = None
    # z_t = x_t @ W_ih.T + b_ih + h_{t−1} @ W_hh.T + b_hh, summed over the steps:
    if need_x:
        grad_x = delta_ih @ w_ih  # →  BP2's factor: (W_ih)ᵀ δ_t, to the layer below
    if need_w_ih:
        grad_w_ih = d_ih.t() @ x.reshape(-1, x.shape[-1])  # →  BP4: Σ_t δ_t x_tᵀ
    if need_w_hh:
        grad_w_hh = d_hh.t() @ h_prev.reshape(-1, h_prev.shape[-1])  # →  BP4: Σ_t δ_t h_{t−1}ᵀ
    if need_b_ih:
        grad_b_ih = d_ih.sum(0)  # →  BP3: Σ_t δ_t
    if need_b_hh:
        grad_b_hh = d_hh.sum(0)  # →  BP3: Σ_t δ_t
    return grad_x, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh


def _upstream(grad_output: Tensor | None, t: int, dh: Tensor) -> Tensor:
    """∂C/∂h_t: what step t+1 sent back (dh) plus what the output at step t sends."""
    return dh if grad_output is None else dh + grad_output[t]


def _at(grad_output: Tensor | None, t: int) -> Tensor | None:
    """What the output at step t sends, ∂C/∂h_t's own part (None: the output got no gradient)."""
    return None if grad_output is None else grad_output[t]


# ---------------------------------------------------------------- Elman RNN
def rnn_step(z_in: Tensor, h_prev: Tensor, w_hh: Tensor, b_hh: Tensor | None,
             relu: bool) -> Tensor:
    """One step, h_t = σ(z_t), z_t = z_in + W_hh h_{t−1} + b_hh, given the input part
    z_in = W_ih x_t + b_ih."""
    sigma = torch.relu if relu else torch.tanh
    return sigma(z_in + F.linear(h_prev, w_hh, b_hh))  # z_t, then a_t = σ(z_t)


def rnn_step_bwd(dh: Tensor, h: Tensor, w_hh: Tensor, relu: bool) -> tuple[Tensor, Tensor]:
    """(δ_t, (W_hh)ᵀ δ_t) of :func:`rnn_step`, given dh = ∂C/∂h_t (all of it) and h_t."""
    sp = (h > 0).to(h.dtype) if relu else 1 - h * h  # σ'(z_t) from h_t
    # h_t = σ(z_t)  →  δ_t = ∂C/∂h_t ⊙ σ'(z_t)
    delta = dh * sp
    # z_t = … + W_hh h_{t−1}  →  BP2 through time: (W_hh)ᵀ δ_t, sent back to step t−1
    return delta, delta @ w_hh


def rnn_fwd(x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None,
            b_hh: Tensor | None, relu: bool) -> tuple[Tensor, Tensor]:
    """h_t = σ(W_ih x_t + b_ih + W_hh h_{t−1} + b_hh); returns (h_1..h_T, h_T)."""
    z_in = F.linear(x, w_ih, b_ih)  # W_ih x_t + b_ih for every step in one matmul
    h, hs = h0, []
    for t in range(x.shape[0]):
        h = rnn_step(z_in[t], h, w_hh, b_hh, relu)
        hs.append(h)
    return torch.stack(hs), h


def rnn_bwd(grad_output: Tensor | None, grad_h_n: Tensor | None, x: Tensor, h0: Tensor,
            w_ih: Tensor, w_hh: Tensor, output: Tensor, relu: bool,
            need: tuple[bool, ...]) -> tuple[Tensor | None, ...]:
    """(∂C/∂x, ∂C/∂h_0, ∂C/∂W_ih, ∂C/∂W_hh, ∂C/∂b_ih, ∂C/∂b_hh) of :func:`rnn_fwd`."""
    dh = grad_h_n if grad_h_n is not None else _zeros_like_state(h0)
    deltas: list[Tensor] = [dh] * x.shape[0]
    for t in reversed(range(x.shape[0])):
        # δ_t = ((W_hh)ᵀ δ_{t+1} + ∂C/∂h_t) ⊙ σ'(z_t), and (W_hh)ᵀ δ_t for step t−1
        deltas[t], dh = rnn_step_bwd(_upstream(grad_output, t, dh), output[t], w_hh, relu)
    delta = torch.stack(deltas)  # (T, N, H)
    need_x, need_h0, *need_params = need
    grad_x, *grads = _weight_grads(delta, delta, x, _h_prev(h0, output), w_ih,
                                   (need_x, *need_params))
    return (grad_x, dh if need_h0 else None, *grads)


class RNNLayerFunction(BPFunction):
    """One layer, one direction of the Elman RNN: h_t = σ(W_ih x_t + b_ih + W_hh h_{t−1} + b_hh).

    Backward through time, δ_t = ∂C/∂z_t:
    δ_t = ((W_hh)ᵀ δ_{t+1} + ∂C/∂h_t) ⊙ σ'(z_t); BP3 ∂C/∂b_ih = ∂C/∂b_hh = Σ_t δ_t;
    BP4 ∂C/∂W_ih = Σ_t δ_t x_tᵀ, ∂C/∂W_hh = Σ_t δ_t h_{t−1}ᵀ; ∂C/∂x_t = (W_ih)ᵀ δ_t;
    ∂C/∂h_0 = (W_hh)ᵀ δ_1. ∂C/∂h_t sums the error from the output at step t and, for
    t = T, from h_n.

    Time-first: input (T, N, H_in), h0 (N, H); returns (output (T, N, H), h_n (N, H)).
    ``nonlinearity``: "tanh" or "relu". Saves x, h0, the weights and the output.
    """

    autocast = LOWER  # as torch's RNN: its steps are linear layers

    @staticmethod
    def forward(input: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None,
                b_hh: Tensor | None, nonlinearity: str) -> tuple[Tensor, Tensor]:
        return rnn_fwd(input, h0, w_ih, w_hh, b_ih, b_hh, nonlinearity == "relu")

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        x, h0, w_ih, w_hh, _b_ih, _b_hh, nonlinearity = inputs
        ctx.relu = nonlinearity == "relu"
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, h0, w_ih, w_hh, output[0])

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor | None, grad_h_n: Tensor | None):
        # the saved output is this Function's own, so double backward needs no rerun
        x, h0, w_ih, w_hh, output = ctx.saved_tensors
        need = ctx.needs_input_grad[:6]
        if PER_EXAMPLE:  # a clipping collector forms BP3/BP4 itself: skipped here
            need = per_example_need("recurrent", ctx, need)
        grads = rnn_bwd(grad_output, grad_h_n, x, h0, w_ih, w_hh, output, ctx.relu, need)
        if PER_EXAMPLE and _FACTORS:  # a collection is on: δ and a^{l-1} of both matmuls
            grads = per_example("recurrent", ctx, grads, *_FACTORS.pop())
        return (*grads, None)


# ---------------------------------------------------------------- LSTM
def lstm_step(z_in: Tensor, h_prev: Tensor, c_prev: Tensor, w_hh: Tensor,
              b_hh: Tensor | None, w_hr: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """One step of torch's LSTM, given the input part z_in = W_ih x_t + b_ih:
    (i, f, g, o) = (σ, σ, tanh, σ)(z_in + W_hh h_{t−1} + b_hh), c_t = f ⊙ c_{t−1} + i ⊙ g,
    m_t = o ⊙ tanh(c_t), h_t = m_t, or h_t = W_hr m_t with a projection (proj_size > 0).

    Returns (h_t, c_t, the gates (i; f; g; o) activated)."""
    z_i, z_f, z_g, z_o = (z_in + F.linear(h_prev, w_hh, b_hh)).chunk(4, -1)
    i, f, g, o = torch.sigmoid(z_i), torch.sigmoid(z_f), torch.tanh(z_g), torch.sigmoid(z_o)
    c = f * c_prev + i * g
    m = o * torch.tanh(c)
    h = m if w_hr is None else F.linear(m, w_hr)
    return h, c, torch.cat([i, f, g, o], -1)


def lstm_step_bwd(dh: Tensor, dc: Tensor, gates: Tensor, c: Tensor, c_prev: Tensor,
                  w_hh: Tensor, w_hr: Tensor | None = None,
                  grad_output: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """(δ_t, (W_hh)ᵀ δ_t, ∂C/∂c_{t−1}) of :func:`lstm_step`, given dh = ∂C/∂h_t (all of it,
    or what step t+1 sent back, with ``grad_output`` the output's part), dc = what the cell
    path brings back from step t+1 (dc_{t+1} ⊙ f_{t+1}; ∂C/∂c_T at t = T), the step's
    gates, c_t and c_{t−1}."""
    if grad_output is not None:  # ∂C/∂h_t = what step t+1 sent back + the output's part
        dh = dh + grad_output
    i, f, g, o = gates.chunk(4, -1)
    tanh_c = torch.tanh(c)
    # h_t = W_hr m_t  →  dm_t = (W_hr)ᵀ dh_t; without a projection m_t is h_t
    dm = dh if w_hr is None else dh @ w_hr
    # m_t = o ⊙ tanh(c_t)  →  the cell path: dc_t = dm_t ⊙ o_t ⊙ (1 − tanh² c_t)
    # + dc_{t+1} ⊙ f_{t+1}
    dc = dc + dm * o * (1 - tanh_c * tanh_c)
    # c_t = f ⊙ c_{t−1} + i ⊙ g, i = σ(z_i)  →  δ_i = dc_t ⊙ g_t ⊙ σ'(z_i)
    delta_i = dc * g * i * (1 - i)
    # c_t = f ⊙ c_{t−1} + i ⊙ g, f = σ(z_f)  →  δ_f = dc_t ⊙ c_{t−1} ⊙ σ'(z_f)
    delta_f = dc * c_prev * f * (1 - f)
    # c_t = f ⊙ c_{t−1} + i ⊙ g, g = tanh(z_g)  →  δ_g = dc_t ⊙ i_t ⊙ tanh'(z_g)
    delta_g = dc * i * (1 - g * g)
    # m_t = o ⊙ tanh(c_t), o = σ(z_o)  →  δ_o = dm_t ⊙ tanh(c_t) ⊙ σ'(z_o)
    delta_o = dm * tanh_c * o * (1 - o)
    delta = torch.cat([delta_i, delta_f, delta_g, delta_o], -1)
    # z_t = … + W_hh h_{t−1}  →  BP2 through time: (W_hh)ᵀ δ_t, sent back to step t−1;
    # c_t = f ⊙ c_{t−1} + …  →  dc_{t−1} = dc_t ⊙ f_t, the cell path: no weight, no σ'
    return delta, delta @ w_hh, dc * f


def lstm_fwd(x: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor,
             b_ih: Tensor | None, b_hh: Tensor | None, w_hr: Tensor | None = None,
             step=lstm_step) -> tuple[Tensor, ...]:
    """torch's LSTM over the sequence, ``step`` (:func:`lstm_step`) at each step.

    Returns (h_1..h_T, h_T, c_T, gates (T, N, 4H) activated, c_1..c_T)."""
    z_in = F.linear(x, w_ih, b_ih)  # every step's input part in one matmul
    h, c, hs, cs, gates = h0, c0, [], [], []
    for t in range(x.shape[0]):
        h, c, gate = step(z_in[t], h, c, w_hh, b_hh, w_hr)
        hs.append(h), cs.append(c), gates.append(gate)
    return torch.stack(hs), h, c, torch.stack(gates), torch.stack(cs)


def lstm_bwd(grad_output: Tensor | None, grad_h_n: Tensor | None, grad_c_n: Tensor | None,
             x: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor, output: Tensor,
             gates: Tensor, cs: Tensor, need: tuple[bool, ...],
             w_hr: Tensor | None = None, step_bwd=lstm_step_bwd) -> tuple[Tensor | None, ...]:
    """(∂C/∂x, ∂C/∂h_0, ∂C/∂c_0, ∂C/∂W_ih, ∂C/∂W_hh, ∂C/∂b_ih, ∂C/∂b_hh, ∂C/∂W_hr) of
    :func:`lstm_fwd` (the last None without a projection), ``step_bwd``
    (:func:`lstm_step_bwd`) at each step."""
    dh = grad_h_n if grad_h_n is not None else _zeros_like_state(h0)
    dc = grad_c_n if grad_c_n is not None else _zeros_like_state(c0)
    c_prev = torch.cat([c0.unsqueeze(0), cs[:-1]])
    deltas: list[Tensor] = [dh] * x.shape[0]
    dhs: list[Tensor] = [dh] * x.shape[0]  # ∂C/∂h_t, for W_hr's BP4 (projection only)
    for t in reversed(range(x.shape[0])):
        g_t = _at(grad_output, t)  # the output's part of ∂C/∂h_t, added in the step
        if w_hr is not None:  # ∂C/∂h_t in full before (W_hr)ᵀ: added here, kept for BP4
            dhs[t] = dh = _upstream(grad_output, t, dh)
            g_t = None
        deltas[t], dh, dc = step_bwd(dh, dc, gates[t], cs[t], c_prev[t], w_hh, w_hr, g_t)
    return _lstm_grads(torch.stack(deltas), dhs, dh, dc, x, h0, w_ih, output, gates, cs, need,
                       w_hr)


def _lstm_grads(delta: Tensor, dhs: list[Tensor], dh: Tensor, dc: Tensor, x: Tensor,
                h0: Tensor, w_ih: Tensor, output: Tensor, gates: Tensor, cs: Tensor,
                need: tuple[bool, ...], w_hr: Tensor | None) -> tuple[Tensor | None, ...]:
    """:func:`lstm_bwd`'s gradients from every step's δ (T, N, 4H), ∂C/∂h_t (for W_hr) and
    what reached h_0 and c_0: BP3 and BP4 over all steps at once."""
    need_x, need_h0, need_c0, *need_params = need
    grad_x, *grads = _weight_grads(delta, delta, x, _h_prev(h0, output), w_ih,
                                   (need_x, *need_params[:4]))
    grad_w_hr = None
    if w_hr is not None and need_params[4:5] == [True]:
        m = gates[..., 3 * cs.shape[-1]:] * torch.tanh(cs)  # m_t = o_t ⊙ tanh(c_t)
        # h_t = W_hr m_t  →  BP4: Σ_t dh_t m_tᵀ
        grad_w_hr = torch.stack(dhs).reshape(-1, w_hr.shape[0]).t() @ m.reshape(-1, m.shape[-1])
    return (grad_x, dh if need_h0 else None, dc if need_c0 else None, *grads, grad_w_hr)


class LSTMLayerFunction(BPFunction):
    """One layer, one direction of torch's LSTM: with
    (z_i; z_f; z_g; z_o) = W_ih x_t + b_ih + W_hh h_{t−1} + b_hh,
    i, f, o = σ(z_i, z_f, z_o), g = tanh(z_g), c_t = f_t ⊙ c_{t−1} + i_t ⊙ g_t,
    h_t = o_t ⊙ tanh(c_t).

    Backward through time, with dh_t = (W_hh)ᵀ δ_{t+1} + ∂C/∂h_t and the cell path
    dc_t = dh_t ⊙ o_t ⊙ (1 − tanh² c_t) + dc_{t+1} ⊙ f_{t+1}, each gate's δ:
    δ_o = dh_t ⊙ tanh(c_t) ⊙ o(1 − o), δ_i = dc_t ⊙ g_t ⊙ i(1 − i),
    δ_f = dc_t ⊙ c_{t−1} ⊙ f(1 − f), δ_g = dc_t ⊙ i_t ⊙ (1 − g²); δ_t = (δ_i; δ_f; δ_g; δ_o),
    then BP3 Σ_t δ_t, BP4 Σ_t δ_t x_tᵀ and Σ_t δ_t h_{t−1}ᵀ, ∂C/∂x_t = (W_ih)ᵀ δ_t,
    ∂C/∂h_0 = (W_hh)ᵀ δ_1, ∂C/∂c_0 = dc_1 ⊙ f_1.

    With a projection ``w_hr`` (P, H), h_t = W_hr (o_t ⊙ tanh(c_t)): dh_t passes through
    (W_hr)ᵀ before the gates, and BP4 ∂C/∂W_hr = Σ_t dh_t (o_t ⊙ tanh(c_t))ᵀ.

    Time-first: input (T, N, H_in), h0 (N, H or P), c0 (N, H); returns (output (T, N, H
    or P), h_n, c_n, gates, cells), the last two kept for backward and not differentiable.
    """

    autocast = LOWER  # torch's LSTM is on the lower-precision list

    @staticmethod
    def forward(input: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor,
                b_ih: Tensor | None, b_hh: Tensor | None,
                w_hr: Tensor | None = None) -> tuple[Tensor, ...]:
        if use_kernel(input):  # bptorch.kernels: the gate kernels (the file's end)
            return lstm_fwd_triton(input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr)
        return lstm_fwd(input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr = inputs
        out, _h_n, _c_n, gates, cs = output
        ctx.mark_non_differentiable(gates, cs)
        ctx.set_materialize_grads(False)
        ctx.kernel = use_kernel(x)  # bptorch.kernels: the forward's choice, for backward
        ctx.save_for_backward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, out, gates, cs)

    @staticmethod
    def backward(ctx: Any, grad_output, grad_h_n, grad_c_n, _grad_gates, _grad_cs):
        x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, out, gates, cs = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: the gates as functions of the inputs
            out, _h, _c, gates, cs = lstm_fwd(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr)
        need = ctx.needs_input_grad
        if PER_EXAMPLE:  # a clipping collector forms BP3/BP4 itself: skipped here
            need = per_example_need("lstm", ctx, need)
        # bptorch.kernels: the gate kernels (the file's end), outside create_graph
        bwd = lstm_bwd_triton if ctx.kernel and not torch.is_grad_enabled() else lstm_bwd
        grads = bwd(grad_output, grad_h_n, grad_c_n, x, h0, c0, w_ih, w_hh, out, gates, cs,
                    need, w_hr)
        if PER_EXAMPLE and _FACTORS:  # a collection is on: δ and a^{l-1} of both matmuls
            grads = per_example("lstm", ctx, grads, *_FACTORS.pop())
        return grads


# ---------------------------------------------------------------- GRU
def gru_step(gi: Tensor, h_prev: Tensor, w_hh: Tensor,
             b_hh: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """One step of torch's GRU, given the input part gi = W_ih x_t + b_ih = (i_r; i_z; i_n):
    r = σ(i_r + W_hr h + b_hr), z = σ(i_z + W_hz h + b_hz), n = tanh(i_n + r ⊙ (W_hn h + b_hn)),
    h_t = (1 − z) ⊙ n + z ⊙ h_{t−1}.

    Returns (h_t, the gates (r; z; n), W_hn h_{t−1} + b_hn)."""
    i_r, i_z, i_n = gi.chunk(3, -1)
    h_r, h_z, h_n = F.linear(h_prev, w_hh, b_hh).chunk(3, -1)
    r, z = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
    n = torch.tanh(i_n + r * h_n)
    h = (1 - z) * n + z * h_prev
    return h, torch.cat([r, z, n], -1), h_n


def gru_step_bwd(dh: Tensor, h_prev: Tensor, gates: Tensor, hn: Tensor, w_hh: Tensor,
                 grad_output: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """(δ^ih_t, δ^hh_t, ∂C/∂h_{t−1}) of :func:`gru_step`, given dh = ∂C/∂h_t (all of it,
    or what step t+1 sent back, with ``grad_output`` the output's part), h_{t−1}, the
    step's gates and W_hn h_{t−1} + b_hn."""
    if grad_output is not None:  # ∂C/∂h_t = what step t+1 sent back + the output's part
        dh = dh + grad_output
    r, z, n = gates.chunk(3, -1)
    # h_t = (1 − z) ⊙ n + z ⊙ h_{t−1}, n = tanh(z_n)  →  δ_n = dh_t ⊙ (1 − z) ⊙ tanh'(z_n)
    delta_n = dh * (1 - z) * (1 - n * n)
    # h_t = (1 − z) ⊙ n + z ⊙ h_{t−1}, z = σ(z_z)  →  δ_z = dh_t ⊙ (h_{t−1} − n) ⊙ σ'(z_z)
    delta_z = dh * (h_prev - n) * z * (1 - z)
    # z_n = W_in x + b_in + r ⊙ (W_hn h + b_hn), r = σ(z_r)  →  δ_r = δ_n ⊙ (W_hn h + b_hn)
    # ⊙ σ'(z_r)
    delta_r = delta_n * hn * r * (1 - r)
    delta_ih = torch.cat([delta_r, delta_z, delta_n], -1)  # δ of W_ih x + b_ih
    # δ of W_hh h + b_hh: r gates n's hidden part
    delta_hh = torch.cat([delta_r, delta_z, delta_n * r], -1)
    # h_t = … + z ⊙ h_{t−1} and z_t = … + W_hh h_{t−1}  →  the z ⊙ h_{t−1} path, plus BP2
    # through time: dh_{t−1} = dh_t ⊙ z + (W_hh)ᵀ δ_t
    return delta_ih, delta_hh, dh * z + delta_hh @ w_hh


def gru_fwd(x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None,
            b_hh: Tensor | None, step=gru_step) -> tuple[Tensor, ...]:
    """torch's GRU over the sequence, ``step`` (:func:`gru_step`) at each step.

    Returns (h_1..h_T, h_T, gates (T, N, 3H) = (r; z; n), W_hn h_{t−1} + b_hn (T, N, H))."""
    gi = F.linear(x, w_ih, b_ih)  # every step's input part in one matmul
    h, hs, gates, hns = h0, [], [], []
    for t in range(x.shape[0]):
        h, gate, h_n = step(gi[t], h, w_hh, b_hh)
        hs.append(h), gates.append(gate), hns.append(h_n)
    return torch.stack(hs), h, torch.stack(gates), torch.stack(hns)


def gru_bwd(grad_output: Tensor | None, grad_h_n: Tensor | None, x: Tensor, h0: Tensor,
            w_ih: Tensor, w_hh: Tensor, output: Tensor, gates: Tensor, hns: Tensor,
            need: tuple[bool, ...], step_bwd=gru_step_bwd) -> tuple[Tensor | None, ...]:
    """(∂C/∂x, ∂C/∂h_0, ∂C/∂W_ih, ∂C/∂W_hh, ∂C/∂b_ih, ∂C/∂b_hh) of :func:`gru_fwd`,
    ``step_bwd`` (:func:`gru_step_bwd`) at each step."""
    h_prev = _h_prev(h0, output)
    dh = grad_h_n if grad_h_n is not None else _zeros_like_state(h0)
    deltas_ih: list[Tensor] = [dh] * x.shape[0]
    deltas_hh: list[Tensor] = [dh] * x.shape[0]
    for t in reversed(range(x.shape[0])):
        # ∂C/∂h_t = dh (what step t+1 sent back) + the output's part, added in the step
        deltas_ih[t], deltas_hh[t], dh = step_bwd(dh, h_prev[t], gates[t], hns[t], w_hh,
                                                  _at(grad_output, t))
    need_x, need_h0, *need_params = need
    grad_x, *grads = _weight_grads(torch.stack(deltas_ih), torch.stack(deltas_hh), x, h_prev,
                                   w_ih, (need_x, *need_params))
    return (grad_x, dh if need_h0 else None, *grads)


class GRULayerFunction(BPFunction):
    """One layer, one direction of torch's GRU (equations in :func:`gru_fwd`).

    Backward through time, with dh_t = ∂C/∂h_t from the output at step t and from step t+1:
    δ_n = dh_t ⊙ (1 − z_t) ⊙ (1 − n_t²), δ_z = dh_t ⊙ (h_{t−1} − n_t) ⊙ z(1 − z),
    δ_r = δ_n ⊙ (W_hn h_{t−1} + b_hn) ⊙ r(1 − r). The input part W_ih x + b_ih gets
    δ^ih = (δ_r; δ_z; δ_n), the hidden part W_hh h + b_hh gets δ^hh = (δ_r; δ_z; r ⊙ δ_n);
    BP3 Σ_t δ_t and BP4 Σ_t δ_t x_tᵀ, Σ_t δ_t h_{t−1}ᵀ with the matching δ, and
    dh_{t−1} = dh_t ⊙ z_t + (W_hh)ᵀ δ^hh_t.

    Time-first: input (T, N, H_in), h0 (N, H); returns (output (T, N, H), h_n, gates,
    W_hn h + b_hn), the last two kept for backward and not differentiable.
    """

    autocast = {"cuda": LOWER}  # torch's GRU: lower precision on CUDA, input dtype on the CPU

    @staticmethod
    def forward(input: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None,
                b_hh: Tensor | None) -> tuple[Tensor, ...]:
        if use_kernel(input):  # bptorch.kernels: the gate kernels (the file's end)
            return gru_fwd_triton(input, h0, w_ih, w_hh, b_ih, b_hh)
        return gru_fwd(input, h0, w_ih, w_hh, b_ih, b_hh)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        x, h0, w_ih, w_hh, b_ih, b_hh = inputs
        out, _h_n, gates, hns = output
        ctx.mark_non_differentiable(gates, hns)
        ctx.set_materialize_grads(False)
        ctx.kernel = use_kernel(x)  # bptorch.kernels: the forward's choice, for backward
        ctx.save_for_backward(x, h0, w_ih, w_hh, b_ih, b_hh, out, gates, hns)

    @staticmethod
    def backward(ctx: Any, grad_output, grad_h_n, _grad_gates, _grad_hns):
        x, h0, w_ih, w_hh, b_ih, b_hh, out, gates, hns = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: the gates as functions of the inputs
            out, _h, gates, hns = gru_fwd(x, h0, w_ih, w_hh, b_ih, b_hh)
        need = ctx.needs_input_grad
        if PER_EXAMPLE:  # a clipping collector forms BP3/BP4 itself: skipped here
            need = per_example_need("recurrent", ctx, need)
        # bptorch.kernels: the gate kernels (the file's end), outside create_graph
        bwd = gru_bwd_triton if ctx.kernel and not torch.is_grad_enabled() else gru_bwd
        grads = bwd(grad_output, grad_h_n, x, h0, w_ih, w_hh, out, gates, hns, need)
        if PER_EXAMPLE and _FACTORS:  # a collection is on: δ and a^{l-1} of both matmuls
            grads = per_example("recurrent", ctx, grads, *_FACTORS.pop())
        return grads


# ---------------------------------------------------------------- the cells: one step
# RNNCell, LSTMCell and GRUCell are one step of the layers above: the same step functions
# forward and backward, then BP3 and BP4 over the batch's rows (_weight_grads with no time
# axis). Batch-first: input (N, H_in), states (N, H).
class RNNCellFunction(BPFunction):
    """h' = σ(W_ih x + b_ih + W_hh h + b_hh), one step of :class:`RNNLayerFunction`.

    Backward, given ∂C/∂h': δ = ∂C/∂h' ⊙ σ'(z) (:func:`rnn_step_bwd`); BP3
    ∂C/∂b_ih = ∂C/∂b_hh = Σ_rows δ; BP4 ∂C/∂W_ih = δᵀ x, ∂C/∂W_hh = δᵀ h;
    ∂C/∂x = δ W_ih, ∂C/∂h = δ W_hh. Saves x, h, the weights and h' (σ' comes from it).
    """

    autocast = LOWER  # torch's rnn_*_cell: two linear layers, in the autocast dtype

    @staticmethod
    def forward(input: Tensor, hx: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None,
                b_hh: Tensor | None, nonlinearity: str) -> Tensor:
        return rnn_step(F.linear(input, w_ih, b_ih), hx, w_hh, b_hh, nonlinearity == "relu")

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        x, hx, w_ih, w_hh, _b_ih, _b_hh, nonlinearity = inputs
        ctx.relu = nonlinearity == "relu"
        ctx.save_for_backward(x, hx, w_ih, w_hh, output)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor):
        x, hx, w_ih, w_hh, h = ctx.saved_tensors
        need_x, need_h, *need_params = ctx.needs_input_grad[:6]
        delta, dh = rnn_step_bwd(grad_output, h, w_hh, ctx.relu)
        grad_x, *grads = _weight_grads(delta, delta, x, hx, w_ih, (need_x, *need_params))
        grads = (grad_x, dh if need_h else None, *grads, None)
        if PER_EXAMPLE and _FACTORS:  # a collection is on: δ and a^{l-1} of both matmuls
            grads = per_example("cell", ctx, grads, *_FACTORS.pop())
        return grads


class LSTMCellFunction(BPFunction):
    """(h', c') of one step of :class:`LSTMLayerFunction` (no projection), returned with
    the gates (i; f; g; o), kept for backward and not differentiable.

    Backward, given ∂C/∂h' and ∂C/∂c': each gate's δ as :func:`lstm_step_bwd`, then BP3
    Σ_rows δ, BP4 δᵀ x and δᵀ h, ∂C/∂x = δ W_ih, ∂C/∂h = δ W_hh, ∂C/∂c = dc' ⊙ f.
    """

    autocast = {"cuda": LOWER}  # torch's lstm_cell: the autocast dtype on CUDA; on the CPU
    # its outputs come in the states' dtype

    @staticmethod
    def forward(input: Tensor, h: Tensor, c: Tensor, w_ih: Tensor, w_hh: Tensor,
                b_ih: Tensor | None, b_hh: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        step = lstm_step_triton if use_kernel(input) else lstm_step  # bptorch.kernels
        return step(F.linear(input, w_ih, b_ih), h, c, w_hh, b_hh)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        x, h, c, w_ih, w_hh, b_ih, b_hh = inputs
        _h1, c1, gates = output
        ctx.mark_non_differentiable(gates)
        ctx.set_materialize_grads(False)
        ctx.kernel = use_kernel(x)  # bptorch.kernels: the forward's choice, for backward
        ctx.save_for_backward(x, h, c, w_ih, w_hh, b_ih, b_hh, c1, gates)

    @staticmethod
    def backward(ctx: Any, grad_h: Tensor | None, grad_c: Tensor | None, _grad_gates):
        x, h, c, w_ih, w_hh, b_ih, b_hh, c1, gates = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: the gates as functions of the inputs
            _h1, c1, gates = lstm_step(F.linear(x, w_ih, b_ih), h, c, w_hh, b_hh)
        need_x, need_h, need_c, *need_params = ctx.needs_input_grad
        dh = grad_h if grad_h is not None else _zeros_like_state(h)
        dc = grad_c if grad_c is not None else _zeros_like_state(c)
        step_bwd = (lstm_step_bwd_triton if ctx.kernel and not torch.is_grad_enabled()
                    else lstm_step_bwd)  # bptorch.kernels, outside create_graph
        delta, dh, dc = step_bwd(dh, dc, gates, c1, c, w_hh)
        grad_x, *grads = _weight_grads(delta, delta, x, h, w_ih, (need_x, *need_params))
        grads = (grad_x, dh if need_h else None, dc if need_c else None, *grads)
        if PER_EXAMPLE and _FACTORS:  # a collection is on: δ and a^{l-1} of both matmuls
            grads = per_example("lstm_cell", ctx, grads, *_FACTORS.pop())
        return grads


class GRUCellFunction(BPFunction):
    """h' of one step of :class:`GRULayerFunction`, returned with the gates (r; z; n) and
    W_hn h + b_hn, kept for backward and not differentiable.

    Backward, given ∂C/∂h': δ^ih and δ^hh as :func:`gru_step_bwd`, BP3 Σ_rows δ, BP4
    (δ^ih)ᵀ x and (δ^hh)ᵀ h, ∂C/∂x = δ^ih W_ih, ∂C/∂h = ∂C/∂h' ⊙ z + δ^hh W_hh.
    """

    autocast = {"cuda": LOWER}  # torch's gru_cell: as lstm_cell

    @staticmethod
    def forward(input: Tensor, hx: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None,
                b_hh: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        step = gru_step_triton if use_kernel(input) else gru_step  # bptorch.kernels
        return step(F.linear(input, w_ih, b_ih), hx, w_hh, b_hh)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        x, hx, w_ih, w_hh, b_ih, b_hh = inputs
        _h1, gates, hn = output
        ctx.mark_non_differentiable(gates, hn)
        ctx.kernel = use_kernel(x)  # bptorch.kernels: the forward's choice, for backward
        ctx.save_for_backward(x, hx, w_ih, w_hh, b_ih, b_hh, gates, hn)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor, _grad_gates, _grad_hn):
        x, hx, w_ih, w_hh, b_ih, b_hh, gates, hn = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: the gates as functions of the inputs
            _h1, gates, hn = gru_step(F.linear(x, w_ih, b_ih), hx, w_hh, b_hh)
        need_x, need_h, *need_params = ctx.needs_input_grad
        step_bwd = (gru_step_bwd_triton if ctx.kernel and not torch.is_grad_enabled()
                    else gru_step_bwd)  # bptorch.kernels, outside create_graph
        delta_ih, delta_hh, dh = step_bwd(grad_output, hx, gates, hn, w_hh)
        grad_x, *grads = _weight_grads(delta_ih, delta_hh, x, hx, w_ih, (need_x, *need_params))
        grads = (grad_x, dh if need_h else None, *grads)
        if PER_EXAMPLE and _FACTORS:  # a collection is on: δ and a^{l-1} of both matmuls
            grads = per_example("cell", ctx, grads, *_FACTORS.pop())
        return grads


__all__ = ["GRUCellFunction", "GRULayerFunction", "LSTMCellFunction", "LSTMLayerFunction",
           "RNNCellFunction", "RNNLayerFunction", "gru_bwd", "gru_fwd", "gru_step",
           "gru_step_bwd", "lstm_bwd", "lstm_fwd", "lstm_step", "lstm_step_bwd", "rnn_bwd",
           "rnn_fwd", "rnn_step", "rnn_step_bwd"]


# ---------------------------------------------------------------- Triton kernels
# The gate products of one step in one launch each way, where the reference launches
# about ten elementwise ops forward and twenty backward (bptorch.kernels picks them:
# "triton", or "auto" on CUDA). The GEMMs stay torch matmuls: each step is one GEMM and
# one gate kernel forward (z_t = z_in + b_hh + h_{t−1} W_hhᵀ), one gate kernel and one
# GEMM backward ((W_hh)ᵀ δ_t); the loops over the steps are the reference's, given these
# steps. One program per BLOCK of the step's N·H elements (n, j), each reading its gates
# at j, H + j, 2H + j, (3H + j) of row n; tanh z = 2σ(2z) − 1, which cannot overflow.
# Arithmetic in float32 (float64 for float64). Built on first use (importing this file
# imports no triton); tests/test_kernels2.py runs them through Triton's interpreter
# against the reference and torch.nn.LSTM/GRU. Double backward and torch.func take the reference.
GATE_BLOCK = 1024  # elements (n, j) a program holds


def _build_triton_kernels() -> dict[str, Any]:
    """Each kernel's custom op by name (run once, on first use: :func:`base.kernel_family`)."""
    import triton
    import triton.language as tl
    from torch.library import wrap_triton

    @triton.jit
    def lstm_gates_fwd_kernel(z_ptr, c_prev_ptr, m_ptr, c_ptr, gates_ptr, H, n_elem,
                              ACC: tl.constexpr, BLOCK: tl.constexpr):
        """(i, f, g, o) = (σ, σ, tanh, σ)(z), c_t = f ⊙ c_{t−1} + i ⊙ g, m_t = o ⊙ tanh(c_t)."""
        idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # (n, j) = n·H + j
        mask = idx < n_elem
        row = (idx // H) * 4 * H + idx % H  # z[n, j]: gate i; f, g, o at +H, +2H, +3H
        i = tl.sigmoid(tl.load(z_ptr + row, mask=mask, other=0.0).to(ACC))
        f = tl.sigmoid(tl.load(z_ptr + row + H, mask=mask, other=0.0).to(ACC))
        g = 2.0 * tl.sigmoid(2.0 * tl.load(z_ptr + row + 2 * H, mask=mask, other=0.0).to(ACC)) - 1.0
        o = tl.sigmoid(tl.load(z_ptr + row + 3 * H, mask=mask, other=0.0).to(ACC))
        c = f * tl.load(c_prev_ptr + idx, mask=mask, other=0.0).to(ACC) + i * g  # c_t
        m = o * (2.0 * tl.sigmoid(2.0 * c) - 1.0)  # m_t = o ⊙ tanh(c_t)
        out = gates_ptr.dtype.element_ty
        tl.store(gates_ptr + row, i.to(out), mask=mask)  # kept: σ' comes from them
        tl.store(gates_ptr + row + H, f.to(out), mask=mask)
        tl.store(gates_ptr + row + 2 * H, g.to(out), mask=mask)
        tl.store(gates_ptr + row + 3 * H, o.to(out), mask=mask)
        tl.store(c_ptr + idx, c.to(c_ptr.dtype.element_ty), mask=mask)
        tl.store(m_ptr + idx, m.to(m_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def lstm_gates_bwd_kernel(dm_ptr, gout_ptr, dc_ptr, gates_ptr, c_ptr, c_prev_ptr,
                              delta_ptr, dc_prev_ptr, H, n_elem, HAS_GOUT: tl.constexpr,
                              ACC: tl.constexpr, BLOCK: tl.constexpr):
        """Each gate's δ from dm_t (+ the output's ∂C/∂h_t) and the cell path's dc, and
        dc_{t−1} = dc_t ⊙ f_t."""
        idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = idx < n_elem
        row = (idx // H) * 4 * H + idx % H
        dm = tl.load(dm_ptr + idx, mask=mask, other=0.0).to(ACC)
        if HAS_GOUT:  # ∂C/∂h_t = what step t+1 sent back + what the output at step t sends
            dm += tl.load(gout_ptr + idx, mask=mask, other=0.0).to(ACC)
        i = tl.load(gates_ptr + row, mask=mask, other=0.0).to(ACC)
        f = tl.load(gates_ptr + row + H, mask=mask, other=0.0).to(ACC)
        g = tl.load(gates_ptr + row + 2 * H, mask=mask, other=0.0).to(ACC)
        o = tl.load(gates_ptr + row + 3 * H, mask=mask, other=0.0).to(ACC)
        c_prev = tl.load(c_prev_ptr + idx, mask=mask, other=0.0).to(ACC)
        tanh_c = 2.0 * tl.sigmoid(2.0 * tl.load(c_ptr + idx, mask=mask, other=0.0).to(ACC)) - 1.0
        # m_t = o ⊙ tanh(c_t)  →  dc_t = dm_t ⊙ o_t ⊙ (1 − tanh² c_t) + dc_{t+1} ⊙ f_{t+1}
        dc = tl.load(dc_ptr + idx, mask=mask, other=0.0).to(ACC) + dm * o * (1.0 - tanh_c * tanh_c)
        delta_i = dc * g * i * (1.0 - i)  # c_t = f ⊙ c_{t−1} + i ⊙ g  →  δ_i = dc ⊙ g ⊙ σ'(z_i)
        delta_f = dc * c_prev * f * (1.0 - f)  # →  δ_f = dc ⊙ c_{t−1} ⊙ σ'(z_f)
        delta_g = dc * i * (1.0 - g * g)  # →  δ_g = dc ⊙ i ⊙ tanh'(z_g)
        delta_o = dm * tanh_c * o * (1.0 - o)  # m_t = o ⊙ tanh(c_t)  →  δ_o = dm ⊙ tanh c ⊙ σ'(z_o)
        out = delta_ptr.dtype.element_ty
        tl.store(delta_ptr + row, delta_i.to(out), mask=mask)
        tl.store(delta_ptr + row + H, delta_f.to(out), mask=mask)
        tl.store(delta_ptr + row + 2 * H, delta_g.to(out), mask=mask)
        tl.store(delta_ptr + row + 3 * H, delta_o.to(out), mask=mask)
        # c_t = f ⊙ c_{t−1} + …  →  dc_{t−1} = dc_t ⊙ f_t, the cell path
        tl.store(dc_prev_ptr + idx, (dc * f).to(dc_prev_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def gru_gates_fwd_kernel(gi_ptr, gh_ptr, h_prev_ptr, h_ptr, gates_ptr, hn_ptr, H, n_elem,
                             ACC: tl.constexpr, BLOCK: tl.constexpr):
        """r = σ(i_r + h_r), z = σ(i_z + h_z), n = tanh(i_n + r ⊙ h_n),
        h_t = (1 − z) ⊙ n + z ⊙ h_{t−1}, given gi = W_ih x + b_ih and gh = W_hh h + b_hh."""
        idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = idx < n_elem
        row = (idx // H) * 3 * H + idx % H  # gate r at row; z, n at +H, +2H
        r = tl.sigmoid(tl.load(gi_ptr + row, mask=mask, other=0.0).to(ACC)
                       + tl.load(gh_ptr + row, mask=mask, other=0.0).to(ACC))
        z = tl.sigmoid(tl.load(gi_ptr + row + H, mask=mask, other=0.0).to(ACC)
                       + tl.load(gh_ptr + row + H, mask=mask, other=0.0).to(ACC))
        h_n = tl.load(gh_ptr + row + 2 * H, mask=mask, other=0.0).to(ACC)  # W_hn h + b_hn
        u = tl.load(gi_ptr + row + 2 * H, mask=mask, other=0.0).to(ACC) + r * h_n
        n = 2.0 * tl.sigmoid(2.0 * u) - 1.0  # n = tanh(i_n + r ⊙ h_n)
        h = (1.0 - z) * n + z * tl.load(h_prev_ptr + idx, mask=mask, other=0.0).to(ACC)
        out = gates_ptr.dtype.element_ty
        tl.store(gates_ptr + row, r.to(out), mask=mask)
        tl.store(gates_ptr + row + H, z.to(out), mask=mask)
        tl.store(gates_ptr + row + 2 * H, n.to(out), mask=mask)
        tl.store(hn_ptr + idx, h_n.to(hn_ptr.dtype.element_ty), mask=mask)  # kept: δ_r needs it
        tl.store(h_ptr + idx, h.to(h_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def gru_gates_bwd_kernel(dh_ptr, gout_ptr, h_prev_ptr, gates_ptr, hn_ptr, d_ih_ptr,
                             d_hh_ptr, dhz_ptr, H, n_elem, HAS_GOUT: tl.constexpr,
                             ACC: tl.constexpr, BLOCK: tl.constexpr):
        """δ^ih = (δ_r; δ_z; δ_n), δ^hh = (δ_r; δ_z; r ⊙ δ_n) and the z ⊙ h_{t−1} path
        dh_t ⊙ z, from dh_t (+ the output's ∂C/∂h_t)."""
        idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = idx < n_elem
        row = (idx // H) * 3 * H + idx % H
        dh = tl.load(dh_ptr + idx, mask=mask, other=0.0).to(ACC)
        if HAS_GOUT:  # ∂C/∂h_t = what step t+1 sent back + what the output at step t sends
            dh += tl.load(gout_ptr + idx, mask=mask, other=0.0).to(ACC)
        r = tl.load(gates_ptr + row, mask=mask, other=0.0).to(ACC)
        z = tl.load(gates_ptr + row + H, mask=mask, other=0.0).to(ACC)
        n = tl.load(gates_ptr + row + 2 * H, mask=mask, other=0.0).to(ACC)
        h_prev = tl.load(h_prev_ptr + idx, mask=mask, other=0.0).to(ACC)
        h_n = tl.load(hn_ptr + idx, mask=mask, other=0.0).to(ACC)
        # h_t = (1 − z) ⊙ n + z ⊙ h_{t−1}  →  δ_n = dh ⊙ (1 − z) ⊙ tanh'(z_n)
        delta_n = dh * (1.0 - z) * (1.0 - n * n)
        # →  δ_z = dh ⊙ (h_{t−1} − n) ⊙ σ'(z_z)
        delta_z = dh * (h_prev - n) * z * (1.0 - z)
        # z_n = i_n + r ⊙ h_n  →  δ_r = δ_n ⊙ h_n ⊙ σ'(z_r)
        delta_r = delta_n * h_n * r * (1.0 - r)
        out = d_ih_ptr.dtype.element_ty
        tl.store(d_ih_ptr + row, delta_r.to(out), mask=mask)
        tl.store(d_ih_ptr + row + H, delta_z.to(out), mask=mask)
        tl.store(d_ih_ptr + row + 2 * H, delta_n.to(out), mask=mask)
        tl.store(d_hh_ptr + row, delta_r.to(out), mask=mask)
        tl.store(d_hh_ptr + row + H, delta_z.to(out), mask=mask)
        tl.store(d_hh_ptr + row + 2 * H, (delta_n * r).to(out), mask=mask)  # r gates h_n
        # h_t = … + z ⊙ h_{t−1}  →  dh_t ⊙ z (the GEMM adds (W_hh)ᵀ δ^hh)
        tl.store(dhz_ptr + idx, (dh * z).to(dhz_ptr.dtype.element_ty), mask=mask)

    def _launch(kernel, n_elem: int, *args, **meta) -> None:
        wrap_triton(kernel)[(triton.cdiv(n_elem, GATE_BLOCK),)](*args, BLOCK=GATE_BLOCK, **meta)

    def _acc(t: Tensor):
        return tl.float64 if t.dtype == torch.float64 else tl.float32

    def _fake_lstm_fwd(z, c_prev):
        return torch.empty_like(c_prev), torch.empty_like(c_prev), torch.empty_like(z)

    @kernel_op("lstm_gates_fwd", _fake_lstm_fwd)
    def lstm_gates_fwd_op(z: Tensor, c_prev: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        m, c, gates = torch.empty_like(c_prev), torch.empty_like(c_prev), torch.empty_like(z)
        count_launch("lstm_gates_fwd")
        _launch(lstm_gates_fwd_kernel, c.numel(), z, c_prev, m, c, gates, c.shape[-1],
                c.numel(), ACC=_acc(z))
        return m, c, gates

    def _fake_lstm_bwd(dm, gout, dc, gates, c, c_prev):
        return torch.empty_like(gates), torch.empty_like(c)

    @kernel_op("lstm_gates_bwd", _fake_lstm_bwd)
    def lstm_gates_bwd_op(dm: Tensor, gout: Tensor | None, dc: Tensor, gates: Tensor,
                          c: Tensor, c_prev: Tensor) -> tuple[Tensor, Tensor]:
        delta, dc_prev = torch.empty_like(gates), torch.empty_like(c)
        count_launch("lstm_gates_bwd")
        _launch(lstm_gates_bwd_kernel, c.numel(), dm, gout if gout is not None else dm, dc,
                gates, c, c_prev, delta, dc_prev, c.shape[-1], c.numel(),
                HAS_GOUT=gout is not None, ACC=_acc(gates))
        return delta, dc_prev

    def _fake_gru_fwd(gi, gh, h_prev):
        return torch.empty_like(h_prev), torch.empty_like(gi), torch.empty_like(h_prev)

    @kernel_op("gru_gates_fwd", _fake_gru_fwd)
    def gru_gates_fwd_op(gi: Tensor, gh: Tensor, h_prev: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        h, gates, hn = torch.empty_like(h_prev), torch.empty_like(gi), torch.empty_like(h_prev)
        count_launch("gru_gates_fwd")
        _launch(gru_gates_fwd_kernel, h.numel(), gi, gh, h_prev, h, gates, hn, h.shape[-1],
                h.numel(), ACC=_acc(gi))
        return h, gates, hn

    def _fake_gru_bwd(dh, gout, h_prev, gates, hn):
        return torch.empty_like(gates), torch.empty_like(gates), torch.empty_like(h_prev)

    @kernel_op("gru_gates_bwd", _fake_gru_bwd)
    def gru_gates_bwd_op(dh: Tensor, gout: Tensor | None, h_prev: Tensor, gates: Tensor,
                         hn: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        d_ih, d_hh, dhz = torch.empty_like(gates), torch.empty_like(gates), torch.empty_like(dh)
        count_launch("gru_gates_bwd")
        _launch(gru_gates_bwd_kernel, dh.numel(), dh, gout if gout is not None else dh, h_prev,
                gates, hn, d_ih, d_hh, dhz, dh.shape[-1], dh.numel(),
                HAS_GOUT=gout is not None, ACC=_acc(gates))
        return d_ih, d_hh, dhz

    return dict(lstm_gates_fwd=lstm_gates_fwd_op, lstm_gates_bwd=lstm_gates_bwd_op,
                gru_gates_fwd=gru_gates_fwd_op, gru_gates_bwd=gru_gates_bwd_op)


_triton_kernels = kernel_family(_build_triton_kernels)


def _c(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.contiguous()


def lstm_step_triton(z_in: Tensor, h_prev: Tensor, c_prev: Tensor, w_hh: Tensor,
                     b_hh: Tensor | None, w_hr: Tensor | None = None
                     ) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`lstm_step` as one GEMM, z = z_in + b_hh + h_{t−1} W_hhᵀ, and one gate kernel."""
    z = torch.addmm(z_in if b_hh is None else z_in + b_hh, h_prev, w_hh.t())
    m, c, gates = _triton_kernels()["lstm_gates_fwd"](z, c_prev.contiguous())
    return (m if w_hr is None else F.linear(m, w_hr)), c, gates


def lstm_step_bwd_triton(dh: Tensor, dc: Tensor, gates: Tensor, c: Tensor, c_prev: Tensor,
                         w_hh: Tensor, w_hr: Tensor | None = None,
                         grad_output: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`lstm_step_bwd` as one gate kernel and one GEMM ((W_hh)ᵀ δ_t). ``grad_output``
    (no projection only): the output's ∂C/∂h_t, added to dh inside the kernel."""
    dm = dh if w_hr is None else dh @ w_hr  # h_t = W_hr m_t  →  dm_t = (W_hr)ᵀ dh_t
    delta, dc_prev = _triton_kernels()["lstm_gates_bwd"](
        dm.contiguous(), _c(grad_output), dc.contiguous(), gates.contiguous(), c.contiguous(),
        c_prev.contiguous())
    return delta, delta @ w_hh, dc_prev


def gru_step_triton(gi: Tensor, h_prev: Tensor, w_hh: Tensor,
                    b_hh: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`gru_step` as one GEMM, W_hh h_{t−1} + b_hh, and one gate kernel."""
    return _triton_kernels()["gru_gates_fwd"](gi.contiguous(), F.linear(h_prev, w_hh, b_hh),
                                              h_prev.contiguous())


def gru_step_bwd_triton(dh: Tensor, h_prev: Tensor, gates: Tensor, hn: Tensor, w_hh: Tensor,
                        grad_output: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`gru_step_bwd` as one gate kernel and one GEMM: dh_{t−1} = dh ⊙ z + (W_hh)ᵀ δ^hh
    (``grad_output``: the output's ∂C/∂h_t, added to dh inside the kernel)."""
    d_ih, d_hh, dhz = _triton_kernels()["gru_gates_bwd"](
        dh.contiguous(), _c(grad_output), h_prev.contiguous(), gates.contiguous(),
        hn.contiguous())
    return d_ih, d_hh, torch.addmm(dhz, d_hh, w_hh)


def lstm_fwd_triton(x: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor,
                    b_ih: Tensor | None, b_hh: Tensor | None,
                    w_hr: Tensor | None = None) -> tuple[Tensor, ...]:
    """:func:`lstm_fwd` with :func:`lstm_step_triton` at each step."""
    return lstm_fwd(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, step=lstm_step_triton)


def lstm_bwd_triton(grad_output: Tensor | None, grad_h_n: Tensor | None,
                    grad_c_n: Tensor | None, x: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor,
                    w_hh: Tensor, output: Tensor, gates: Tensor, cs: Tensor,
                    need: tuple[bool, ...], w_hr: Tensor | None = None
                    ) -> tuple[Tensor | None, ...]:
    """:func:`lstm_bwd` with :func:`lstm_step_bwd_triton` at each step."""
    return lstm_bwd(grad_output, grad_h_n, grad_c_n, x, h0, c0, w_ih, w_hh, output, gates, cs,
                    need, w_hr, step_bwd=lstm_step_bwd_triton)


def gru_fwd_triton(x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None,
                   b_hh: Tensor | None) -> tuple[Tensor, ...]:
    """:func:`gru_fwd` with :func:`gru_step_triton` at each step."""
    return gru_fwd(x, h0, w_ih, w_hh, b_ih, b_hh, step=gru_step_triton)


def gru_bwd_triton(grad_output: Tensor | None, grad_h_n: Tensor | None, x: Tensor, h0: Tensor,
                   w_ih: Tensor, w_hh: Tensor, output: Tensor, gates: Tensor, hns: Tensor,
                   need: tuple[bool, ...]) -> tuple[Tensor | None, ...]:
    """:func:`gru_bwd` with :func:`gru_step_bwd_triton` at each step."""
    return gru_bwd(grad_output, grad_h_n, x, h0, w_ih, w_hh, output, gates, hns, need,
                   step_bwd=gru_step_bwd_triton)


__all__ += ["gru_bwd_triton", "gru_fwd_triton", "gru_step_bwd_triton", "gru_step_triton",
            "lstm_bwd_triton", "lstm_fwd_triton", "lstm_step_bwd_triton", "lstm_step_triton"]
