"""A script switches to bptorch by its imports: ``import bptorch.nn as nn`` and
``import bptorch.functional as F``. The namespaces re-export torch's containers (the same
objects), offer every bptorch layer and loss under torch's name, and refuse a torch layer
with no bptorch twin. A small CNN script (the shape of PyTorch's MNIST example) trains a few
SGD steps with either pair of imports, and every gradient agrees in float64."""
from __future__ import annotations

import pytest
import torch

import bptorch.nn as bnn

REEXPORTS = ["Module", "Sequential", "ModuleList", "ModuleDict", "ParameterList",
             "ParameterDict", "Parameter", "init", "utils"]


@pytest.mark.parametrize("name", REEXPORTS + (["Buffer"] if hasattr(torch.nn, "Buffer") else []))
def test_containers_are_torchs_own_objects(name):
    assert getattr(bnn, name) is getattr(torch.nn, name)
    assert name in bnn.__all__


def test_computing_layers_are_bptorchs():
    for name in ["Identity", "Linear", "Conv2d", "ReLU", "Dropout", "Flatten", "LayerNorm",
                 "CrossEntropyLoss", "NLLLoss", "LogSoftmax", "MSELoss",
                 "Conv1d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d"]:
        assert getattr(bnn, name) is not getattr(torch.nn, name)
        assert getattr(bnn, name).__module__.startswith("bptorch.nn.")


# layers bptorch has no twin for (the list moves as twins land: Conv3d, GroupNorm and
# Hardswish were here once, and Fold)
@pytest.mark.parametrize("name", ["PixelUnshuffle", "PixelShuffle", "Hardshrink", "Bilinear"])
def test_a_torch_layer_with_no_twin_is_an_attribute_error_naming_the_way_out(name):
    with pytest.raises(AttributeError, match=rf"no written-out twin for torch\.nn\.{name}.*"
                                             r"from_torch_nn\(model, strict=False\)"):
        getattr(bnn, name)
    assert not hasattr(bnn, name)


def test_an_unknown_name_is_a_plain_attribute_error():
    with pytest.raises(AttributeError, match="module 'bptorch.nn' has no attribute 'nope'"):
        bnn.nope  # noqa: B018


SCRIPT = '''
import torch
{imports}


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, 1)
        self.conv2 = nn.Conv2d(4, 6, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(6 * 5 * 4, 16)
        self.fc2 = nn.Linear(16, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.max_pool2d(x, 2)
        x = self.dropout1(x)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = self.dropout2(x)
        return F.log_softmax(self.fc2(x), dim=1)


def run(steps=3):
    torch.manual_seed(0)
    model = Net().double()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.5)
    data = torch.randn(7, 1, 14, 12, dtype=torch.float64)
    target = torch.randint(0, 10, (7,))
    grads = []
    for _ in range(steps):
        opt.zero_grad()
        loss = F.nll_loss(model(data), target)
        loss.backward()
        grads.append({{n: p.grad.clone() for n, p in model.named_parameters()}})
        opt.step()
    return model, grads
'''
TORCH_IMPORTS = "import torch.nn as nn\nimport torch.nn.functional as F"
BPTORCH_IMPORTS = "import bptorch.nn as nn\nimport bptorch.functional as F"


def _run(imports):
    namespace: dict = {}
    exec(SCRIPT.format(imports=imports), namespace)
    return namespace["run"]()


def test_a_script_switched_by_its_imports_trains_with_torchs_gradients():
    model_t, grads_t = _run(TORCH_IMPORTS)
    model_b, grads_b = _run(BPTORCH_IMPORTS)
    # the swapped script really runs bptorch's layers and loss
    assert type(model_b.conv1).__module__ == "bptorch.nn.conv"
    assert isinstance(model_b, torch.nn.Module)
    assert list(model_b.state_dict()) == list(model_t.state_dict())
    for step_t, step_b in zip(grads_t, grads_b):
        assert step_t.keys() == step_b.keys()
        for name in step_t:
            torch.testing.assert_close(step_b[name], step_t[name], rtol=1e-10, atol=1e-12,
                                       msg=lambda m, n=name: f"{n}: {m}")
    for (n, p_t), p_b in zip(model_t.named_parameters(), model_b.parameters()):
        torch.testing.assert_close(p_b, p_t, rtol=1e-10, atol=1e-12)


def test_the_swapped_script_sees_its_gradients_from_bptorch_functions():
    namespace: dict = {}
    exec(SCRIPT.format(imports=BPTORCH_IMPORTS), namespace)
    torch.manual_seed(0)
    model = namespace["Net"]().double()
    out = namespace["F"].nll_loss(model(torch.randn(2, 1, 14, 12, dtype=torch.float64)),
                                  torch.tensor([1, 2]))
    seen, stack = set(), [out.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        stack.extend(f for f, _ in fn.next_functions)
    names = {type(f).__name__ for f in seen} - {"AccumulateGrad"}
    # torch.flatten is a view (no arithmetic); every other node is a bptorch Function
    assert names - {"ViewBackward0"} == {
        "ClassCostFunctionBackward", "LogSoftmaxFunctionBackward", "LinearFunctionBackward",
        "ActivationFunctionBackward", "DropoutFunctionBackward", "MaxPool2dFunctionBackward",
        "Conv2dFunctionBackward"}, names
