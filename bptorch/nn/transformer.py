"""The Transformer layers: torch.nn's own classes, built from bptorch's children.

``TransformerEncoderLayer``, ``TransformerEncoder``, ``TransformerDecoderLayer``,
``TransformerDecoder`` and ``Transformer`` compute nothing of their own: their forward only
composes MultiheadAttention, Linear, LayerNorm, Dropout and an activation (and adds the
residuals). So each class here *is* torch's class (a subclass, with torch's ``forward``,
attributes, state_dict keys and init), whose children are bptorch's twins, built in torch's
order so that one seed gives torch's weights. Every backward is then a bptorch Function's:
attention's written-out softmax backward, Linear's BP3/BP4, LayerNorm's and Dropout's.

The activation, a function in torch (``F.relu``, ``F.gelu`` or a string naming one), is
bptorch's function of that name; any other callable is kept as given. The encoder layer's
fused inference kernel (``torch._transformer_encoder_layer_fwd``) and the encoder's nested
tensors are torch's own computation: they stay off (``activation_relu_or_gelu = 0``,
``use_nested_tensor = False``). ``bptorch.convert.to_torch_nn`` gives torch's classes back
(with torch's children and fast paths), ``from_torch_nn`` converts torch's.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as torch_F
from torch import Tensor, nn

from .. import functional as BF
from .attention import MultiheadAttention
from .dropout import Dropout
from .linear import Linear
from .normalization import LayerNorm

# torch's activation functions (and the names torch's layers accept) -> bptorch's
_ACTIVATIONS: dict[Any, Callable[..., Tensor]] = {
    "relu": BF.relu, "gelu": BF.gelu, torch_F.relu: BF.relu, torch_F.gelu: BF.gelu,
}


def _activation(activation: str | Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """bptorch's function for torch's ``F.relu``/``F.gelu`` or their names; any other
    callable as it is (a bptorch module such as ``bptorch.nn.GELU()`` included)."""
    if isinstance(activation, str) and activation not in _ACTIVATIONS:
        raise RuntimeError(f"activation should be relu/gelu, not {activation}")
    try:
        return _ACTIVATIONS.get(activation, activation)
    except TypeError:  # an unhashable callable
        return activation


def _check_bptorch_layer(layer: nn.Module, name: str, twin: str) -> None:
    """A torch.nn layer given to a bptorch container would run torch's backward: refuse
    one with a torch.nn computing child (one converted by from_torch_nn has none)."""
    containers = (nn.ModuleList, nn.Sequential, nn.ModuleDict)
    torch_children = [m for m in layer.modules() if m is not layer
                      and type(m).__module__.startswith("torch.nn.modules")
                      and not isinstance(m, containers)]
    if type(layer) is getattr(nn, twin) and torch_children:
        raise TypeError(f"{name}: got torch.nn.{twin}, whose children are torch's layers; "
                        f"pass bptorch.nn.{twin}, or convert the torch model with "
                        "bptorch.convert.from_torch_nn")


class TransformerEncoderLayer(nn.TransformerEncoderLayer):
    r"""x + SA(x) then x + FF(x), each followed (or, ``norm_first``, preceded) by LayerNorm:
    ``torch.nn.TransformerEncoderLayer`` with bptorch's MultiheadAttention, Linear,
    LayerNorm and Dropout (same arguments, parameters, state_dict keys and init)."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048,
                 dropout: float = 0.1,
                 activation: str | Callable[[Tensor], Tensor] = torch_F.relu,
                 layer_norm_eps: float = 1e-5, batch_first: bool = False,
                 norm_first: bool = False, bias: bool = True,
                 device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        nn.Module.__init__(self)
        factory = {"device": device, "dtype": dtype}
        # torch's children in torch's order (so one seed draws torch's weights), bptorch's
        self.self_attn = MultiheadAttention(d_model, nhead, dropout=dropout, bias=bias,
                                            batch_first=batch_first, **factory)
        self.linear1 = Linear(d_model, dim_feedforward, bias=bias, **factory)
        self.dropout = Dropout(dropout)
        self.linear2 = Linear(dim_feedforward, d_model, bias=bias, **factory)
        self.norm_first = norm_first
        self.norm1 = LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **factory)
        self.norm2 = LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **factory)
        self.dropout1 = Dropout(dropout)
        self.dropout2 = Dropout(dropout)
        self.activation_relu_or_gelu = 0  # keeps torch's fused inference kernel off
        self.activation = _activation(activation)


class TransformerEncoder(nn.TransformerEncoder):
    r"""``num_layers`` copies of a :class:`TransformerEncoderLayer`, then ``norm``:
    ``torch.nn.TransformerEncoder`` (same arguments and forward), nested tensors off."""

    def __init__(self, encoder_layer: nn.TransformerEncoderLayer, num_layers: int,
                 norm: nn.Module | None = None, enable_nested_tensor: bool = True,
                 mask_check: bool = True) -> None:
        _check_bptorch_layer(encoder_layer, "TransformerEncoder", "TransformerEncoderLayer")
        # no nested tensors (torch's own computation), so no warning that they are off
        super().__init__(encoder_layer, num_layers, norm, False, mask_check)
        self.enable_nested_tensor = enable_nested_tensor  # the argument, as torch keeps it


class TransformerDecoderLayer(nn.TransformerDecoderLayer):
    r"""x + SA(x), x + MHA(x, memory), x + FF(x), each with LayerNorm after (or, with
    ``norm_first``, before): ``torch.nn.TransformerDecoderLayer`` with bptorch's children
    (same arguments, parameters, state_dict keys and init)."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048,
                 dropout: float = 0.1,
                 activation: str | Callable[[Tensor], Tensor] = torch_F.relu,
                 layer_norm_eps: float = 1e-5, batch_first: bool = False,
                 norm_first: bool = False, bias: bool = True,
                 device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        nn.Module.__init__(self)
        factory = {"device": device, "dtype": dtype}
        # torch's children in torch's order (so one seed draws torch's weights), bptorch's
        self.self_attn = MultiheadAttention(d_model, nhead, dropout=dropout,
                                            batch_first=batch_first, bias=bias, **factory)
        self.multihead_attn = MultiheadAttention(d_model, nhead, dropout=dropout,
                                                 batch_first=batch_first, bias=bias,
                                                 **factory)
        self.linear1 = Linear(d_model, dim_feedforward, bias=bias, **factory)
        self.dropout = Dropout(dropout)
        self.linear2 = Linear(dim_feedforward, d_model, bias=bias, **factory)
        self.norm_first = norm_first
        self.norm1 = LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **factory)
        self.norm2 = LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **factory)
        self.norm3 = LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **factory)
        self.dropout1 = Dropout(dropout)
        self.dropout2 = Dropout(dropout)
        self.dropout3 = Dropout(dropout)
        self.activation = _activation(activation)


class TransformerDecoder(nn.TransformerDecoder):
    r"""``num_layers`` copies of a :class:`TransformerDecoderLayer`, then ``norm``:
    ``torch.nn.TransformerDecoder`` (same arguments and forward)."""

    def __init__(self, decoder_layer: nn.TransformerDecoderLayer, num_layers: int,
                 norm: nn.Module | None = None) -> None:
        _check_bptorch_layer(decoder_layer, "TransformerDecoder", "TransformerDecoderLayer")
        super().__init__(decoder_layer, num_layers, norm)


class Transformer(nn.Transformer):
    r"""Encoder (``num_encoder_layers`` × :class:`TransformerEncoderLayer` + LayerNorm),
    decoder (``num_decoder_layers`` × :class:`TransformerDecoderLayer` + LayerNorm):
    ``torch.nn.Transformer`` (same arguments, forward, Xavier-uniform init of every matrix,
    state_dict keys), its default encoder and decoder built from bptorch's layers."""

    def __init__(self, d_model: int = 512, nhead: int = 8, num_encoder_layers: int = 6,
                 num_decoder_layers: int = 6, dim_feedforward: int = 2048,
                 dropout: float = 0.1,
                 activation: str | Callable[[Tensor], Tensor] = torch_F.relu,
                 custom_encoder: Any | None = None, custom_decoder: Any | None = None,
                 layer_norm_eps: float = 1e-5, batch_first: bool = False,
                 norm_first: bool = False, bias: bool = True,
                 device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        factory = {"device": device, "dtype": dtype}
        layer_args = (d_model, nhead, dim_feedforward, dropout, activation, layer_norm_eps,
                      batch_first, norm_first, bias)
        # built in torch's order (encoder, then decoder), then handed to torch's __init__,
        # which draws the Xavier-uniform init over all of them as torch's does
        if custom_encoder is None:
            custom_encoder = TransformerEncoder(
                TransformerEncoderLayer(*layer_args, **factory), num_encoder_layers,
                LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **factory))
        if custom_decoder is None:
            custom_decoder = TransformerDecoder(
                TransformerDecoderLayer(*layer_args, **factory), num_decoder_layers,
                LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **factory))
        super().__init__(d_model, nhead, num_encoder_layers, num_decoder_layers,
                         dim_feedforward, dropout, activation, custom_encoder, custom_decoder,
                         layer_norm_eps, batch_first, norm_first, bias, **factory)


__all__ = ["Transformer", "TransformerDecoder", "TransformerDecoderLayer",
           "TransformerEncoder", "TransformerEncoderLayer"]
