"""experiments.conv_mnist: --resume continues a run bit for bit, refuses other flags; the
ensemble is the book's majority vote."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import bptorch.data
from experiments import conv_mnist as exp

# A tiny net on 200 images with dropout, so the resumed run must restore the shuffling
# generator, torch's global RNG (the dropout masks) and the parameters.
TINY = ["--preset", "dropout", "--train-size", "40", "--batch-size", "10", "--threads", "1",
        "--no-progress", "--seed", "3"]


@pytest.fixture
def small(mnist, monkeypatch):
    """MNIST with 100 validation and 100 test images: each epoch's evaluation of 20,000
    images through the 1000-1000 net took most of these tests' time."""
    def load_mnist(*args, **kwargs):
        return dataclasses.replace(mnist, validation=tuple(t[:100] for t in mnist.validation),
                                   test=tuple(t[:100] for t in mnist.test))

    monkeypatch.setattr(bptorch.data, "load_mnist", load_mnist)
    return load_mnist()


def _without_seconds(history: dict) -> dict:
    return {k: v for k, v in history.items() if k != "epoch_seconds"}


def test_resume_is_bit_identical_to_an_uninterrupted_run(small, tmp_path):
    whole = exp.main(TINY + ["--epochs", "3", "--json", str(tmp_path / "whole.json")])
    part = tmp_path / "part.json"
    exp.main(TINY + ["--epochs", "2", "--json", str(part)])
    saved = json.loads(part.read_text())
    assert saved["complete"] is True and len(saved["history"]["test_accuracy"]) == 2
    assert exp.checkpoint_path(part).exists()
    resumed = exp.main(TINY + ["--epochs", "3", "--json", str(part), "--resume"])
    assert resumed["config"]["resumed_at"] == [2]
    assert _without_seconds(resumed["history"]) == _without_seconds(whole["history"])
    assert resumed["final"] == whole["final"]
    ck_whole = torch.load(exp.checkpoint_path(tmp_path / "whole.json"), weights_only=True)
    ck_part = torch.load(exp.checkpoint_path(part), weights_only=True)
    for k, w in ck_whole["model"].items():
        assert torch.equal(ck_part["model"][k], w), k


def test_an_interrupted_run_leaves_a_partial_json(small, tmp_path, monkeypatch):
    out = tmp_path / "r.json"
    real, calls = exp.train_epoch, []

    def dies_in_the_second_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(exp, "train_epoch", dies_in_the_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        exp.main(TINY + ["--epochs", "3", "--json", str(out)])
    partial = json.loads(out.read_text())
    assert partial["complete"] is False
    assert len(partial["history"]["test_accuracy"]) == 1
    assert partial["final"]["test_accuracy"] == partial["history"]["test_accuracy"][0]
    row = exp.table([str(out)]).splitlines()[2]
    assert "| 1 of 3, running |" in row and row.startswith("| `dropout` | 99.60% |")
    monkeypatch.setattr(exp, "train_epoch", real)
    resumed = exp.main(TINY + ["--epochs", "3", "--json", str(out), "--resume"])
    whole = exp.main(TINY + ["--epochs", "3", "--json", str(tmp_path / "w.json")])
    assert _without_seconds(resumed["history"]) == _without_seconds(whole["history"])
    assert json.loads(out.read_text())["complete"] is True
    assert "| 3 of 3 |" in exp.table([str(out)])
    again = exp.main(TINY + ["--epochs", "3", "--json", str(out), "--resume"])  # finished
    assert again["config"]["resumed_at"] == [1] and again["history"] == resumed["history"]


def test_resume_refuses_other_flags(small, tmp_path, capsys):
    out = tmp_path / "r.json"
    exp.main(TINY + ["--epochs", "1", "--json", str(out)])
    with pytest.raises(SystemExit):
        exp.main(TINY + ["--epochs", "2", "--json", str(out), "--resume", "--eta", "0.5",
                         "--lmbda", "0.2"])
    err = capsys.readouterr().err.splitlines()[-1]  # the usage line names every flag
    assert "--eta" in err and "--lmbda" in err and "--epochs" not in err
    with pytest.raises(SystemExit):
        exp.main(["--preset", "relu-l2"] + TINY[2:] + ["--json", str(out), "--resume"])
    assert "--preset" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        exp.main(TINY + ["--resume"])
    assert "--json" in capsys.readouterr().err


def test_resume_without_a_checkpoint_starts_afresh(small, tmp_path):
    a = exp.main(TINY + ["--epochs", "1", "--json", str(tmp_path / "a.json"), "--resume"])
    b = exp.main(TINY + ["--epochs", "1", "--json", str(tmp_path / "b.json")])
    assert "resumed_at" not in a["config"]
    assert _without_seconds(a["history"]) == _without_seconds(b["history"])


def test_ensemble_is_a_majority_vote_not_the_mean():
    # nets 1 and 2 lean to class 0, net 3 is sure of class 1: the mean picks 1, the vote 0
    probs = torch.tensor([[[0.6, 0.4, 0.0]], [[0.6, 0.4, 0.0]], [[0.0, 1.0, 0.0]]])
    assert probs.mean(0).argmax(1).item() == 1
    assert exp.vote(probs).tolist() == [0]
    # a 2-2-1 split goes to the tied class with the larger mean probability
    probs = torch.tensor([[[0.9, 0.1, 0.0]], [[0.9, 0.1, 0.0]], [[0.0, 0.6, 0.4]],
                          [[0.0, 0.6, 0.4]], [[0.0, 0.0, 1.0]]])
    assert exp.vote(probs).tolist() == [0]
    probs[0, 0] = torch.tensor([0.51, 0.0, 0.49])
    probs[1, 0] = torch.tensor([0.51, 0.0, 0.49])
    probs[2, 0] = torch.tensor([0.0, 0.99, 0.01])
    probs[3, 0] = torch.tensor([0.0, 0.99, 0.01])
    assert exp.vote(probs).tolist() == [1]


def test_ensemble_votes_on_saved_runs(small, tmp_path):
    labels = small.test[1]
    right = torch.nn.functional.one_hot(labels, 10).float()
    wrong = torch.nn.functional.one_hot((labels + 1) % 10, 10).float()
    paths = []
    for i, p in enumerate([right * 0.6 + wrong * 0.4, right * 0.6 + wrong * 0.4, wrong]):
        paths.append(str(tmp_path / f"{i}.pt"))
        torch.save(p, paths[-1])
    out = exp.main(["--ensemble", *paths, "--json", str(tmp_path / "e.json")])
    assert out["ensemble_test_accuracy"] == 1.0
    assert out["mean_probability_test_accuracy"] == 0.0
    assert "vote" in json.loads((tmp_path / "e.json").read_text())["rule"]


def test_table_reports_test_accuracy_at_networks3_best_validation_epoch(tmp_path):
    run = {"config": {"preset": "simple", "epochs": 4, "book_test_accuracy": 0.9878},
           "history": {"test_accuracy": [0.90, 0.95, 0.93, 0.92],
                       "validation_accuracy": [0.91, 0.96, 0.94, 0.96],
                       "epoch_seconds": [10.0, 10.0, 10.0, 10.0]}, "complete": False}
    path = tmp_path / "r.json"
    path.write_text(json.dumps(run))
    row = exp.table([str(path)]).splitlines()[2]
    # validation ties at epochs 1 and 3: network3's >= keeps the later one
    assert row == ("| `simple` | 98.78% | 92.00% (epoch 3) | 92.00% | 95.00% | "
                   "4 of 4, running | 40 | 10 |")
