"""The autograd Functions: each backward is one of the seed's equations (BP1–BP4)."""
from .costs import COSTS, Cost, CostFunction, get_cost
from .layers import ActivationFunction, DenseFunction, LinearFunction

__all__ = [
    "ActivationFunction", "COSTS", "Cost", "CostFunction", "DenseFunction",
    "LinearFunction", "get_cost",
]
