"""Integer inputs behave as in torch (issue 21, item 4): an integer tensor has no gradient
to write out, so a twin gives torch's own result (its dtype and values) where torch has an
integer kernel, and an error where torch raises one."""
from __future__ import annotations

import pytest
import torch

import bptorch.nn as bnn

# (name, constructor arguments, input shape): every twin that takes one tensor
CASES = [
    ("ReLU", (), (4, 6)), ("Sigmoid", (), (4, 6)), ("Tanh", (), (4, 6)),
    ("Identity", (), (4, 6)), ("ReLU6", (), (4, 6)), ("Hardtanh", (-2.0, 1.0), (4, 6)),
    ("LeakyReLU", (), (4, 6)), ("GELU", (), (4, 6)), ("SiLU", (), (4, 6)),
    ("Softmax", (1,), (4, 6)), ("LogSoftmax", (1,), (4, 6)), ("Hardswish", (), (4, 6)),
    ("Hardsigmoid", (), (4, 6)), ("ELU", (), (4, 6)), ("SELU", (), (4, 6)),
    ("Softplus", (), (4, 6)), ("Mish", (), (4, 6)), ("Flatten", (), (2, 3, 4)),
    ("Linear", (6, 3), (4, 6)), ("Conv2d", (3, 2, 3), (2, 3, 6, 6)),
    ("LayerNorm", (6,), (4, 6)), ("BatchNorm2d", (3,), (2, 3, 6, 6)),
    ("Dropout", (), (4, 6)),
]


def _outcome(module, x):
    try:
        y = module(x)
    except Exception as e:  # noqa: BLE001 - torch's error kinds vary; compare the outcome
        return "error", type(e).__name__
    return y.dtype, y.tolist()


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8])
@pytest.mark.parametrize("name,args,shape", CASES, ids=[c[0] for c in CASES])
def test_integer_input_as_torch(name, args, shape, dtype):
    torch.manual_seed(0)
    x = torch.randint(-3 if dtype != torch.uint8 else 0, 4, shape, dtype=dtype)
    ours = _outcome(getattr(bnn, name)(*args), x.clone())
    theirs = _outcome(getattr(torch.nn, name)(*args), x.clone())
    if theirs[0] == "error":
        assert ours[0] == "error", f"torch raises {theirs[1]}, bptorch returned {ours[0]}"
    else:
        assert ours == theirs


def test_integer_in_place_relu_as_torch():
    x = torch.tensor([[-2, 3], [1, -1]])
    y = bnn.ReLU(inplace=True)(x)
    assert y is x and x.tolist() == [[0, 3], [1, 0]]
