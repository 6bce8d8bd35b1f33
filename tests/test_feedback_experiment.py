"""experiments/feedback.py: the models, the configuration each rule gets, and tiny
end-to-end runs that write the JSON (config under each flag's own name) and the plot."""
from __future__ import annotations

import json

import pytest
import torch

from bptorch.feedback import DFA
from experiments import feedback as exp


def _config(*argv: str) -> dict:
    return exp.resolve_config(exp.build_parser().parse_args(list(argv)))


def test_lenet_is_biotorchs_lenet_mnist():
    net, hidden = exp.lenet("fa")
    x = torch.zeros(2, 1, 32, 32)
    shapes = {}
    for name, m in net.named_children():
        x = m(x)
        shapes[name] = tuple(x.shape[1:])
    assert shapes["conv1"] == (6, 28, 28) and shapes["pool1"] == (6, 14, 14)
    assert shapes["conv2"] == (16, 10, 10) and shapes["pool2"] == (16, 5, 5)
    assert shapes["conv3"] == (120, 1, 1) and shapes["fc1"] == (84,) and shapes["fc2"] == (10,)
    assert hidden == ["pool1", "pool2", "flatten", "fc1"]
    layers = [m for m in net.modules() if hasattr(m, "feedback")]
    assert len(layers) == 5 and all(m.feedback == "fa" for m in layers)


@pytest.mark.parametrize("rule", exp.RULES)
def test_each_rule_builds_its_model(rule):
    c = _config("--rule", rule, "--model", "mlp")
    net, model = exp.build(c, torch.zeros(1, 784))
    assert isinstance(model, DFA) == (rule == "dfa")
    want = {"bp": "backprop", "dfa": "backprop"}.get(rule, rule)
    assert {m.feedback for m in net.modules() if hasattr(m, "feedback")} == {want}


def test_config_records_every_flag_and_the_rules_optimizer():
    c = _config("--rule", "fa", "--dataset", "fashion-mnist", "--lr", "0.002")
    for key in ("rule", "model", "dataset", "epochs", "batch_size", "seed", "optimizer", "lr",
                "weight_decay", "milestones", "gamma", "dropout", "diagnostics", "threads"):
        assert key in c, key
    assert c["rule"] == "fa" and c["dataset"] == "fashion-mnist" and c["lr"] == 0.002
    assert c["optimizer"] == exp.RULE_CONFIGS["fa"]["optimizer"]  # the rule's, unless given
    assert c["biotorch_error"] == 12.77


@pytest.mark.parametrize("rule,model", [("fa", "lenet"), ("dfa", "mlp")])
def test_main_writes_results_and_plot(mnist, tmp_path, rule, model):
    path, png = tmp_path / "run.json", tmp_path / "run.png"
    results = exp.main(["--rule", rule, "--model", model, "--train-size", "600", "--epochs",
                        "2", "--batch-size", "100", "--threads", "1", "--diagnostics",
                        "--json", str(path), "--plot", str(png), "--no-progress"])
    saved = json.loads(path.read_text())
    assert saved["config"]["rule"] == rule and saved["config"]["model"] == model
    assert saved["config"]["n_train"] == 600 and saved["config"]["torch_threads"] == 1
    h = saved["history"]
    assert len(h["test_error"]) == len(h["alignment"]) == len(h["epoch_seconds"]) == 2
    if model == "mlp":
        assert min(h["test_error"]) < 70  # learning from 600 images (chance: 90%)
    angles = h["alignment"][-1]
    output = "fc2" if model == "lenet" else "model.fc3"
    assert angles[output] < 1e-3 and all(0 < a < 180 for n, a in angles.items() if n != output)
    assert saved["final"]["best_test_error"] == min(h["test_error"])
    assert png.stat().st_size > 0 and results["final"] == saved["final"]
    exp.main(["--from-json", str(path), str(path), "--plot", str(tmp_path / "again.png")])
    assert (tmp_path / "again.png").stat().st_size > 0
    runs, cells = exp.table([str(path)]).split("\n\n")  # a row per run, then per cell
    rows = runs.splitlines()
    assert len(rows) == 3 and f"| {model} | mnist | {rule} | 2 |" in rows[2]
    assert f"{saved['final']['best_test_error']:.2f}%" in rows[2]
    cell = cells.splitlines()
    assert len(cell) == 3 and f"| {model} | mnist | {rule} |" in cell[2]
    assert f"| 1 | {saved['final']['best_test_error']:.2f}% |" in cell[2]
