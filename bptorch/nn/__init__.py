"""Modules that look like ``torch.nn``, each a thin wrapper over a bptorch Function."""
from .activation import Identity, LeakyReLU, ReLU, Sigmoid, Softmax, Tanh
from .conv import Conv2d, Dropout, Flatten, MaxPool2d
from .cost import CrossEntropyCost, LogLikelihoodCost, QuadraticCost
from .linear import Dense, Linear

__all__ = [
    "CrossEntropyCost", "Dense", "Identity", "LeakyReLU", "Linear",
    "LogLikelihoodCost", "QuadraticCost", "ReLU", "Sigmoid", "Softmax", "Tanh",
    "Conv2d", "Dropout", "Flatten", "MaxPool2d",
]
