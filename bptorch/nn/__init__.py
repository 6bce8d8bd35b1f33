"""Modules that look like ``torch.nn``, each a thin wrapper over ``bptorch.functional``.

One file per layer family, mirroring ``bptorch.functions``: ``linear`` (Linear, Dense),
``activation``, ``conv``, ``pool``, ``dropout`` (Dropout, Flatten), ``normalization``,
``embedding``, ``attention``, ``recurrent``, ``cost`` (the book's costs and torch's losses).

A script switches to bptorch by its imports: ``import bptorch.nn as nn``. What a model
definition needs that computes nothing (``Module``, ``Sequential``, ``Parameter``, ``init``,
``utils``, ...) is torch's own object, re-exported; every computing layer is bptorch's.
A torch.nn layer bptorch has no twin for is an AttributeError, never a silent torch layer.
"""
import torch.nn as _torch_nn
from torch.nn import (  # torch's own containers and parameters: they compute nothing
    Module, ModuleDict, ModuleList, Parameter, ParameterDict, ParameterList, Sequential,
    init, utils,
)

from .activation import GELU, Identity, LeakyReLU, ReLU, SiLU, Sigmoid, Softmax, Tanh
from .activation import (
    ELU, Hardsigmoid, Hardswish, Hardtanh, Mish, PReLU, ReLU6, SELU, Softplus,
)
from .conv import Conv2d
from .conv import Conv1d, Conv3d, ConvTranspose1d, ConvTranspose2d, ConvTranspose3d
from .cost import (
    BCELoss, BCEWithLogitsLoss, CrossEntropyCost, CrossEntropyLoss, KLDivLoss, L1Loss,
    LogLikelihoodCost, LogSoftmax, MSELoss, NLLLoss, QuadraticCost, SmoothL1Loss,
)
from .dropout import Dropout, Flatten
from .dropout import AlphaDropout, Dropout1d, Dropout2d, Dropout3d, FeatureAlphaDropout
from .linear import Dense, Linear
from .embedding import Embedding
from .normalization import BatchNorm1d, BatchNorm2d, LayerNorm
from .normalization import (
    BatchNorm3d, GroupNorm, InstanceNorm1d, InstanceNorm2d, InstanceNorm3d,
)
from .pool import AdaptiveAvgPool2d, AvgPool2d, MaxPool2d
from .attention import MultiheadAttention
from .recurrent import GRU, LSTM, RNN
from .recurrent import GRUCell, LSTMCell, RNNCell
from .transformer import (
    Transformer, TransformerDecoder, TransformerDecoderLayer, TransformerEncoder,
    TransformerEncoderLayer,
)
from .pool import (
    AdaptiveAvgPool1d, AdaptiveAvgPool3d, AdaptiveMaxPool1d, AdaptiveMaxPool2d, AdaptiveMaxPool3d,
    AvgPool1d, AvgPool3d, MaxPool1d, MaxPool3d,
)
from .upsample import Upsample, UpsamplingBilinear2d, UpsamplingNearest2d
from .fold import Fold, Unfold

# torch's, re-exported: the objects a model definition builds with, not copies
TORCH_REEXPORTS = ["Module", "ModuleDict", "ModuleList", "Parameter", "ParameterDict",
                   "ParameterList", "Sequential", "init", "utils"]
if hasattr(_torch_nn, "Buffer"):  # torch >= 2.5
    Buffer = _torch_nn.Buffer
    TORCH_REEXPORTS.append("Buffer")

__all__ = [
    "CrossEntropyCost", "Dense", "GELU", "Identity", "LeakyReLU", "Linear",
    "LogLikelihoodCost", "QuadraticCost", "ReLU", "SiLU", "Sigmoid", "Softmax", "Tanh",
    "Conv2d", "Dropout", "Flatten", "MaxPool2d",
    "AdaptiveAvgPool2d", "AvgPool2d", "BatchNorm1d", "BatchNorm2d", "Embedding", "LayerNorm",
    "MultiheadAttention", "GRU", "LSTM", "RNN",
    "GRUCell", "LSTMCell", "RNNCell",
    "Transformer", "TransformerDecoder", "TransformerDecoderLayer", "TransformerEncoder",
    "TransformerEncoderLayer",
    "BCELoss", "BCEWithLogitsLoss", "CrossEntropyLoss", "KLDivLoss", "L1Loss", "LogSoftmax",
    "MSELoss", "NLLLoss", "SmoothL1Loss",
    "Conv1d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d",
    "ELU", "Hardsigmoid", "Hardswish", "Hardtanh", "Mish", "PReLU", "ReLU6", "SELU", "Softplus",
    "BatchNorm3d", "GroupNorm", "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d",
    "AlphaDropout", "Dropout1d", "Dropout2d", "Dropout3d", "FeatureAlphaDropout",
    "AdaptiveAvgPool1d", "AdaptiveAvgPool3d", "AdaptiveMaxPool1d", "AdaptiveMaxPool2d",
    "AdaptiveMaxPool3d", "AvgPool1d", "AvgPool3d", "MaxPool1d", "MaxPool3d",
    "Upsample", "UpsamplingBilinear2d", "UpsamplingNearest2d",
    "Fold", "Unfold",
    *TORCH_REEXPORTS,
]


def __getattr__(name: str):
    """A torch.nn layer with no bptorch twin: say so and name the way out."""
    layer = getattr(_torch_nn, name, None)
    if isinstance(layer, type) and issubclass(layer, _torch_nn.Module):
        raise AttributeError(
            f"bptorch.nn has no {name}: bptorch has no written-out twin for torch.nn.{name} "
            "yet. Build the model with torch.nn and convert it with "
            "bptorch.convert.from_torch_nn(model, strict=False), which keeps torch's "
            f"{name} (its backward stays torch's) and converts every layer bptorch has."
        )
    raise AttributeError(f"module 'bptorch.nn' has no attribute {name!r}")
