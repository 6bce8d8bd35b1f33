"""Feedback rules: what stands in for (W^{l+1})ᵀ in BP2.

BP2 sends the error down through the transpose of the forward weights,

    δ^l = ((W^{l+1})ᵀ δ^{l+1}) ⊙ σ'(z^l),       batch-first: grad_input = delta @ W.

A brain has no way to copy W into a backward pathway (the weight-transport problem).
The rules below keep BP1, BP3 and BP4 (every layer still learns from its own δ^l:
``grad_weight = delta.T @ a_prev``, ``grad_bias = delta.sum(0)``) and change only the
matrix B in ``grad_input = delta @ B``:

    rule        B (weight's shape)          where it lives
    "backprop"  W                           (the default: the layer's own backward)
    "fa"        R, fixed                    buffer ``feedback_weight`` (Lillicrap et al. 2016)
    "usf"       c · sign(W)                 c = ``feedback_scale`` (Liao, Leibo & Poggio 2016)
    "brsf"      |R| ⊙ sign(W), R redrawn    the layer's own torch.Generator (Moskovitz et al. 2018)
                at every batch
    "frsf"      |R| ⊙ sign(W), |R| fixed    buffer ``feedback_weight`` holds |R|

R is drawn from the weight's own init distribution (U(−k, k), k = 1/√fan_in for
``Linear``/``Dense``/``Conv2d``; N(0, std²) for ``Network``'s inits), and c is that
distribution's standard deviation (k/√3 for the uniform). So every rule's B has, entry
for entry, the root-mean-square size of the initial W: E‖B‖²_F = E‖W_init‖²_F, and the
error passed down starts at backprop's scale whatever the rule. (sign(W) alone, c = 1,
would be √(3·fan_in) times larger: 48× for a 784-input layer, compounding layer by layer.)

DFA (Nøkland 2016) skips BP2 altogether: each hidden layer l gets
δ^l = (δ^L B^l) ⊙ σ'(z^l) straight from the output error through its own fixed B^l,
(n_L, n_l), drawn as the init of a weight from layer l to the output. ``Network(...,
feedback="dfa")`` runs it in the explicit engine; :class:`DFA` wraps any model of
bptorch (or torch) layers for the autograd path, and can give a conv's input BioTorch's
convolutional feedback, δ^l = (Bᵀ ⋆ (δ^L ⊗ 1_{H'×W'})) ⊙ σ'(z^l), B (n_L, C, k_h, k_w).

Randomness: fa, frsf and brsf seed a ``torch.Generator`` per layer with one 64-bit draw
from torch's global RNG at construction (so ``torch.manual_seed`` fixes them; the
layers built after it get different initial weights than a backprop model at the same
seed). B (fa), |R| (frsf) and each batch's |R| (brsf) come from that generator, never
from the global RNG, so dropout masks and shuffles are the same under every rule. The
generator's state is not in the state_dict: a reloaded brsf layer draws a new sequence.

Under ``torch.func`` transforms the fixed-matrix rules (fa, usf, frsf) work (B is a plain
input of the Function); brsf raises NotImplementedError under them (a random draw per
call is not a function of the inputs), and forward-mode AD (``jvp``) is backprop's for
every rule: the rules change only the backward pass. ``torch.compile(fullgraph=True)``
traces fa, usf and frsf; brsf's draw runs eagerly, a graph break per layer (Dynamo
cannot trace a draw from a Generator), so it compiles only without ``fullgraph``.
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from .functions.base import Pair
from .functions.conv import conv2d_input_grad, conv2d_padding, conv_out_size

RULES = ("backprop", "fa", "usf", "brsf", "frsf")
NETWORK_RULES = (*RULES, "dfa")
_BUFFERED = ("fa", "frsf")  # the rules that keep a fixed feedback_weight buffer
_GENERATED = ("fa", "brsf", "frsf")  # the rules that draw from the layer's generator


def check_rule(rule: str, valid: Sequence[str] = RULES) -> str:
    """``rule`` if it is one of ``valid``, else ValueError listing them."""
    if rule not in valid:
        raise ValueError(f"unknown feedback rule {rule!r}; expected one of "
                         + ", ".join(map(repr, valid)))
    return rule


# -- per-layer rules ---------------------------------------------------------------------
def setup(module: nn.Module, rule: str, weight: Tensor) -> None:
    """Give ``module`` (a Linear, Dense or Conv2d whose ``weight`` is ``weight``) the state
    ``rule`` needs: ``feedback_weight`` buffer (fa, frsf; drawn by :func:`reset`) and a
    generator seed (fa, brsf, frsf). Call before ``reset_parameters``."""
    module.feedback = check_rule(rule)
    module.feedback_scale = None  # set by reset(): c for usf, the magnitude scale of R
    if rule in _BUFFERED:
        module.register_buffer("feedback_weight", torch.empty_like(weight))
    if rule == "brsf":
        _eager_brsf()
    if rule in _GENERATED:
        # one draw from the global RNG: torch.manual_seed fixes every later draw
        module._feedback_seed = int(torch.empty((), dtype=torch.int64).random_())
        module._feedback_generators = {}
        if weight.device.type != "meta":  # made here, not inside a torch.compile'd call
            _generator(module, weight.device)


def _generator(module: nn.Module, device: torch.device) -> torch.Generator:
    """The layer's generator on ``device``, created on first use from its seed."""
    gens = module._feedback_generators
    if device not in gens:
        gens[device] = torch.Generator(device).manual_seed(module._feedback_seed)
    return gens[device]


def _draw(module: nn.Module, like: Tensor) -> Tensor:
    """R with ``like``'s shape from the weight's init distribution, by the layer's generator."""
    g = _generator(module, like.device)
    r = torch.empty_like(like)
    if module._feedback_std is None:  # U(−k, k): torch's Linear/Conv2d init
        k = module._feedback_bound
        return r.uniform_(-k, k, generator=g)
    return r.normal_(0.0, module._feedback_std, generator=g)


@torch.no_grad()
def reset(module: nn.Module, weight: Tensor, std: float | None = None) -> None:
    """(Re)draw the layer's fixed feedback from W's init distribution: U(−k, k) with
    k = 1/√fan_in (fan_in = weight[0].numel(), torch's Linear and Conv2d init) or, with
    ``std``, N(0, std²). Sets ``feedback_scale`` = that distribution's standard deviation."""
    rule = getattr(module, "feedback", "backprop")
    if rule == "backprop":
        return
    fan_in = weight[0].numel()
    module._feedback_bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    module._feedback_std = std
    module.feedback_scale = std if std is not None else module._feedback_bound / math.sqrt(3)
    if rule == "fa":
        module.feedback_weight.copy_(_draw(module, weight))  # B ~ W's init distribution
    elif rule == "frsf":
        module.feedback_weight.copy_(_draw(module, weight).abs_())  # fixed |R|


@torch.no_grad()
def matrix(module: nn.Module, weight: Tensor) -> Tensor | None:
    """B, the matrix the layer's backward uses in place of W in BP2, for this batch (a
    new draw for brsf); None for backprop. The modules call it only while autograd tapes."""
    rule = module.feedback
    if rule == "backprop":
        return None
    if rule == "fa":
        return module.feedback_weight  # B, fixed
    if rule == "usf":
        return torch.sign(weight).mul_(module.feedback_scale)  # c · sign(W)
    if rule == "frsf":
        return module.feedback_weight * torch.sign(weight)  # |R| ⊙ sign(W), |R| fixed
    if torch._C._are_functorch_transforms_active():
        raise NotImplementedError("feedback='brsf' draws new magnitudes at every call, "
                                  "which torch.func transforms cannot trace; use 'frsf'")
    return _brsf_matrix(module, weight)


def _brsf_draw(module: nn.Module, weight: Tensor) -> Tensor:
    with torch.no_grad():
        return _draw(module, weight).abs_().mul_(torch.sign(weight))  # |R| ⊙ sign(W), R new


# _brsf_draw behind torch.compiler.disable (Dynamo cannot trace a draw from a Generator:
# it runs eagerly). Wrapped when the first brsf layer is built, not at import: the
# decorator imports torch._dynamo (seconds), which only a brsf layer needs.
_brsf_matrix = None


def _eager_brsf() -> None:
    global _brsf_matrix
    if _brsf_matrix is None:
        _brsf_matrix = torch.compiler.disable(_brsf_draw)


def in_backward(module: nn.Module, weight: Tensor) -> Tensor | None:
    """The matrix a layer's backward passes δ down through in place of W, for this call:
    :func:`matrix` while autograd tapes under a feedback rule, else None (backprop)."""
    if module.feedback == "backprop" or not torch.is_grad_enabled():
        return None
    return matrix(module, weight)


def extra_repr(module: nn.Module) -> str:
    rule = getattr(module, "feedback", "backprop")
    return "" if rule == "backprop" else f", feedback={rule!r}"


def layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every module in ``model`` with a per-layer feedback rule."""
    return [(n, m) for n, m in model.named_modules() if isinstance(getattr(m, "feedback", None),
                                                                   str)]


# -- DFA on the autograd path --------------------------------------------------------------
class DFA(nn.Module):
    """Direct feedback alignment for a model trained by ``loss.backward()``.

    The gradient arriving at each named hidden module's output, ∂C/∂a^l, is replaced by
    δ^L B^l, where δ^L is the gradient arriving at ``output_layer``'s output (∂C/∂z^L for
    a linear output layer feeding a logits cost) and B^l a fixed random (n_L, *a^l's
    shape) buffer. The layers then run their own backward: the σ' of the activation (and
    the routing of a max-pool) that follow the hidden module's input, BP3 and BP4, so
    δ^l = (δ^L B^l) ⊙ σ'(z^l). The output layer's gradients are backprop's.

    Convolutional feedback (``conv_feedback``), BioTorch's DFA conv layer (Sanfiz &
    Akrout 2021, ``biotorch/layers/dfa/conv.py``): a hidden point a^l (N, C, H, W) read by
    a Conv2d of kernel k_h×k_w, stride s, padding p, dilation d and output H'×W' gets that
    conv's own BP2 with B^l (n_L, C, k_h, k_w) as its kernel and, as the error at its
    output, δ^L copied to each of the H'×W' positions:

        ∂C/∂a^l ← Bᵀ ⋆ (δ^L ⊗ 1_{H'×W'}),   so   δ^l = (Bᵀ ⋆ (δ^L ⊗ 1_{H'×W'})) ⊙ σ'(z^l),

    ⋆ the transposed convolution (``functions.conv.conv2d_input_grad``, the Conv2d
    Function's BP2, with the reading conv's s, p, d). Pixel by pixel,
    (Bᵀ ⋆ (δ^L ⊗ 1))_{c,i,j} = Σ_o δ^L_o Σ_{t reads (i,j)} B_{o,c,t}: a dense B^l whose
    entry at (c, i, j) is the sum of the kernel taps that read pixel (i, j), the same for
    every pixel away from the borders (all k_h·k_w taps at stride 1), so the signal is
    nearly constant over each channel; n_L·C·k_h·k_w numbers in place of n_L·C·H·W.

    Args:
        model: the network; its forward is unchanged (``DFA(...)(x) == model(x)``).
        output_layer: name in ``model.named_modules()`` of the layer producing z^L.
        hidden_layers: names of the modules whose *output* gets δ^L B^l. Name a^l, the
            tensor BP2 would carry down (e.g. after a ReLU or a max-pool, or a Dense).
        example_input: one batch (any N) run once to learn each a^l's shape.
        conv_feedback: {hidden layer: name of the Conv2d that reads its output}; those
            hidden layers get the convolutional feedback above (groups 1, padding mode
            "zeros"); the others keep the dense B^l. Default: none.
        init: how B^l is drawn. "torch" (the default): U(−k, k), k = 1/√fan_in, torch's
            default init of a layer from a^l to the output (Linear(n_l, n_L): fan_in = n_l;
            Conv2d(C, n_L, k): fan_in = C·k_h·k_w; BioTorch's non-xavier init of its
            ``weight_backward``, kaiming_uniform(a=√5), is this distribution). "xavier":
            U(−a, a), a = √(6/(fan_in + fan_out)), fan_out = n_L (dense) or n_L·k_h·k_w
            (convolutional): BioTorch's ``init: xavier`` of its ``weight_backward``
            (``nn.init.xavier_uniform_`` of the (n_L, n_l) or (n_L, C, k_h, k_w) tensor).

    Attributes:
        ``feedback_weight_{i}``: buffer B^l of the i-th hidden layer, (n_L, *a^l.shape[1:])
        dense or (n_L, C, k_h, k_w) convolutional, drawn as ``init`` says (by default
        U(−k, k), k = 1/√n_l, so δ^L B^l starts at backprop's scale) from torch's global
        RNG at construction, in the order of ``hidden_layers`` (``torch.manual_seed``
        fixes them).

    Example: ``dfa = DFA(net, "fc2", ["pool1", "pool2", "relu3", "fc1"], x[:1])``, then
    ``cost(dfa(x), y).backward()`` and any optimizer on ``net.parameters()``. BioTorch's
    DFA LeNet: ``DFA(net, "fc2", ["pool1", "pool2", "flatten", "fc1"], x[:1],
    conv_feedback={"pool1": "conv2", "pool2": "conv3"}, init="xavier")``.
    """

    def __init__(self, model: nn.Module, output_layer: str, hidden_layers: Sequence[str],
                 example_input: Tensor, *, conv_feedback: Mapping[str, str] | None = None,
                 init: str = "torch") -> None:
        super().__init__()
        self.model = model
        modules = dict(model.named_modules())
        conv_feedback = dict(conv_feedback or {})
        for name in (output_layer, *hidden_layers, *conv_feedback.values()):
            if name not in modules:
                raise ValueError(f"DFA: model has no module {name!r}; its modules are "
                                 + ", ".join(repr(n) for n in modules if n))
        if output_layer in hidden_layers:
            raise ValueError(f"DFA: the output layer {output_layer!r} cannot be a hidden layer")
        for name in conv_feedback:
            if name not in hidden_layers:
                raise ValueError(f"DFA: conv_feedback names {name!r}, which is not one of the "
                                 "hidden layers " + ", ".join(map(repr, hidden_layers)))
        if init not in ("torch", "xavier"):
            raise ValueError(f"DFA: unknown init {init!r}; expected 'torch' or 'xavier'")
        self.output_layer, self.hidden_layers = output_layer, list(hidden_layers)
        self.init = init
        self.enabled = True  # False: plain backprop (used by diagnostics.alignment)
        shapes: dict[str, torch.Size] = {}
        handles = [modules[n].register_forward_hook(
            lambda m, i, o, n=n: shapes.__setitem__(n, o.shape[1:]))
            for n in (output_layer, *hidden_layers)]
        with torch.no_grad():
            was_training = model.training
            model.eval()
            model(example_input)
            model.train(was_training)
        for h in handles:
            h.remove()
        n_out = math.prod(shapes[output_layer])
        ref = next(iter(model.parameters()), example_input)
        # i -> (stride, padding, end padding, dilation) of the conv reading hidden layer i
        self._conv: dict[int, tuple[Pair, Pair, Pair, Pair]] = {}
        for i, name in enumerate(self.hidden_layers):
            if name in conv_feedback:
                conv = modules[conv_feedback[name]]
                self._conv[i] = _conv_geometry(conv, name, shapes[name])
                shape = (n_out, shapes[name][0], *conv.kernel_size)  # (n_L, C, k_h, k_w)
                fan_in, fan_out = math.prod(shape[1:]), n_out * math.prod(shape[2:])
            else:
                shape = (n_out, *shapes[name])  # (n_L, *a^l's shape)
                fan_in, fan_out = math.prod(shapes[name]), n_out
            if init == "torch":
                k = 1 / math.sqrt(fan_in)  # a Linear's / Conv2d's default init, to the output
            else:
                k = math.sqrt(6.0 / (fan_in + fan_out))  # Xavier-uniform
            b = torch.empty(shape, device=ref.device, dtype=ref.dtype)
            self.register_buffer(f"feedback_weight_{i}", b.uniform_(-k, k))
        self._delta_L: Tensor | None = None
        self._handles = [modules[output_layer].register_forward_hook(self._output_hook)]
        self._handles += [modules[n].register_forward_hook(self._hidden_hook(i))
                          for i, n in enumerate(self.hidden_layers)]

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def _output_hook(self, module, inputs, output: Tensor) -> None:
        self._delta_L = None  # a new forward: no stale δ^L from an earlier batch
        if self.enabled and output.requires_grad:
            output.register_hook(self._keep_delta)

    def _keep_delta(self, grad: Tensor) -> None:
        self._delta_L = grad.reshape(grad.shape[0], -1)  # δ^L, (N, n_L)

    def _hidden_hook(self, i: int):
        def hook(module, inputs, output: Tensor) -> None:
            if self.enabled and output.requires_grad:
                output.register_hook(lambda grad: self._direct(i, grad))
        return hook

    def _direct(self, i: int, grad: Tensor) -> Tensor:
        """δ^L B^l in place of the ∂C/∂a^l that backprop carried down."""
        if self._delta_L is None:
            raise RuntimeError("DFA: no gradient reached the output layer "
                               f"{self.output_layer!r} before a hidden layer's")
        b = getattr(self, f"feedback_weight_{i}")
        if i in self._conv:
            return self._conv_direct(i, b, grad)
        return (self._delta_L @ b.flatten(1)).view_as(grad)

    def _conv_direct(self, i: int, b: Tensor, grad: Tensor) -> Tensor:
        """Bᵀ ⋆ (δ^L ⊗ 1_{H'×W'}): the reading conv's BP2, kernel B, δ^L at every output."""
        stride, padding, extra, dilation = self._conv[i]
        h, w = grad.shape[-2:]
        size = (h + extra[0], w + extra[1])  # "same" pads the odd row/column at the end
        out_hw = conv_out_size(size, b.shape[2:], stride, padding, dilation)  # H'×W'
        e = self._delta_L[:, :, None, None].expand(-1, -1, *out_hw)  # δ^L ⊗ 1, (N, n_L, H', W')
        signal = conv2d_input_grad(e, b, size, stride, padding, dilation, 1)  # Bᵀ ⋆ e
        return signal[..., :h, :w]  # the end padding's rows and columns are no pixels

    def remove(self) -> nn.Module:
        """Detach the hooks; return the model, back to plain backprop."""
        for h in self._handles:
            h.remove()
        return self.model


def _conv_geometry(conv: nn.Module, name: str, shape: torch.Size
                   ) -> tuple[Pair, Pair, Pair, Pair]:
    """(stride, padding, end padding, dilation) of the Conv2d ``conv`` that reads hidden
    layer ``name`` (output ``shape`` per example), for :meth:`DFA._conv_direct`."""
    kernel_size = getattr(conv, "kernel_size", ())
    if len(kernel_size) != 2 or len(shape) != 3:
        raise ValueError(f"DFA: conv_feedback for {name!r} needs a Conv2d reading a "
                         f"(N, C, H, W) output; got {type(conv).__name__} reading "
                         f"(N, {', '.join(map(str, shape))})")
    if conv.groups != 1 or getattr(conv, "padding_mode", "zeros") != "zeros":
        raise ValueError(f"DFA: conv_feedback for {name!r} needs groups=1 and padding_mode="
                         f"'zeros'; got groups={conv.groups}, padding_mode={conv.padding_mode!r}")
    if conv.in_channels != shape[0]:
        raise ValueError(f"DFA: {name!r} has {shape[0]} channels but its conv reads "
                         f"{conv.in_channels}")
    stride, dilation = tuple(conv.stride), tuple(conv.dilation)
    padding, extra = conv2d_padding(conv.padding, tuple(kernel_size), stride, dilation)
    return stride, tuple(padding), tuple(extra), dilation


# -- switching to exact backprop, for comparisons -----------------------------------------
@contextlib.contextmanager
def exact(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block every feedback rule in ``model`` is backprop (per-layer rules,
    DFA wrappers, a ``Network``'s rule); restored on exit."""
    saved: list[tuple[nn.Module, str, object]] = []
    for _, m in model.named_modules():
        if isinstance(getattr(m, "feedback", None), str):
            saved.append((m, "feedback", m.feedback))
            m.feedback = "backprop"
        if isinstance(m, DFA):
            saved.append((m, "enabled", m.enabled))
            m.enabled = False
    try:
        yield model
    finally:
        for m, attr, value in reversed(saved):
            setattr(m, attr, value)


@contextlib.contextmanager
def frozen_generators(model: nn.Module) -> Iterator[None]:
    """Restore every layer generator's state on exit (brsf draws without moving them on)."""
    gens = [m._feedback_generators for _, m in model.named_modules()
            if hasattr(m, "_feedback_generators")]
    states = [{d: g.get_state() for d, g in gs.items()} for gs in gens]
    try:
        yield
    finally:
        for gs, state in zip(gens, states):
            for d in [d for d in gs if d not in state]:
                del gs[d]  # created inside the block: recreated from the seed later
            for d, s in state.items():
                gs[d].set_state(s)


__all__ = ["DFA", "NETWORK_RULES", "RULES", "check_rule", "exact", "frozen_generators",
           "in_backward", "layers", "matrix", "reset", "setup"]
