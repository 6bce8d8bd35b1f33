"""RNN, LSTM and GRU: ``torch.nn``'s arguments, parameter names, init and state_dict keys,
over the backpropagation through time of :mod:`bptorch.functions.recurrent` (one Function
per layer and direction)."""
from __future__ import annotations

import math
import numbers
import warnings

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from .. import functional as BF
from .._checks import _shape, check_floating, check_same

_GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}


class _RNNBase(nn.Module):
    """What RNN, LSTM and GRU share: torch.nn.RNNBase's attributes and parameters (for each
    layer l and direction, ``weight_ih_l{l}[_reverse]`` (G·H, H_in or D·H),
    ``weight_hh_l{l}[_reverse]`` (G·H, H), ``bias_ih_l{l}[_reverse]``,
    ``bias_hh_l{l}[_reverse]`` (G·H,), and the LSTM's ``weight_hr_l{l}[_reverse]`` (P, H)
    with ``proj_size`` P > 0 (then h_t, W_hh's columns and the next layer's input are P
    wide, D·P), registered in torch's order and all drawn
    U(−1/√H, 1/√H) in that order), and the layer-by-layer, direction-by-direction forward."""

    def __init__(self, mode: str, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, proj_size: int = 0,
                 device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        if (not isinstance(dropout, numbers.Number) or isinstance(dropout, bool)
                or not 0 <= dropout <= 1):
            raise ValueError("dropout should be a number in range [0, 1] representing the "
                             f"probability of an element being zeroed, got {dropout!r}")
        for arg, value in (("input_size", input_size), ("hidden_size", hidden_size),
                           ("num_layers", num_layers)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{arg} should be of type int, got {type(value).__name__}")
            if value <= 0 and arg != "input_size":
                raise ValueError(f"{arg} must be greater than zero, got {value}")
        if not isinstance(proj_size, int) or isinstance(proj_size, bool):
            raise TypeError(f"proj_size should be of type int, got {type(proj_size).__name__}")
        if proj_size < 0:
            raise ValueError("proj_size should be a positive integer or zero to disable "
                             f"projections, got {proj_size}")
        if proj_size >= hidden_size:
            raise ValueError(f"proj_size has to be smaller than hidden_size, got proj_size="
                             f"{proj_size} and hidden_size={hidden_size}")
        if dropout > 0 and num_layers == 1:
            warnings.warn("dropout option adds dropout after all but last recurrent layer, so "
                          "non-zero dropout expects num_layers greater than 1, but got "
                          f"dropout={dropout} and num_layers={num_layers}", stacklevel=3)
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.mode, self.input_size, self.hidden_size = mode, input_size, hidden_size
        self.num_layers, self.bias, self.batch_first = num_layers, bias, batch_first
        self.dropout, self.bidirectional = float(dropout), bidirectional
        self.proj_size = proj_size
        D, G = 2 if bidirectional else 1, _GATES[mode]
        real_hidden = proj_size if proj_size > 0 else hidden_size  # the width of h_t
        self._flat_weights_names: list[str] = []
        self._all_weights: list[list[str]] = []
        for layer in range(num_layers):
            for direction in range(D):
                n_in = input_size if layer == 0 else real_hidden * D
                suffix = "_reverse" if direction == 1 else ""
                shapes = [("weight_ih", (G * hidden_size, n_in)),
                          ("weight_hh", (G * hidden_size, real_hidden))]
                if bias:
                    shapes += [("bias_ih", (G * hidden_size,)), ("bias_hh", (G * hidden_size,))]
                if proj_size > 0:  # torch registers the projection last, after the biases
                    shapes += [("weight_hr", (proj_size, hidden_size))]
                names = []
                for kind, shape in shapes:
                    names.append(f"{kind}_l{layer}{suffix}")
                    setattr(self, names[-1], nn.Parameter(torch.empty(shape, **factory)))
                self._flat_weights_names += names
                self._all_weights.append(names)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Every weight and bias U(−1/√H, 1/√H), in parameter order, as torch."""
        k = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0.0
        for weight in self.parameters():
            nn.init.uniform_(weight, -k, k)

    def flatten_parameters(self) -> None:
        """A no-op: there is no cuDNN weight buffer to compact (kept for torch's API)."""

    @property
    def all_weights(self) -> list[list[nn.Parameter]]:
        return [[getattr(self, name) for name in names] for names in self._all_weights]

    def _layer_params(self, layer: int, direction: int) -> tuple:
        """(W_ih, W_hh, b_ih, b_hh) of one layer and direction (biases None if bias=False),
        then W_hr where the LSTM has a projection."""
        suffix = "_reverse" if direction == 1 else ""
        get = lambda kind: getattr(self, f"{kind}_l{layer}{suffix}", None)  # noqa: E731
        params = get("weight_ih"), get("weight_hh"), get("bias_ih"), get("bias_hh")
        return params + (get("weight_hr"),) if self.proj_size > 0 else params

    # ---------------------------------------------------------------- input handling
    def _prepare(self, input: Tensor, hx: tuple[Tensor | None, ...]) -> tuple:
        """Checks, then (x time-first (T, N, H_in), states (L·D, N, H) each, batched)."""
        name = type(self).__name__
        if isinstance(input, PackedSequence):
            raise NotImplementedError(f"{name}: PackedSequence input is not implemented in "
                                      "bptorch; pad the sequences (and mask the loss) instead")
        check_floating("input", input)
        check_same("input", input, "weight_ih_l0", self.weight_ih_l0)
        if input.dim() not in (2, 3):
            raise ValueError(f"{name}: expected input of shape (L, H_in), (L, N, H_in) or, "
                             f"with batch_first, (N, L, H_in); got a {input.dim()}-dim tensor "
                             f"of shape {_shape(input)}")
        if input.shape[-1] != self.input_size:
            raise ValueError(f"{name}: expected input with input_size={self.input_size} "
                             f"features (last dim), got shape {_shape(input)}")
        batched = input.dim() == 3
        x = input if not batched else (input.transpose(0, 1) if self.batch_first else input)
        if not batched:
            x = x.unsqueeze(1)  # (L, H_in) -> (L, 1, H_in)
        if x.shape[0] == 0:
            raise ValueError(f"{name}: expected a sequence of length >= 1, got shape "
                             f"{_shape(input)}")
        n = x.shape[1]
        D = 2 if self.bidirectional else 1
        states = []
        for label, h in zip(("h_0", "c_0"), hx):
            # h_t is proj_size wide where the LSTM projects it; c_t is always hidden_size
            width = self.proj_size if label == "h_0" and self.proj_size > 0 else \
                self.hidden_size
            want = (self.num_layers * D, n, width)
            if h is None:
                states.append(torch.zeros(want, dtype=x.dtype, device=x.device))
                continue
            check_floating(label, h)
            check_same(label, h, "input", input)
            if h.dim() != (3 if batched else 2):
                raise ValueError(f"{name}: for {'batched 3' if batched else 'unbatched 2'}-D "
                                 f"input, {label} should be {3 if batched else 2}-D too, got "
                                 f"shape {_shape(h)}")
            h = h if batched else h.unsqueeze(1)
            if _shape(h) != want:
                expected = want if batched else (want[0], want[2])
                raise ValueError(f"{name}: expected {label} of shape (num_layers·D, N, H) = "
                                 f"{expected}, got {_shape(h if batched else h.squeeze(1))}")
            states.append(h)
        return x, states, batched

    def _finish(self, output: Tensor, states: list[Tensor], batched: bool):
        if not batched:
            return output.squeeze(1), [h.squeeze(1) for h in states]
        return (output.transpose(0, 1) if self.batch_first else output), states

    def _run(self, x: Tensor, states: list[Tensor], step) -> tuple[Tensor, list[Tensor]]:
        """Layer by layer, each direction through ``step(x, states_k, params) -> (out,
        final states)``; the reverse direction reads the sequence flipped. Dropout (torch's
        RNG, training only) on every layer's output but the last."""
        D = 2 if self.bidirectional else 1
        finals: list[list[Tensor]] = [[] for _ in states]
        layer_input = x
        for layer in range(self.num_layers):
            outs = []
            for direction in range(D):
                k = layer * D + direction
                seq = layer_input.flip(0) if direction else layer_input
                out, last = step(seq, [s[k] for s in states], self._layer_params(layer, direction))
                outs.append(out.flip(0) if direction else out)
                for f, s in zip(finals, last):
                    f.append(s)
            layer_input = outs[0] if D == 1 else torch.cat(outs, -1)
            if self.training and self.dropout > 0 and layer < self.num_layers - 1:
                layer_input = BF.dropout(layer_input, self.dropout)
        return layer_input, [torch.stack(f) for f in finals]

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.proj_size != 0:
            s += f", proj_size={self.proj_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if not self.bias:
            s += ", bias=False"
        if self.batch_first:
            s += ", batch_first=True"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if self.bidirectional:
            s += ", bidirectional=True"
        return s


class RNN(_RNNBase):
    r"""h_t = σ(W_ih x_t + b_ih + W_hh h_{t−1} + b_hh), σ = tanh or ReLU, per layer.

    A drop-in for ``torch.nn.RNN`` (same arguments in the same order, parameter names,
    init and state_dict keys). Backward through time (see
    :class:`bptorch.functions.recurrent.RNNLayerFunction`):
    δ_t = ((W_hh)ᵀ δ_{t+1} + ∂C/∂h_t) ⊙ σ'(z_t), ∂C/∂W_hh = Σ_t δ_t h_{t−1}ᵀ,
    ∂C/∂W_ih = Σ_t δ_t x_tᵀ, ∂C/∂b = Σ_t δ_t.

    Args:
        input_size: H_in; hidden_size: H; num_layers: stacked layers;
        nonlinearity: "tanh" or "relu"; bias: learn b_ih and b_hh;
        batch_first: (N, L, ·) input and output instead of (L, N, ·);
        dropout: p of the dropout on each layer's output but the last (training only);
        bidirectional: a second pass over the reversed sequence, outputs concatenated.

    Shape:
        input (L, N, H_in), (N, L, H_in) with batch_first, or unbatched (L, H_in);
        h_0 (D·num_layers, N, H) or (D·num_layers, H), zeros if not given.
        Returns (output (L, N, D·H), h_n (D·num_layers, N, H)), h_n ordered layer-major.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 nonlinearity: str = "tanh", bias: bool = True, batch_first: bool = False,
                 dropout: float = 0.0, bidirectional: bool = False,
                 device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        modes = {"tanh": "RNN_TANH", "relu": "RNN_RELU"}
        if nonlinearity not in modes:
            raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or "
                             "'relu'.")
        self.nonlinearity = nonlinearity
        super().__init__(modes[nonlinearity], input_size, hidden_size, num_layers, bias,
                         batch_first, dropout, bidirectional, 0, device, dtype)

    def forward(self, input: Tensor, hx: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x, states, batched = self._prepare(input, (hx,))

        def step(seq, hk, params):
            out, h_n = BF.rnn_layer(seq, hk[0], *params, self.nonlinearity)
            return out, [h_n]

        output, finals = self._run(x, states, step)
        output, (h_n,) = self._finish(output, finals, batched)
        return output, h_n


class LSTM(_RNNBase):
    r"""(i, f, g, o) = (σ, σ, tanh, σ)(W_ih x_t + b_ih + W_hh h_{t−1} + b_hh),
    c_t = f ⊙ c_{t−1} + i ⊙ g, h_t = o ⊙ tanh(c_t), per layer.

    A drop-in for ``torch.nn.LSTM`` (arguments, parameter names with the gates stacked
    (i, f, g, o), init, state_dict keys). Backward through time with each gate's δ and the
    cell path dc_t = dh_t ⊙ o_t ⊙ (1 − tanh² c_t) + dc_{t+1} ⊙ f_{t+1} (see
    :class:`bptorch.functions.recurrent.LSTMLayerFunction`).

    Args: as :class:`RNN` without ``nonlinearity``; ``proj_size`` P > 0 (P < H) projects
    h_t = W_hr (o_t ⊙ tanh(c_t)) with ``weight_hr_l{k}[_reverse]`` (P, H), as torch.

    Shape:
        input as :class:`RNN`; hx = (h_0, c_0), h_0 (D·num_layers, N, H or P), c_0
        (D·num_layers, N, H), zeros if not given. Returns (output (L, N, D·(H or P)),
        (h_n, c_n)).
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, proj_size: int = 0,
                 device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first,
                         dropout, bidirectional, proj_size, device, dtype)

    def forward(self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None
                ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        if hx is not None and (not isinstance(hx, (tuple, list)) or len(hx) != 2):
            raise TypeError("LSTM: hx must be a tuple (h_0, c_0), got "
                            f"{type(hx).__name__}")
        x, states, batched = self._prepare(input, tuple(hx) if hx is not None else (None, None))

        def step(seq, hc, params):
            out, h_n, c_n = BF.lstm_layer(seq, hc[0], hc[1], *params)
            return out, [h_n, c_n]

        output, finals = self._run(x, states, step)
        output, (h_n, c_n) = self._finish(output, finals, batched)
        return output, (h_n, c_n)


class GRU(_RNNBase):
    r"""r = σ(W_ir x + b_ir + W_hr h + b_hr), z = σ(W_iz x + b_iz + W_hz h + b_hz),
    n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn)), h_t = (1 − z) ⊙ n + z ⊙ h_{t−1}.

    A drop-in for ``torch.nn.GRU`` (arguments, parameter names with the gates stacked
    (r, z, n), init, state_dict keys). Backward through time with δ_r, δ_z, δ_n (see
    :class:`bptorch.functions.recurrent.GRULayerFunction`).

    Args and shapes: as :class:`RNN` without ``nonlinearity``.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__("GRU", input_size, hidden_size, num_layers, bias, batch_first,
                         dropout, bidirectional, 0, device, dtype)

    def forward(self, input: Tensor, hx: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x, states, batched = self._prepare(input, (hx,))

        def step(seq, hk, params):
            out, h_n = BF.gru_layer(seq, hk[0], *params)
            return out, [h_n]

        output, finals = self._run(x, states, step)
        output, (h_n,) = self._finish(output, finals, batched)
        return output, h_n


# ---------------------------------------------------------------- the cells: one step
class _RNNCellBase(nn.Module):
    """What RNNCell, LSTMCell and GRUCell share: torch.nn.RNNCellBase's attributes,
    ``weight_ih`` (G·H, H_in), ``weight_hh`` (G·H, H), ``bias_ih``, ``bias_hh`` (G·H,), all
    drawn U(−1/√H, 1/√H) in that order, and the unbatched input torch accepts."""

    __constants__ = ["input_size", "hidden_size", "bias"]

    def __init__(self, input_size: int, hidden_size: int, bias: bool, num_chunks: int,
                 device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.input_size, self.hidden_size, self.bias = input_size, hidden_size, bias
        self.weight_ih = nn.Parameter(torch.empty(num_chunks * hidden_size, input_size,
                                                  **factory))
        self.weight_hh = nn.Parameter(torch.empty(num_chunks * hidden_size, hidden_size,
                                                  **factory))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(num_chunks * hidden_size, **factory))
            self.bias_hh = nn.Parameter(torch.empty(num_chunks * hidden_size, **factory))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Every weight and bias U(−1/√H, 1/√H), in parameter order, as torch."""
        k = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0.0
        for weight in self.parameters():
            nn.init.uniform_(weight, -k, k)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.bias is not True:
            s += f", bias={self.bias}"
        if getattr(self, "nonlinearity", "tanh") != "tanh":
            s += f", nonlinearity={self.nonlinearity}"
        return s

    def _batch(self, input: Tensor, states: tuple[Tensor | None, ...],
               labels: tuple[str, ...]) -> tuple[Tensor, list[Tensor], bool]:
        """(input (N, H_in), states (N, H) each, zeros where not given, batched?)."""
        name = type(self).__name__
        if not isinstance(input, Tensor) or input.dim() not in (1, 2):
            got = f"{input.dim()}D" if isinstance(input, Tensor) else type(input).__name__
            raise ValueError(f"{name}: Expected input to be 1D (H_in,) or 2D (N, H_in), got "
                             f"{got} instead")
        for label, h in zip(labels, states):
            if h is not None and (not isinstance(h, Tensor) or h.dim() not in (1, 2)):
                got = f"{h.dim()}D" if isinstance(h, Tensor) else type(h).__name__
                raise ValueError(f"{name}: Expected {label} to be 1D (H,) or 2D (N, H), got "
                                 f"{got} instead")
        batched = input.dim() == 2
        x = input if batched else input.unsqueeze(0)
        out = []
        for h in states:
            if h is None:
                h = torch.zeros(x.shape[0], self.hidden_size, dtype=x.dtype, device=x.device)
            elif not batched:
                h = h.unsqueeze(0)
            out.append(h)
        return x, out, batched

    def _weights(self) -> tuple:
        return self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh


class RNNCell(_RNNCellBase):
    r"""h' = σ(W_ih x + b_ih + W_hh h + b_hh), σ = tanh or ReLU: one step of :class:`RNN`.

    A drop-in for ``torch.nn.RNNCell`` (arguments, ``weight_ih``/``weight_hh``/``bias_ih``/
    ``bias_hh``, init, state_dict keys). Backward (see
    :class:`bptorch.functions.recurrent.RNNCellFunction`): δ = ∂C/∂h' ⊙ σ'(z), BP3
    ∂C/∂b = Σ δ, BP4 ∂C/∂W_ih = δᵀ x, ∂C/∂W_hh = δᵀ h.

    Shape: input (N, H_in) or unbatched (H_in,); hx (N, H) or (H,), zeros if not given;
    returns h' of hx's shape.
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 nonlinearity: str = "tanh", device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"Unknown nonlinearity: {nonlinearity!r}. Select from 'tanh' or "
                             "'relu'.")
        super().__init__(input_size, hidden_size, bias, 1, device, dtype)
        self.nonlinearity = nonlinearity

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        x, (h,), batched = self._batch(input, (hx,), ("hidden",))
        cell = BF.rnn_tanh_cell if self.nonlinearity == "tanh" else BF.rnn_relu_cell
        out = cell(x, h, *self._weights())
        return out if batched else out.squeeze(0)


class LSTMCell(_RNNCellBase):
    r"""(i, f, g, o) = (σ, σ, tanh, σ)(W_ih x + b_ih + W_hh h + b_hh), c' = f ⊙ c + i ⊙ g,
    h' = o ⊙ tanh(c'): one step of :class:`LSTM`.

    A drop-in for ``torch.nn.LSTMCell`` (gates stacked (i, f, g, o), parameter names, init,
    state_dict keys). Backward with each gate's δ and the cell path ∂C/∂c = dc' ⊙ f (see
    :class:`bptorch.functions.recurrent.LSTMCellFunction`).

    Shape: input (N, H_in) or (H_in,); hx = (h, c), each (N, H) or (H,), zeros if not
    given; returns (h', c').
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__(input_size, hidden_size, bias, 4, device, dtype)

    def forward(self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None
                ) -> tuple[Tensor, Tensor]:
        if hx is not None and (not isinstance(hx, (tuple, list)) or len(hx) != 2):
            raise TypeError(f"LSTMCell: hx must be a tuple (h, c), got {type(hx).__name__}")
        x, (h, c), batched = self._batch(input, tuple(hx) if hx is not None else (None, None),
                                         ("hx[0]", "hx[1]"))
        h1, c1 = BF.lstm_cell(x, (h, c), *self._weights())
        return (h1, c1) if batched else (h1.squeeze(0), c1.squeeze(0))


class GRUCell(_RNNCellBase):
    r"""r = σ(W_ir x + b_ir + W_hr h + b_hr), z = σ(W_iz x + b_iz + W_hz h + b_hz),
    n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn)), h' = (1 − z) ⊙ n + z ⊙ h: one step of
    :class:`GRU`.

    A drop-in for ``torch.nn.GRUCell`` (gates stacked (r, z, n), parameter names, init,
    state_dict keys). Backward with δ_r, δ_z, δ_n (see
    :class:`bptorch.functions.recurrent.GRUCellFunction`).

    Shape: as :class:`RNNCell`.
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__(input_size, hidden_size, bias, 3, device, dtype)

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        x, (h,), batched = self._batch(input, (hx,), ("hidden",))
        out = BF.gru_cell(x, h, *self._weights())
        return out if batched else out.squeeze(0)


__all__ = ["GRU", "GRUCell", "LSTM", "LSTMCell", "RNN", "RNNCell"]
