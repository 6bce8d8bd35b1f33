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

One Function runs a whole sequence for one layer and one direction: the forward loop
keeps what the backward needs, the backward runs the loop in reverse collecting δ_t, then
BP3 and BP4 are one matmul each over all T·N rows. What is kept, and why:

* RNN: the output h_1..h_T (an output anyway): σ'(z_t) = 1 − h_t² (tanh) or [h_t > 0]
  (ReLU; the subgradient at 0 is 0, as torch), and h_{t−1} for BP4.
* LSTM: the gate activations i, f, g, o (4H per step) and the cells c_1..c_T: every gate's
  σ' comes from its activation (σ' = a(1 − a), tanh' = 1 − a²), tanh(c_t) is recomputed.
* GRU: the gates r, z, n (3H per step) and W_hn h_{t−1} + b_hn (H per step), which δ_r needs.

The kept gates are constants to autograd: when the backward itself is differentiated
(``create_graph=True``) it reruns the forward loop with differentiable ops first, so that
double backward sees their dependence on the inputs.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import LOWER, PER_EXAMPLE, BPFunction, per_example

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


# ---------------------------------------------------------------- Elman RNN
def rnn_fwd(x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None,
            b_hh: Tensor | None, relu: bool) -> tuple[Tensor, Tensor]:
    """h_t = σ(W_ih x_t + b_ih + W_hh h_{t−1} + b_hh); returns (h_1..h_T, h_T)."""
    sigma = torch.relu if relu else torch.tanh
    z_in = F.linear(x, w_ih, b_ih)  # W_ih x_t + b_ih for every step in one matmul
    h, hs = h0, []
    for t in range(x.shape[0]):
        h = sigma(z_in[t] + F.linear(h, w_hh, b_hh))  # z_t, then a_t = σ(z_t)
        hs.append(h)
    return torch.stack(hs), h


def rnn_bwd(grad_output: Tensor | None, grad_h_n: Tensor | None, x: Tensor, h0: Tensor,
            w_ih: Tensor, w_hh: Tensor, output: Tensor, relu: bool,
            need: tuple[bool, ...]) -> tuple[Tensor | None, ...]:
    """(∂C/∂x, ∂C/∂h_0, ∂C/∂W_ih, ∂C/∂W_hh, ∂C/∂b_ih, ∂C/∂b_hh) of :func:`rnn_fwd`."""
    sp = (output > 0).to(output.dtype) if relu else 1 - output * output  # σ'(z_t) from h_t
    dh = grad_h_n if grad_h_n is not None else _zeros_like_state(h0)
    deltas: list[Tensor] = [dh] * x.shape[0]
    for t in reversed(range(x.shape[0])):
        # h_t = σ(z_t)  →  δ_t = ((W_hh)ᵀ δ_{t+1} + ∂C/∂h_t) ⊙ σ'(z_t)
        delta = _upstream(grad_output, t, dh) * sp[t]
        deltas[t] = delta
        # z_t = … + W_hh h_{t−1}  →  BP2 through time: (W_hh)ᵀ δ_t, sent back to step t−1
        dh = delta @ w_hh
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
        grads = rnn_bwd(grad_output, grad_h_n, x, h0, w_ih, w_hh, output, ctx.relu,
                        ctx.needs_input_grad[:6])
        if PER_EXAMPLE and _FACTORS:  # a collection is on: δ and a^{l-1} of both matmuls
            grads = per_example("recurrent", ctx, grads, *_FACTORS.pop())
        return (*grads, None)


# ---------------------------------------------------------------- LSTM
def lstm_fwd(x: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor,
             b_ih: Tensor | None, b_hh: Tensor | None) -> tuple[Tensor, ...]:
    """torch's LSTM: (i, f, g, o) = (σ, σ, tanh, σ)(W_ih x_t + b_ih + W_hh h_{t−1} + b_hh),
    c_t = f ⊙ c_{t−1} + i ⊙ g, h_t = o ⊙ tanh(c_t).

    Returns (h_1..h_T, h_T, c_T, gates (T, N, 4H) activated, c_1..c_T)."""
    z_in = F.linear(x, w_ih, b_ih)  # every step's input part in one matmul
    h, c, hs, cs, gates = h0, c0, [], [], []
    for t in range(x.shape[0]):
        z_i, z_f, z_g, z_o = (z_in[t] + F.linear(h, w_hh, b_hh)).chunk(4, -1)
        i, f, g, o = torch.sigmoid(z_i), torch.sigmoid(z_f), torch.tanh(z_g), torch.sigmoid(z_o)
        c = f * c + i * g
        h = o * torch.tanh(c)
        hs.append(h), cs.append(c), gates.append(torch.cat([i, f, g, o], -1))
    return torch.stack(hs), h, c, torch.stack(gates), torch.stack(cs)


def lstm_bwd(grad_output: Tensor | None, grad_h_n: Tensor | None, grad_c_n: Tensor | None,
             x: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor, output: Tensor,
             gates: Tensor, cs: Tensor, need: tuple[bool, ...]) -> tuple[Tensor | None, ...]:
    """(∂C/∂x, ∂C/∂h_0, ∂C/∂c_0, ∂C/∂W_ih, ∂C/∂W_hh, ∂C/∂b_ih, ∂C/∂b_hh) of :func:`lstm_fwd`."""
    dh = grad_h_n if grad_h_n is not None else _zeros_like_state(h0)
    dc = grad_c_n if grad_c_n is not None else _zeros_like_state(c0)
    c_prev = torch.cat([c0.unsqueeze(0), cs[:-1]])
    deltas: list[Tensor] = [dh] * x.shape[0]
    for t in reversed(range(x.shape[0])):
        dh = _upstream(grad_output, t, dh)  # ∂C/∂h_t
        i, f, g, o = gates[t].chunk(4, -1)
        tanh_c = torch.tanh(cs[t])
        # h_t = o ⊙ tanh(c_t)  →  the cell path: dc_t = dh_t ⊙ o_t ⊙ (1 − tanh² c_t)
        # + dc_{t+1} ⊙ f_{t+1}
        dc = dc + dh * o * (1 - tanh_c * tanh_c)
        # c_t = f ⊙ c_{t−1} + i ⊙ g, i = σ(z_i)  →  δ_i = dc_t ⊙ g_t ⊙ σ'(z_i)
        delta_i = dc * g * i * (1 - i)
        # c_t = f ⊙ c_{t−1} + i ⊙ g, f = σ(z_f)  →  δ_f = dc_t ⊙ c_{t−1} ⊙ σ'(z_f)
        delta_f = dc * c_prev[t] * f * (1 - f)
        # c_t = f ⊙ c_{t−1} + i ⊙ g, g = tanh(z_g)  →  δ_g = dc_t ⊙ i_t ⊙ tanh'(z_g)
        delta_g = dc * i * (1 - g * g)
        # h_t = o ⊙ tanh(c_t), o = σ(z_o)  →  δ_o = dh_t ⊙ tanh(c_t) ⊙ σ'(z_o)
        delta_o = dh * tanh_c * o * (1 - o)
        delta = torch.cat([delta_i, delta_f, delta_g, delta_o], -1)
        deltas[t] = delta
        # z_t = … + W_hh h_{t−1}  →  BP2 through time: (W_hh)ᵀ δ_t, sent back to step t−1
        dh = delta @ w_hh
        # c_t = f ⊙ c_{t−1} + …  →  dc_{t−1} = dc_t ⊙ f_t, the cell path: no weight, no σ'
        dc = dc * f
    delta = torch.stack(deltas)  # (T, N, 4H)
    need_x, need_h0, need_c0, *need_params = need
    grad_x, *grads = _weight_grads(delta, delta, x, _h_prev(h0, output), w_ih,
                                   (need_x, *need_params))
    return (grad_x, dh if need_h0 else None, dc if need_c0 else None, *grads)


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

    Time-first: input (T, N, H_in), h0, c0 (N, H); returns (output (T, N, H), h_n, c_n,
    gates, cells), the last two kept for backward and not differentiable.
    """

    autocast = LOWER  # torch's LSTM is on the lower-precision list

    @staticmethod
    def forward(input: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor,
                b_ih: Tensor | None, b_hh: Tensor | None) -> tuple[Tensor, ...]:
        return lstm_fwd(input, h0, c0, w_ih, w_hh, b_ih, b_hh)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        x, h0, c0, w_ih, w_hh, b_ih, b_hh = inputs
        out, _h_n, _c_n, gates, cs = output
        ctx.mark_non_differentiable(gates, cs)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, out, gates, cs)

    @staticmethod
    def backward(ctx: Any, grad_output, grad_h_n, grad_c_n, _grad_gates, _grad_cs):
        x, h0, c0, w_ih, w_hh, b_ih, b_hh, out, gates, cs = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: the gates as functions of the inputs
            out, _h, _c, gates, cs = lstm_fwd(x, h0, c0, w_ih, w_hh, b_ih, b_hh)
        grads = lstm_bwd(grad_output, grad_h_n, grad_c_n, x, h0, c0, w_ih, w_hh, out, gates,
                         cs, ctx.needs_input_grad)
        if PER_EXAMPLE and _FACTORS:  # a collection is on: δ and a^{l-1} of both matmuls
            grads = per_example("lstm", ctx, grads, *_FACTORS.pop())
        return grads


# ---------------------------------------------------------------- GRU
def gru_fwd(x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None,
            b_hh: Tensor | None) -> tuple[Tensor, ...]:
    """torch's GRU: r = σ(W_ir x + b_ir + W_hr h + b_hr), z = σ(W_iz x + b_iz + W_hz h + b_hz),
    n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn)), h_t = (1 − z) ⊙ n + z ⊙ h_{t−1}.

    Returns (h_1..h_T, h_T, gates (T, N, 3H) = (r; z; n), W_hn h_{t−1} + b_hn (T, N, H))."""
    gi = F.linear(x, w_ih, b_ih)  # every step's input part in one matmul
    h, hs, gates, hns = h0, [], [], []
    for t in range(x.shape[0]):
        i_r, i_z, i_n = gi[t].chunk(3, -1)
        h_r, h_z, h_n = F.linear(h, w_hh, b_hh).chunk(3, -1)
        r, z = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
        n = torch.tanh(i_n + r * h_n)
        h = (1 - z) * n + z * h
        hs.append(h), gates.append(torch.cat([r, z, n], -1)), hns.append(h_n)
    return torch.stack(hs), h, torch.stack(gates), torch.stack(hns)


def gru_bwd(grad_output: Tensor | None, grad_h_n: Tensor | None, x: Tensor, h0: Tensor,
            w_ih: Tensor, w_hh: Tensor, output: Tensor, gates: Tensor, hns: Tensor,
            need: tuple[bool, ...]) -> tuple[Tensor | None, ...]:
    """(∂C/∂x, ∂C/∂h_0, ∂C/∂W_ih, ∂C/∂W_hh, ∂C/∂b_ih, ∂C/∂b_hh) of :func:`gru_fwd`."""
    h_prev = _h_prev(h0, output)
    dh = grad_h_n if grad_h_n is not None else _zeros_like_state(h0)
    deltas_ih: list[Tensor] = [dh] * x.shape[0]
    deltas_hh: list[Tensor] = [dh] * x.shape[0]
    for t in reversed(range(x.shape[0])):
        dh = _upstream(grad_output, t, dh)  # ∂C/∂h_t
        r, z, n = gates[t].chunk(3, -1)
        # h_t = (1 − z) ⊙ n + z ⊙ h_{t−1}, n = tanh(z_n)  →  δ_n = dh_t ⊙ (1 − z) ⊙ tanh'(z_n)
        delta_n = dh * (1 - z) * (1 - n * n)
        # h_t = (1 − z) ⊙ n + z ⊙ h_{t−1}, z = σ(z_z)  →  δ_z = dh_t ⊙ (h_{t−1} − n) ⊙ σ'(z_z)
        delta_z = dh * (h_prev[t] - n) * z * (1 - z)
        # z_n = W_in x + b_in + r ⊙ (W_hn h + b_hn), r = σ(z_r)  →  δ_r = δ_n ⊙ (W_hn h + b_hn)
        # ⊙ σ'(z_r)
        delta_r = delta_n * hns[t] * r * (1 - r)
        deltas_ih[t] = torch.cat([delta_r, delta_z, delta_n], -1)  # δ of W_ih x + b_ih
        # δ of W_hh h + b_hh: r gates n's hidden part
        deltas_hh[t] = torch.cat([delta_r, delta_z, delta_n * r], -1)
        # h_t = … + z ⊙ h_{t−1} and z_t = … + W_hh h_{t−1}  →  the z ⊙ h_{t−1} path, plus BP2
        # through time: dh_{t−1} = dh_t ⊙ z + (W_hh)ᵀ δ_t
        dh = dh * z + deltas_hh[t] @ w_hh
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
        return gru_fwd(input, h0, w_ih, w_hh, b_ih, b_hh)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        x, h0, w_ih, w_hh, b_ih, b_hh = inputs
        out, _h_n, gates, hns = output
        ctx.mark_non_differentiable(gates, hns)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, h0, w_ih, w_hh, b_ih, b_hh, out, gates, hns)

    @staticmethod
    def backward(ctx: Any, grad_output, grad_h_n, _grad_gates, _grad_hns):
        x, h0, w_ih, w_hh, b_ih, b_hh, out, gates, hns = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: the gates as functions of the inputs
            out, _h, gates, hns = gru_fwd(x, h0, w_ih, w_hh, b_ih, b_hh)
        grads = gru_bwd(grad_output, grad_h_n, x, h0, w_ih, w_hh, out, gates, hns,
                        ctx.needs_input_grad)
        if PER_EXAMPLE and _FACTORS:  # a collection is on: δ and a^{l-1} of both matmuls
            grads = per_example("recurrent", ctx, grads, *_FACTORS.pop())
        return grads


__all__ = ["GRULayerFunction", "LSTMLayerFunction", "RNNLayerFunction", "gru_bwd", "gru_fwd",
           "lstm_bwd", "lstm_fwd", "rnn_bwd", "rnn_fwd"]
