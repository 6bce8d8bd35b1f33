"""experiments.sequence: the bptorch and native engines agree step by step from the same
weights (LSTM and transformer, small sizes, a few hundred real MNIST images), the nets share
torch.nn's state_dict keys, and the command line round-trips its config."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from bptorch import nn as bnn
from experiments import sequence as exp


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


SMALL = {"lstm": dict(hidden=16, layers=2), "transformer": dict(dim=16, depth=2, heads=2,
                                                                 mlp=32)}


def _config(model: str) -> dict:
    args = exp.build_parser().parse_args(["--model", model, "--batch-size", "50"])
    return {**exp.resolve_config(args), **SMALL[model], "warmup": 3}


@pytest.mark.parametrize("model", ["lstm", "transformer"])
def test_engines_agree_on_the_first_steps(mnist, model):
    c = _config(model)
    # float64: the key part of in_proj_bias has a zero gradient (softmax ignores a shift
    # common to a row of scores), which Adam would turn from float32 rounding noise into
    # steps of different signs in the two engines
    x, y = mnist.train[0][:300].double(), mnist.train[1][:300]
    torch.manual_seed(0)
    ours = exp.build_net(c, bnn).double()
    theirs = exp.build_net(c, nn).double()
    assert list(ours.state_dict()) == list(theirs.state_dict())
    theirs.load_state_dict(ours.state_dict())
    start = {k: v.clone() for k, v in ours.state_dict().items()}
    for net, engine in ((ours, "bptorch"), (theirs, "native")):
        opt = exp.make_optimizer(net, c)
        exp.train_epoch(net, exp.cost_fn(engine), opt, x, y, c,
                        torch.Generator().manual_seed(1), False, "")  # 6 steps of 50
    got, want = ours.state_dict(), theirs.state_dict()
    for k in want:
        torch.testing.assert_close(got[k], want[k], atol=1e-9, rtol=1e-7, msg=k)
    moved = max((want[k] - start[k]).abs().max().item() for k in want)
    assert moved > 1e-3  # agreeing by not training fails
    torch.testing.assert_close(exp.logits(ours, x), exp.logits(theirs, x))


def test_learning_rate_schedule():
    c = dict(eta=1.0, eta_decay=0.5, warmup=4)
    assert [exp.learning_rate(c, 0, s) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert exp.learning_rate(c, 2, 100) == 0.25


def test_cli_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("BPTORCH_OFFLINE", "1")
    path = tmp_path / "run.json"
    results = exp.main(["--model", "lstm", "--hidden", "8", "--train-size", "200",
                        "--epochs", "1", "--threads", "1", "--no-progress",
                        "--engine", "native", "--json", str(path)])
    saved = json.loads(path.read_text())
    assert saved["config"] == json.loads(json.dumps(results["config"]))
    c = saved["config"]
    assert (c["model"], c["engine"], c["hidden"], c["train_size"], c["n_train"]) == \
        ("lstm", "native", 8, 200, 200)
    for flag in ("layers", "optimizer", "eta", "eta_decay", "warmup", "weight_decay",
                 "batch_size", "seed", "threads", "data_dir"):
        assert flag in c
    assert "dim" not in c  # the transformer's architecture flags are not the LSTM's
    assert len(saved["history"]["test_accuracy"]) == 1
    assert 0 <= saved["final"]["best_test_accuracy"] <= 1


def test_cli_rejects_the_other_models_flags():
    with pytest.raises(SystemExit):
        exp.main(["--model", "lstm", "--dim", "32"])
