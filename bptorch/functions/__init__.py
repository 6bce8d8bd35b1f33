"""The autograd Functions: each backward is one of the seed's equations (BP1–BP4)."""
from .costs import COSTS, Cost, CostFunction, get_cost
from .layers import ActivationFunction, DenseFunction, LinearFunction
from .embedding import EmbeddingFunction
from .normalization import BatchNormFunction, LayerNormFunction
from .pooling import AdaptiveAvgPool2dFunction, AvgPool2dFunction
from .attention import AttentionFunction
from .recurrent import GRULayerFunction, LSTMLayerFunction, RNNLayerFunction

__all__ = [
    "ActivationFunction", "COSTS", "Cost", "CostFunction", "DenseFunction",
    "LinearFunction", "get_cost",
    "AdaptiveAvgPool2dFunction", "AvgPool2dFunction", "BatchNormFunction",
    "EmbeddingFunction", "LayerNormFunction",
    "AttentionFunction", "GRULayerFunction", "LSTMLayerFunction", "RNNLayerFunction",
]
