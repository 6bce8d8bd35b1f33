"""Bad input gets a clear error that says what was expected, never a silent wrong
answer or a cryptic matmul message."""
from __future__ import annotations

import pytest
import torch

import bptorch.functional as F
import bptorch.nn as bnn


def test_feature_size_mismatch_names_both_sizes():
    with pytest.raises(ValueError, match=r"in_features=784.*last dimension 785"):
        bnn.Linear(784, 30)(torch.randn(10, 785))
    with pytest.raises(ValueError, match=r"in_features=4.*last dimension 3"):
        bnn.Dense(4, 2)(torch.randn(2, 5, 3))


def test_unknown_activation_lists_valid_names():
    with pytest.raises(
        ValueError, match=r"'sigmod'.*sigmoid, tanh, relu, leaky_relu, softmax, identity, gelu, silu"
    ):
        bnn.Dense(3, 2, activation="sigmod")
    with pytest.raises(ValueError, match="expected one of"):
        F.dense(torch.randn(2, 3), torch.randn(2, 3), None, activation="swish")


def test_unknown_cost_and_reduction():
    with pytest.raises(ValueError, match="quadratic, cross_entropy, log_likelihood"):
        F._cost("hinge", torch.rand(2, 3), torch.rand(2, 3), False, "mean")
    with pytest.raises(ValueError, match="reduction"):
        bnn.QuadraticCost(reduction="avg")
    with pytest.raises(ValueError, match="'none', 'mean' or 'sum'"):
        F._cost("quadratic", torch.rand(2, 3), torch.rand(2, 3), False, "batchmean")
    with pytest.raises(ValueError, match="no logits form"):
        F._cost("quadratic", torch.rand(2, 3), torch.rand(2, 3), True, "mean")


@pytest.mark.parametrize("cost", [bnn.QuadraticCost(), bnn.CrossEntropyCost(),
                                  bnn.LogLikelihoodCost(logits=True)])
def test_cost_refuses_broadcastable_target(cost):
    out = torch.rand(4, 1) * 0.8 + 0.1
    with pytest.raises(ValueError, match=r"do not broadcast"):
        cost(out, torch.rand(4))  # (4,) float would broadcast against (4, 1) to (4, 4)
    with pytest.raises(ValueError, match=r"do not broadcast"):
        cost(torch.rand(4, 3) * 0.8 + 0.1, torch.rand(1, 3))


@pytest.mark.parametrize("bad", [-1, 5])
def test_cost_refuses_out_of_range_class_indices(bad):
    y = torch.tensor([0, 1, bad])
    with pytest.raises(ValueError, match=r"class indices must lie in \[0, 4\]"):
        bnn.LogLikelihoodCost()(torch.rand(3, 5) * 0.8 + 0.1, y)


def test_cost_refuses_index_target_of_wrong_length():
    with pytest.raises(ValueError, match=r"shape \(\*\) = \(3,\)"):
        bnn.QuadraticCost()(torch.rand(3, 5), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"shape \(\*\) = \(2, 4\)"):  # (N, T, C): (N, T)
        bnn.LogLikelihoodCost(logits=True)(torch.randn(2, 4, 5), torch.zeros(2, 5).long())
    with pytest.raises(ValueError, match=r"shape \(\*\) = \(\)"):  # unbatched (C,): 0-dim
        bnn.LogLikelihoodCost(logits=True)(torch.randn(5), torch.tensor([1]))


def test_integer_inputs_refused():
    with pytest.raises(TypeError, match="floating-point"):
        bnn.Linear(3, 2)(torch.ones(4, 3, dtype=torch.long))
    # (an activation on integers gives torch's own result: tests/test_integer_inputs.py)
    with pytest.raises(TypeError, match="floating-point"):
        bnn.QuadraticCost()(torch.ones(4, 3, dtype=torch.long), torch.ones(4, 3))
    with pytest.raises(TypeError, match="class indices"):
        bnn.QuadraticCost()(torch.rand(4, 3), torch.ones(4, 3, dtype=torch.bool))


def test_mismatched_dtype_refused():
    with pytest.raises(TypeError, match="float64.*float32"):
        bnn.Linear(3, 2)(torch.randn(4, 3, dtype=torch.float64))
    with pytest.raises(TypeError, match="target has dtype torch.float64"):
        bnn.QuadraticCost()(torch.rand(4, 3), torch.rand(4, 3, dtype=torch.float64))


def test_cost_needs_a_class_dimension():
    with pytest.raises(ValueError, match=r"\(\*, C\), classes last, got a 0-dim"):
        bnn.QuadraticCost()(torch.rand(()), torch.rand(()))


@pytest.mark.parametrize("cost", [bnn.CrossEntropyCost(), bnn.LogLikelihoodCost(),
                                  bnn.CrossEntropyCost(reduction="none")])
@pytest.mark.parametrize("bad", [-0.5, 1.5])
def test_probability_cost_refuses_logits(cost, bad):
    """Values outside [0, 1] are the mark of z^L passed to a cost on a^L: the error says
    so and names logits=True. (A NaN or inf gets its own message: tests/test_cost_messages.py.)"""
    a = torch.rand(4, 3) * 0.8 + 0.1
    a[1, 2] = bad
    for out, y in [(a, torch.tensor([0, 2, 1, 1])), (a.unsqueeze(0), torch.rand(1, 4, 3))]:
        with pytest.raises(ValueError, match=r"probabilities in \[0, 1\].*logits=True"):
            cost(out, y)


def test_probability_check_reads_only_the_output():
    """Soft targets outside [0, 1] are the caller's business; only a^L is checked. The
    quadratic and the logits forms take any real output."""
    a = torch.rand(4, 3)
    for cost in (bnn.CrossEntropyCost(), bnn.LogLikelihoodCost()):
        assert torch.isfinite(cost(a, torch.randn(4, 3) * 3))
    z = torch.randn(4, 3) * 5
    for cost in (bnn.QuadraticCost(), bnn.CrossEntropyCost(logits=True),
                 bnn.LogLikelihoodCost(logits=True)):
        assert torch.isfinite(cost(z, torch.tensor([0, 2, 1, 1])))
    # the saturated ends themselves are probabilities
    assert torch.isfinite(bnn.CrossEntropyCost()(torch.tensor([[0.0, 1.0]]), torch.tensor([1])))


def test_non_tensor_input_refused():
    with pytest.raises(TypeError, match="torch.Tensor"):
        bnn.Sigmoid()([1.0, 2.0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
def test_mismatched_device_refused():
    with pytest.raises(RuntimeError, match="same device"):
        bnn.Linear(3, 2).cuda()(torch.randn(4, 3))
    with pytest.raises(RuntimeError, match="same device"):
        bnn.QuadraticCost()(torch.rand(4, 3, device="cuda"), torch.rand(4, 3))


def test_mismatched_device_refused_on_meta():
    """The same check without a GPU: a 'meta' weight against a CPU input."""
    layer = bnn.Linear(3, 2, device="meta")
    with pytest.raises(RuntimeError, match="input is on cpu but weight is on meta"):
        layer(torch.randn(4, 3))


def test_bias_and_weight_checked_too():
    x, w = torch.randn(4, 3), torch.randn(2, 3)
    with pytest.raises(TypeError, match="bias has dtype torch.float64"):
        F.linear(x, w, torch.zeros(2, dtype=torch.float64))
    with pytest.raises(TypeError, match="weight must be a floating-point"):
        F.linear(x, torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"weight of shape \(out_features, in_features\)"):
        F.linear(x, torch.randn(3))


def test_network_refuses_bad_batches():
    import bptorch

    net = bptorch.Network([4, 3, 2])
    y = torch.zeros(0, dtype=torch.long)
    with pytest.raises(ValueError, match=r"shape \(N, 4\) with N ≥ 1, got shape \(0, 4\)"):
        net.backprop(torch.randn(0, 4), y)
    with pytest.raises(ValueError, match=r"shape \(N, 4\) with N ≥ 1, got shape \(2, 3, 4\)"):
        net.update_mini_batch(torch.randn(2, 3, 4), torch.zeros(2, dtype=torch.long), 0.1)
    with pytest.raises(ValueError, match="needs n, the training-set size"):
        net.update_mini_batch(torch.randn(2, 4), torch.zeros(2, dtype=torch.long), 0.1, lmbda=5.0)
