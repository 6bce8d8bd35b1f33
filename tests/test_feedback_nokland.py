"""experiments.feedback --recipe nokland: the 2x800 tanh MLP with dropout of Nøkland (NIPS
2016) and his dfa-torch code, its halving schedule, a tiny run's JSON and checkpoint, and
DFA's hidden deltas in that net against a hand computation."""
from __future__ import annotations

import json
import math

import pytest
import torch

from bptorch import nn as bnn
from bptorch.feedback import DFA
from experiments import feedback as exp

# anokland/dfa-torch@17dae73, Main.lua:22-40, Models/mlp.lua, copied by hand so that the
# recipe is checked against the source and not against itself
PUBLISHED = dict(model="mlp", input_dropout=0.1, dropout=0.5, cost="cross_entropy",
                 reduction="sum", optimizer="rmsprop", lr=1e-4, weight_decay=0.0,
                 batch_size=64, epochs=300, schedule="multistep", milestones=[],
                 normalize="scale", select="validation")


def _config(*argv: str) -> dict:
    return exp.resolve_config(exp.build_parser().parse_args(list(argv)))


def test_nokland_recipe_builds_his_net_optimizer_and_cost():
    c = _config("--rule", "dfa", "--recipe", "nokland")
    assert {k: c[k] for k in PUBLISHED} == PUBLISHED and c["init"] == "zero"
    assert c["nokland_error"] == 1.45
    torch.manual_seed(0)
    net, model = exp.build(c, torch.zeros(1, 784))
    kinds = [(n, type(m).__name__) for n, m in net.named_children()]
    assert kinds == [("drop0", "Dropout"), ("fc1", "Dense"), ("drop1", "Dropout"),
                     ("fc2", "Dense"), ("drop2", "Dropout"), ("fc3", "Linear")]
    assert (net.drop0.p, net.drop1.p, net.drop2.p) == (0.1, 0.5, 0.5)
    assert net.fc1.activation.name == net.fc2.activation.name == "tanh"
    assert [tuple(net.get_submodule(f).weight.shape) for f in ("fc1", "fc2", "fc3")] == \
        [(800, 784), (800, 800), (10, 800)]
    assert all(float(p.detach().abs().max()) == 0 for p in net.parameters())  # W = b = 0
    # DFA feeds each dropout's output; B^l is (10, 800), U(±1/√800) as ErrorFeedback.lua
    assert isinstance(model, DFA) and model.hidden_layers == ["drop1", "drop2"]
    k = 1 / math.sqrt(800)
    for b in (model.feedback_weight_0, model.feedback_weight_1):
        assert b.shape == (10, 800) and float(b.abs().max()) <= k
        assert float(b.abs().max()) > 0.99 * k and abs(float(b.std()) - k / math.sqrt(3)) < 0.002
    assert not torch.equal(model.feedback_weight_0, model.feedback_weight_1)
    opt, schedule = exp.make_optimizer(net, c)
    assert isinstance(opt, torch.optim.RMSprop)
    g = opt.param_groups[0]
    assert (g["lr"], g["alpha"], g["eps"], g["momentum"], g["weight_decay"]) == \
        (1e-4, 0.99, 1e-8, 0, 0.0)
    # Main.lua:40 -epoch_step -1 (the default): no step, the rate stays 1e-4
    assert isinstance(schedule, torch.optim.lr_scheduler.MultiStepLR)
    assert not schedule.milestones
    halve = exp.make_optimizer(net, _config("--rule", "dfa", "--recipe", "nokland",
                                             "--schedule", "halve"))[1]
    assert isinstance(halve, exp.HalveOnPlateau) and halve.gamma == 0.5 and halve.max_halvings == 8
    cost = exp.make_cost(c)
    assert isinstance(cost, bnn.CrossEntropyCost) and cost.logits and cost.reduction == "sum"
    # back-propagation under the recipe keeps torch's init; rules he did not run are refused
    bp = _config("--rule", "bp", "--recipe", "nokland")
    assert bp["init"] == "torch" and {k: bp[k] for k in PUBLISHED} == PUBLISHED
    with pytest.raises(SystemExit, match="nokland"):
        _config("--rule", "usf", "--recipe", "nokland")
    # the other recipes' MLP is unchanged: no input dropout, softmax log-likelihood
    adam = _config("--rule", "dfa", "--model", "mlp")
    net, _ = exp.build(adam, torch.zeros(1, 784))
    assert "drop0" not in dict(net.named_children()) and adam["cost"] == "log_likelihood"
    assert adam["normalize"] == "standardize" and adam["schedule"] == "multistep"


def test_halve_on_plateau_is_main_luas_auto_rule():
    """dfa-torch Main.lua:309-318: ē ← 0.75 ē + 0.25 e; finished at 8 halvings or ē ≤ 1e-4,
    else ÷2 when e ≥ ē. Values worked by hand."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    s = exp.HalveOnPlateau(opt, 0.5, 8)
    s.step(0.5)  # ē = 0.875
    s.step(0.3)  # ē = 0.73125
    assert (s.halvings, opt.param_groups[0]["lr"], s.finished) == (0, 1.0, False)
    assert s.mean == pytest.approx(0.73125)
    s.step(0.9)  # ē = 0.7734375 ≤ 0.9: halve
    assert (s.halvings, opt.param_groups[0]["lr"]) == (1, 0.5)
    s.step(0.77)  # ē = 0.772578125 > 0.77: keep
    assert s.halvings == 1
    for _ in range(7):
        s.step(1.0)  # ē < 1 = e each time: halve
    assert (s.halvings, opt.param_groups[0]["lr"], s.finished) == (8, 2.0 ** -8, False)
    s.step(1.0)  # eight done: finished, no ninth
    assert (s.halvings, opt.param_groups[0]["lr"], s.finished) == (8, 2.0 ** -8, True)
    # zero training error: finished once ē ≤ 0.01%, without halving
    s = exp.HalveOnPlateau(opt, 0.5, 8)
    steps = 0
    while not s.finished:
        s.step(0.0)
        steps += 1
    # ē = 0.75^k after k steps, checked on that step: the first k with 0.75^k ≤ 1e-4
    assert s.halvings == 0 and steps == math.ceil(math.log(1e-4) / math.log(0.75))
    t = exp.HalveOnPlateau(opt, 0.5, 8)
    t.load_state_dict(s.state_dict())
    assert t.state_dict() == s.state_dict()


def test_dfa_hidden_deltas_in_the_recipes_net_are_b_delta_times_tanh_prime():
    """δ^l = (δ^L B^l) ⊙ m^l ⊙ (1 − a_l²) with m^l drop_l's scaled mask and δ^L = σ(z^L) − y
    per example (summed over the batch), against the weight and bias gradients (BP3, BP4),
    in float64, in training mode (all three dropouts on)."""
    c = _config("--rule", "dfa", "--recipe", "nokland", "--init", "torch")
    torch.manual_seed(3)
    net, model = exp.build(c, torch.zeros(1, 784))
    model.double().train()
    seen = {}
    for name in ("drop0", "drop1", "drop2"):
        net.get_submodule(name).register_forward_hook(
            lambda m, i, o, name=name: seen.__setitem__(name, (i[0].detach(), o.detach())))
    x = torch.rand(7, 784, dtype=torch.float64)
    y = torch.tensor([3, 1, 4, 1, 5, 9, 2])
    exp.make_cost(c)(model(x), y).backward()

    W1, b1 = net.fc1.weight.detach(), net.fc1.bias.detach()
    W2, b2 = net.fc2.weight.detach(), net.fc2.bias.detach()
    W3, b3 = net.fc3.weight.detach(), net.fc3.bias.detach()
    x0 = seen["drop0"][1]  # the input after dropout
    a1 = torch.tanh(x0 @ W1.T + b1)
    a1_in, a1d = seen["drop1"]
    torch.testing.assert_close(a1_in, a1)
    a2 = torch.tanh(a1d @ W2.T + b2)
    a2_in, a2d = seen["drop2"]
    torch.testing.assert_close(a2_in, a2)
    m1, m2 = (a1d != 0) / 0.5, (a2d != 0) / 0.5
    assert 0.3 < float((m1 > 0).double().mean()) < 0.7  # dropout was on
    delta_L = torch.sigmoid(a2d @ W3.T + b3) - torch.nn.functional.one_hot(y, 10)
    delta_2 = (delta_L @ model.feedback_weight_1) * m2 * (1 - a2 ** 2)
    delta_1 = (delta_L @ model.feedback_weight_0) * m1 * (1 - a1 ** 2)
    for layer, delta, a_prev in ((net.fc3, delta_L, a2d), (net.fc2, delta_2, a1d),
                                 (net.fc1, delta_1, x0)):
        torch.testing.assert_close(layer.bias.grad, delta.sum(0))          # BP3
        torch.testing.assert_close(layer.weight.grad, delta.T @ a_prev)    # BP4
    # and not backprop's: W3ᵀ δ^L would give another δ^2
    bp_2 = (delta_L @ W3) * m2 * (1 - a2 ** 2)
    assert not torch.allclose(net.fc2.bias.grad, bp_2.sum(0))


def _run(tmp_path, name, *extra):
    path = tmp_path / name
    exp.main(["--recipe", "nokland", "--rule", "dfa", "--train-size", "128", "--threads", "1",
              "--no-progress", "--json", str(path), *extra])
    return path, json.loads(path.read_text())


def test_tiny_nokland_run_records_every_setting(mnist, tmp_path):
    path, saved = _run(tmp_path, "run.json", "--epochs", "1")
    c = saved["config"]
    assert {k: c[k] for k in PUBLISHED if k != "epochs"} == \
        {k: v for k, v in PUBLISHED.items() if k != "epochs"}
    assert c["epochs"] == 1 and c["init"] == "zero" and c["recipe"] == "nokland"
    assert c["n_train"] == 128 and c["nokland_error"] == 1.45 and c["torch_threads"] == 1
    h, f = saved["history"], saved["final"]
    assert len(h["test_error"]) == len(h["validation_error"]) == len(h["lr"]) == 1
    assert len(h["batch_training_error"]) == 1 and h["lr"] == [1e-4]
    assert f["selected_epoch"] == 0 and f["selected_test_error"] == h["test_error"][0]
    assert f["epochs_trained"] == 1 and saved["complete"] is True
    state = torch.load(path.with_suffix(".ckpt.pt"), weights_only=True)
    assert state["epoch"] == 1 and "feedback_weight_0" in state["model"]
    rows = exp.table([str(path)]).splitlines()
    assert "| mlp | mnist | dfa | 1 | 0 |" in rows[2] and "| 1.60% |" in rows[2]
    partial = tmp_path / "partial.json"  # a run under way says how far it is
    partial.write_text(json.dumps({**saved, "complete": False,
                                   "config": {**c, "epochs": 300}}))
    assert "| dfa | 1 of 300 so far | 0 |" in exp.table([str(partial)]).splitlines()[2]
    assert "| running |" in exp.table([str(partial)]).splitlines()[2]  # no verdict yet
    partial.write_text(json.dumps({**saved, "config": {**c, "epochs": 300},  # halving ended it
                                   "final": {**f, "stopped_by_schedule": True}}))
    assert "| dfa | 1 of 300 (schedule stopped) | 0 |" in \
        exp.table([str(partial)]).splitlines()[2]
    # scaled, not standardised, inputs: [0, 1]
    data = exp.load({**c, "train_size": 128})
    assert float(data[0].min()) == 0.0 and float(data[0].max()) == 1.0


@pytest.mark.parametrize("schedule", [(), ("--schedule", "halve")], ids=["constant", "halve"])
def test_resume_continues_the_run_exactly(mnist, tmp_path, schedule):
    _, straight = _run(tmp_path, "straight.json", "--epochs", "2", *schedule)
    first, _ = _run(tmp_path, "resumed.json", "--epochs", "1", *schedule)
    state = torch.load(first.with_suffix(".ckpt.pt"), weights_only=True)
    assert state["wall_seconds"] >= sum(state["history"]["epoch_seconds"]) > 0
    torch.save({**state, "wall_seconds": 1000.0}, first.with_suffix(".ckpt.pt"))
    path, resumed = _run(tmp_path, "resumed.json", "--epochs", "2", "--resume", *schedule)
    assert resumed["final"]["wall_seconds"] > 1000.0  # the first part's time carried over
    for key, values in straight["history"].items():
        if key != "epoch_seconds":
            assert resumed["history"][key] == values, key
    assert resumed["config"]["resumed_at"] == [1] and resumed["complete"] is True
    a = torch.load(tmp_path / "straight.ckpt.pt", weights_only=True)
    b = torch.load(path.with_suffix(".ckpt.pt"), weights_only=True)
    assert a["schedule"] == b["schedule"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    with pytest.raises(SystemExit):  # another lr: not the same run
        _run(tmp_path, "resumed.json", "--epochs", "3", "--resume", "--lr", "0.001", *schedule)
