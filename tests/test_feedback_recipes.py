"""experiments.feedback: BioTorch's per-rule recipe table against its published files,
Xavier initialisation, the epoch chosen on held-out validation images, and --seeds."""
from __future__ import annotations

import json
import math

import pytest
import torch

from experiments import feedback as exp

# jsalbert/biotorch@74fad0d: benchmark_configs/cifar10/le_net/sgd/<file>.yaml line 39 (lr),
# Benchmarks.md line 5 (the rest), copied here by hand so that the table is checked
# against the source and not against itself
PUBLISHED_LR = {"bp": 0.1, "fa": 0.001, "usf": 0.1, "brsf": 0.1, "frsf": 0.1, "dfa": 0.0001}


def _config(*argv: str) -> dict:
    return exp.resolve_config(exp.build_parser().parse_args(list(argv)))


@pytest.mark.parametrize("rule", exp.RULES)
def test_biotorch_recipe_is_its_published_settings(rule):
    c = _config("--rule", rule, "--recipe", "biotorch")
    assert c["lr"] == PUBLISHED_LR[rule]
    assert (c["optimizer"], c["weight_decay"], c["batch_size"], c["epochs"]) == \
        ("sgd", 1e-3, 64, 100)
    assert c["init"] == "xavier" and c["select"] == "validation"
    assert c["lenet_input"] == "resize"
    net, _ = exp.build(c, torch.zeros(1, 1, 32, 32))
    opt, schedule = exp.make_optimizer(net, c)
    assert opt.param_groups[0]["momentum"] == 0.9
    assert sorted(schedule.milestones) == [50, 75] and schedule.gamma == 0.1
    # flags still override the recipe; the default recipe is unchanged
    assert _config("--rule", rule, "--recipe", "biotorch", "--lr", "0.02")["lr"] == 0.02
    assert _config("--rule", rule)["optimizer"] == exp.RULE_CONFIGS[rule]["optimizer"]


# benchmark_configs/cifar10/le_net/adam/<rule>_adam.yaml line 39 (lr), read by hand
PUBLISHED_ADAM_LR = {"bp": 1e-3, "fa": 1e-4, "usf": 1e-3, "brsf": 1e-3, "frsf": 1e-3,
                     "dfa": 1e-4}


@pytest.mark.parametrize("rule", exp.RULES)
def test_biotorch_adam_recipe_is_its_published_settings(rule):
    c = _config("--rule", rule, "--recipe", "biotorch-adam")
    assert c["lr"] == PUBLISHED_ADAM_LR[rule]
    assert (c["optimizer"], c["weight_decay"], c["batch_size"]) == ("adam", 1e-4, 128)
    assert c["init"] == "xavier" and c["select"] == "validation"
    net, _ = exp.build(c, torch.zeros(1, 1, 32, 32))
    opt, schedule = exp.make_optimizer(net, c)
    assert isinstance(opt, torch.optim.Adam) and opt.param_groups[0]["weight_decay"] == 1e-4
    # [100, 150, 200] of 250 epochs (the config file, the 1e-4 rules), as fractions of
    # Benchmarks.md's 100 for the 1e-3 rules
    epochs, milestones = ((250, [100, 150, 200]) if PUBLISHED_ADAM_LR[rule] == 1e-4
                          else (100, [40, 60, 80]))
    assert c["epochs"] == epochs
    assert sorted(schedule.milestones) == milestones and schedule.gamma == 0.1


@pytest.mark.parametrize("rule", ["fa", "usf", "frsf"])
def test_xavier_init_scales_weights_and_feedback(rule):
    torch.manual_seed(0)
    net, _ = exp.mlp(rule, 0.0)
    exp.xavier_init(net)
    fc1 = net.fc1
    w, std = fc1.weight.detach(), math.sqrt(2 / (784 + 800))
    assert abs(float(w.std()) / std - 1) < 0.02
    assert float(w.abs().max()) <= math.sqrt(3) * std + 1e-6  # uniform
    assert torch.equal(fc1.bias, torch.zeros_like(fc1.bias))
    assert fc1.feedback_scale == pytest.approx(std)
    if rule != "usf":  # fa's B and frsf's |R| at Xavier's std too
        b = fc1.feedback_weight
        rms = float(b.pow(2).mean().sqrt())
        assert abs(rms / std - 1) < 0.02


def test_select_epoch_on_validation_reports_that_epochs_test_error():
    h = {"test_error": [5.0, 3.0, 4.0, 3.5], "validation_error": [5.5, 4.0, 3.0, 3.0]}
    got = exp.select_epoch(h, "validation")
    assert got["selected_epoch"] == 2 and got["selected_test_error"] == 4.0  # first least
    assert got["best_epoch"] == 1 and got["best_test_error"] == 3.0
    test = exp.select_epoch(h, "test")
    assert test["selected_epoch"] == 1 and test["selected_test_error"] == 3.0


def test_summarise_gives_median_and_spread():
    assert exp.summarise([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0,
                                              "values": [3.0, 1.0, 2.0]}
    assert exp.summarise([4.0, 1.0])["median"] == 2.5


def test_seeds_select_on_held_out_validation(mnist, tmp_path):
    path = tmp_path / "r.json"
    out = exp.main(["--rule", "fa", "--model", "mlp", "--recipe", "biotorch", "--epochs", "2",
                    "--train-size", "300", "--batch-size", "50", "--lr", "0.01", "--threads",
                    "1", "--no-progress", "--seeds", "0", "1", "--json", str(path)])
    saved = json.loads(path.read_text())
    assert saved["config"]["seeds"] == [0, 1] and len(saved["runs"]) == 2
    assert [r["config"]["seed"] for r in saved["runs"]] == [0, 1]
    assert saved["runs"][0]["history"] != saved["runs"][1]["history"]
    for run in saved["runs"]:
        h, f = run["history"], run["final"]
        assert len(h["validation_error"]) == len(h["test_error"]) == 2
        chosen = min(range(2), key=h["validation_error"].__getitem__)
        assert f["selected_epoch"] == chosen
        assert f["selected_test_error"] == h["test_error"][chosen]
    chosen = [r["final"]["selected_test_error"] for r in saved["runs"]]
    assert saved["summary"]["selected_test_error"]["median"] == sum(chosen) / 2
    assert saved["config"]["n_train"] == 300  # the validation images are not trained on
    runs, cells = exp.table([str(path)]).split("\n\n")
    rows = runs.splitlines()
    assert len(rows) == 4 and all("| validation |" in r for r in rows[2:])
    median = saved["summary"]["selected_test_error"]["median"]
    assert f"| validation | 2 | {median:.2f}% |" in cells.splitlines()[2]  # the same median
    assert out["summary"] == saved["summary"]


def test_lenet_input_pads_or_resizes():
    x = torch.rand(3, 784)
    padded = exp.to_32(x, "pad")
    assert padded.shape == (3, 1, 32, 32) and torch.equal(padded[:, :, 2:30, 2:30],
                                                          x.view(3, 1, 28, 28))
    assert padded[:, :, :2].abs().sum() == 0
    resized = exp.to_32(x, "resize")
    assert resized.shape == (3, 1, 32, 32) and resized[:, :, :2].abs().sum() > 0
    ones = exp.to_32(torch.ones(1, 784), "resize")  # bilinear keeps a constant image
    torch.testing.assert_close(ones, torch.ones(1, 1, 32, 32))


def test_cell_table_is_the_median_of_complete_seeds():
    """The issue's measure: a cell's median over its complete seeds against BioTorch + 0.2;
    a run under way does not count, and fewer than three seeds is said."""
    def run(seed, err, complete=True, rule="usf", best=None):
        c = {"model": "lenet", "dataset": "fashion-mnist", "rule": rule, "recipe":
             "biotorch-adam", "select": "validation", "seed": seed,
             "biotorch_error": exp.BIOTORCH_ERROR[rule][1]}
        return {"config": c, "final": {"selected_test_error": err,
                                       "best_test_error": err if best is None else best},
                "complete": complete}
    rows = exp.cell_table([run(0, 9.50, best=9.1), run(1, 9.30, best=8.7), run(2, 9.00),
                           run(3, 1.0, False), run(0, 13.00, rule="dfa")]).splitlines()
    usf = next(r for r in rows if "| usf |" in r)
    # 9.30 <= 9.42; the least test errors 9.1, 8.7, 9.0 have median 9.0
    assert "| 3 | 9.30% | 9.00 – 9.50% | 9.00% | 9.22% | ✔ |" in usf
    dfa = next(r for r in rows if "| dfa |" in r)
    assert "✗ by 0.04 (1 of 3 seeds)" in dfa  # 13.00 - (12.76 + 0.2)


def _refit_base(tmp_path, selected: int) -> str:
    """A tiny complete --select validation run whose JSON says validation chose
    ``selected`` (set by hand, so the refit's length is known)."""
    path = tmp_path / "val.json"
    exp.main(["--rule", "usf", "--recipe", "biotorch-adam", "--epochs", "3", "--train-size",
              "200", "--batch-size", "50", "--seed", "3", "--threads", "1", "--no-progress",
              "--json", str(path)])
    saved = json.loads(path.read_text())
    saved["final"]["selected_epoch"] = selected
    saved["final"]["selected_test_error"] = saved["history"]["test_error"][selected]
    path.write_text(json.dumps(saved))
    return str(path)


def _refit(source: str, out, *extra: str) -> dict:
    exp.main(["--refit", source, "--json", str(out), "--no-progress", *extra])
    return json.loads(out.read_text())


def test_refit_trains_the_runs_net_on_every_training_image_for_validations_epochs(
        mnist, tmp_path):
    val = _refit_base(tmp_path, selected=1)
    base = json.loads(open(val).read())
    refit = _refit(val, tmp_path / "refit.json", "--threads", "1")
    c, h, f = refit["config"], refit["history"], refit["final"]
    assert c["select"] == "refit" and c["refit_epochs"] == 2 and c["refit_of"] == val
    assert c["refit_of_selected_test_error"] == base["final"]["selected_test_error"]
    same = ("rule", "recipe", "seed", "lr", "epochs", "milestones", "batch_size", "init",
            "weight_decay", "lenet_input", "train_size")
    assert {k: c[k] for k in same} == {k: base["config"][k] for k in same}
    assert "resumed_at" not in c and refit["complete"] is True
    # two epochs, no validation set, the last epoch reported
    assert len(h["test_error"]) == len(h["lr"]) == 2 and "validation_error" not in h
    assert f["selected_epoch"] == 1 and f["selected_test_error"] == h["test_error"][-1]
    # --train-size 200 takes the same 200 images both times, so the refit's two epochs are
    # the validation run's first two, bit for bit: the seed and the schedule carried over
    assert h["test_error"] == base["history"]["test_error"][:2]
    assert h["lr"] == base["history"]["lr"][:2]
    # without --train-size the refit trains on the 50,000 and the 10,000 validation images
    x, *_, x_val, _, _ = exp.load({**c, "train_size": None})
    n_val = mnist.validation[0].shape[0]
    assert x_val is None and x.shape[0] == mnist.train[0].shape[0] + n_val
    rows = exp.table([str(tmp_path / "refit.json")]).splitlines()
    assert "| lenet | mnist | usf | 2 | 3 |" in rows[2] and "| refit |" in rows[2]
    assert any("| refit | 1 |" in r for r in rows)  # its own cell, beside validation's


def test_refit_resumes_and_refuses_what_is_not_its_runs(mnist, tmp_path):
    val = _refit_base(tmp_path, selected=1)
    straight = _refit(val, tmp_path / "straight.json")
    short = json.loads(open(val).read())
    short["final"]["selected_epoch"] = 0
    (tmp_path / "short.json").write_text(json.dumps(short))
    _refit(str(tmp_path / "short.json"), tmp_path / "resumed.json")
    resumed = _refit(val, tmp_path / "resumed.json", "--resume")
    assert resumed["config"]["resumed_at"] == [1]
    assert resumed["history"]["test_error"] == straight["history"]["test_error"]
    with pytest.raises(SystemExit):  # a refit takes its run's settings, not new ones
        _refit(val, tmp_path / "x.json", "--lr", "0.01")
    for change in ({"complete": False}, {"config": {**short["config"], "select": "test"}}):
        (tmp_path / "bad.json").write_text(json.dumps({**short, **change}))
        with pytest.raises(SystemExit):  # an unfinished run, or one chosen on test
            _refit(str(tmp_path / "bad.json"), tmp_path / "x.json")
