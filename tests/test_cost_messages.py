"""The costs' messages a user can act on (issue 24), word for word: float class targets
say what to pass instead, and a NaN or inf in a cost's input is reported as such, with
where it is, not as a range problem."""
from __future__ import annotations

import pytest
import torch

import bptorch.nn as bnn
from bptorch import Network

ALL_COSTS = [bnn.QuadraticCost(), bnn.CrossEntropyCost(), bnn.LogLikelihoodCost(),
             bnn.CrossEntropyCost(logits=True), bnn.LogLikelihoodCost(logits=True),
             bnn.CrossEntropyCost(reduction="none")]
PROBABILITY_COSTS = [bnn.CrossEntropyCost(), bnn.LogLikelihoodCost(),
                     bnn.CrossEntropyCost(reduction="sum")]


@pytest.mark.parametrize("cost", ALL_COSTS)
def test_float_class_targets_say_what_to_pass(cost):
    a, what = torch.rand(3, 5) * 0.8 + 0.1, "input" if cost.logits else "output"
    with pytest.raises(ValueError) as e:
        cost(a, torch.tensor([1.0, 4.0, 0.0]))
    assert str(e.value) == (
        f"target shape (3,) does not match {what} shape (3, 5); costs do not broadcast. A "
        "float target of shape (3,) looks like class indices: pass class indices as int64 "
        f"(target.long()), or one-hot/probability targets of {what}'s shape (3, 5)")
    # what the message says to pass works
    assert torch.isfinite(cost(a, torch.tensor([1.0, 4.0, 0.0]).long())).all()


def test_float_class_targets_in_both_engines():
    """The explicit engine (Network.backprop) names its output a^L; Network.loss goes
    through the costs, whose output is a^L too."""
    net, x, y = Network([4, 3, 2]), torch.rand(5, 4), torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0])
    for step, what in ((net.backprop, "a^L"), (net.loss, "output")):
        with pytest.raises(ValueError) as e:
            step(x, y)
        assert str(e.value).endswith(
            "A float target of shape (5,) looks like class indices: pass class indices as "
            f"int64 (target.long()), or one-hot/probability targets of {what}'s shape (5, 2)")


@pytest.mark.parametrize("cost", ALL_COSTS[:3])
def test_a_target_of_another_shape_says_what_to_pass(cost):
    with pytest.raises(ValueError) as e:
        cost(torch.rand(4, 3) * 0.8 + 0.1, torch.rand(1, 3))
    assert str(e.value) == (
        "target shape (1, 3) does not match output shape (4, 3); costs do not broadcast. "
        "Pass class indices (int64) of shape (4,), or one-hot/probability targets of "
        "output's shape (4, 3)")


@pytest.mark.parametrize("cost", PROBABILITY_COSTS)
@pytest.mark.parametrize("bad, shown", [(float("nan"), "nan"), (float("inf"), "inf"),
                                        (float("-inf"), "-inf")])
def test_nan_or_inf_is_reported_as_such_and_where(cost, bad, shown):
    a = torch.rand(4, 3) * 0.8 + 0.1
    a[2, 1] = bad
    a[3, 0] = bad  # the message names the first
    for y in (torch.tensor([0, 2, 1, 1]), torch.rand(4, 3)):
        with pytest.raises(ValueError) as e:
            cost(a, y)
        assert str(e.value) == (
            f"output must be finite, got {shown} at index (2, 1) (2 of 12 values are NaN or "
            "inf); this cost takes probabilities in [0, 1]: look for an overflow in the "
            "forward pass (e.g. a learning rate too large)")


def test_nan_in_a_sequence_output_gives_its_full_index():
    a = torch.rand(2, 5, 3) * 0.8 + 0.1
    a[1, 3, 2] = float("nan")
    with pytest.raises(ValueError, match=r"^output must be finite, got nan at index "
                                         r"\(1, 3, 2\) \(1 of 30 values are NaN or inf\)"):
        bnn.LogLikelihoodCost()(a, torch.zeros(2, 5).long())


def test_out_of_range_still_names_logits():
    """The range message stays for finite values outside [0, 1]."""
    z = torch.tensor([[-12.11, 0.5], [7.603, 0.2]])
    with pytest.raises(ValueError) as e:
        bnn.CrossEntropyCost()(z, torch.rand(2, 2))
    assert str(e.value) == (
        "output must hold probabilities in [0, 1] for this cost (a^L after a sigmoid or "
        "softmax), got values in [-12.11, 7.603]; if output holds logits z^L, pass "
        "logits=True (e.g. CrossEntropyCost(logits=True), LogLikelihoodCost(logits=True))")
