"""Modules that look like ``torch.nn``, each a thin wrapper over ``bptorch.functional``.

One file per layer family, mirroring ``bptorch.functions``: ``linear`` (Linear, Dense),
``activation``, ``conv``, ``pool``, ``dropout`` (Dropout, Flatten), ``normalization``,
``embedding``, ``attention``, ``recurrent``, ``cost``.
"""
from .activation import GELU, Identity, LeakyReLU, ReLU, SiLU, Sigmoid, Softmax, Tanh
from .conv import Conv2d
from .cost import CrossEntropyCost, LogLikelihoodCost, QuadraticCost
from .dropout import Dropout, Flatten
from .linear import Dense, Linear
from .embedding import Embedding
from .normalization import BatchNorm1d, BatchNorm2d, LayerNorm
from .pool import AdaptiveAvgPool2d, AvgPool2d, MaxPool2d
from .attention import MultiheadAttention
from .recurrent import GRU, LSTM, RNN

__all__ = [
    "CrossEntropyCost", "Dense", "GELU", "Identity", "LeakyReLU", "Linear",
    "LogLikelihoodCost", "QuadraticCost", "ReLU", "SiLU", "Sigmoid", "Softmax", "Tanh",
    "Conv2d", "Dropout", "Flatten", "MaxPool2d",
    "AdaptiveAvgPool2d", "AvgPool2d", "BatchNorm1d", "BatchNorm2d", "Embedding", "LayerNorm",
    "MultiheadAttention", "GRU", "LSTM", "RNN",
]
