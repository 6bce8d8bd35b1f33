"""The autograd Functions: each backward is one of the seed's equations (BP1–BP4).

One file per layer family, each opening with its derivation and its reference
forward/backward pair: ``linear`` (linear, activation, dense), ``conv``, ``pool``,
``dropout`` (dropout and flatten), ``normalization``, ``embedding``, ``attention``,
``recurrent``, ``costs``, ``feedback`` (the feedback rules' Functions), ``products``
(matmul, bmm, the elementwise product and einsum), ``arithmetic`` (div and the pointwise
functions: exp, log, sqrt, rsqrt, pow, abs, clamp), ``sampling`` (roi_align, grid_sample). ``base`` holds
the plumbing they share. Nothing here imports ``bptorch.nn`` or anything above it.
"""
from .attention import AttentionFunction
from .base import BPFunction
from .conv import Conv2dFunction
from .costs import COSTS, Cost, CostFunction, get_cost
from .dropout import DropoutFunction, FlattenFunction
from .embedding import EmbeddingFunction
from .feedback import Conv2dFeedbackFunction, DenseFeedbackFunction, LinearFeedbackFunction
from .linear import ActivationFunction, DenseFunction, LinearFunction
from .linear import PReLUFunction
from .normalization import BatchNormFunction, LayerNormFunction
from .pool import AdaptiveAvgPool2dFunction, AvgPool2dFunction, MaxPool2dFunction
from .products import BmmFunction, MatmulFunction, MulFunction
from .products import EinsumFunction
from .arithmetic import DivFunction, PointwiseFunction
from .sampling import GridSampleFunction, RoIAlignFunction
from .recurrent import GRULayerFunction, LSTMLayerFunction, RNNLayerFunction
from .recurrent import GRUCellFunction, LSTMCellFunction, RNNCellFunction
from .pool import (
    AdaptiveAvgPool1dFunction, AdaptiveAvgPool3dFunction, AdaptiveAvgPoolFunction,
    AdaptiveMaxPool1dFunction, AdaptiveMaxPool2dFunction, AdaptiveMaxPool3dFunction,
    AdaptiveMaxPoolFunction, AvgPool1dFunction, AvgPool3dFunction, AvgPoolFunction,
    MaxPool1dFunction, MaxPool3dFunction, MaxPoolFunction,
)
from .upsample import InterpolateFunction
from .fold import FoldFunction, UnfoldFunction

__all__ = [
    "ActivationFunction", "AdaptiveAvgPool2dFunction", "AttentionFunction",
    "AvgPool2dFunction", "BPFunction", "BatchNormFunction", "COSTS", "Conv2dFeedbackFunction",
    "Conv2dFunction", "Cost", "CostFunction", "DenseFeedbackFunction", "DenseFunction",
    "DropoutFunction", "EmbeddingFunction", "FlattenFunction", "GRULayerFunction",
    "LSTMLayerFunction", "LayerNormFunction", "LinearFeedbackFunction", "LinearFunction",
    "MaxPool2dFunction", "RNNLayerFunction", "get_cost",
    "BmmFunction", "MatmulFunction", "MulFunction", "PReLUFunction",
    "GRUCellFunction", "LSTMCellFunction", "RNNCellFunction",
    "AdaptiveAvgPool1dFunction", "AdaptiveAvgPool3dFunction", "AdaptiveAvgPoolFunction",
    "AdaptiveMaxPool1dFunction", "AdaptiveMaxPool2dFunction", "AdaptiveMaxPool3dFunction",
    "AdaptiveMaxPoolFunction", "AvgPool1dFunction", "AvgPool3dFunction", "AvgPoolFunction",
    "InterpolateFunction", "MaxPool1dFunction", "MaxPool3dFunction", "MaxPoolFunction",
    "DivFunction", "EinsumFunction", "GridSampleFunction", "PointwiseFunction",
    "RoIAlignFunction",
    "FoldFunction", "UnfoldFunction",
]
