"""experiments/resnet.py: the bptorch and native builds agree over the first training steps
(same weights, batches and augmentations), and a tiny end-to-end run writes the JSON."""
from __future__ import annotations

import json

import torch
from torch import nn

from bptorch import nn as bnn
from experiments import resnet


def test_engines_agree_on_the_first_steps(mnist):
    """Four SGD steps (256 images) in float64: the same losses and weights to 1e-9.

    In float32 the two builds' first gradients differ by up to ~1e-2 of a layer's largest
    entry, as much as either differs from float64: MNIST's blank background makes many
    pre-activations equal, so rounding moves whole groups across ReLU's kink at once."""
    torch.set_num_threads(1)
    c = resnet.resolve_config(resnet.build_parser().parse_args(["--dataset", "mnist"]))
    c["batch_size"], c["widths"] = 64, [8, 16, 32]  # narrower: float64 on a busy CPU
    x = mnist.train[0][:256].view(-1, 1, 28, 28).double()
    y = mnist.train[1][:256]
    torch.manual_seed(0)
    ours = resnet.build_net(c, bnn)
    resnet.he_init(ours)
    ours.double()
    theirs = resnet.build_net(c, nn).double()
    theirs.load_state_dict(ours.state_dict())
    assert {type(m).__module__.split(".")[0] for m in ours.modules()} <= {"bptorch", "torch",
                                                                          "experiments"}
    assert not any(type(m).__module__.startswith("torch.nn") and not isinstance(m, nn.Sequential)
                   for m in ours.modules())
    runs = []
    for net, engine in ((ours, "bptorch"), (theirs, "native")):
        cost, (opt, sched) = resnet.cost_fn(engine), resnet.make_optimizer(net, c, 4)
        gen = torch.Generator().manual_seed(0)
        losses = []
        net.train()
        for k in range(0, 256, 64):
            xb = resnet.augment(x[k:k + 64], {**c, "flip": True}, gen)
            opt.zero_grad()
            loss = cost(net(xb), y[k:k + 64])
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
        runs.append(losses)
    torch.testing.assert_close(runs[0], runs[1], rtol=1e-9, atol=1e-9)
    for (name, p), q in zip(ours.state_dict().items(), theirs.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-9, msg=name)


def test_main_writes_results(mnist, tmp_path):
    path = tmp_path / "run.json"
    results = resnet.main(["--dataset", "mnist", "--train-size", "192", "--eval-size", "100",
                           "--epochs", "1", "--batch-size", "64", "--widths", "4", "8",
                           "--blocks", "1", "--threads", "1", "--json", str(path),
                           "--no-progress"])
    saved = json.loads(path.read_text())
    assert saved["config"]["dataset"] == "mnist" and saved["config"]["engine"] == "bptorch"
    assert saved["config"]["flip"] is False  # digits are not flipped
    assert set(saved["history"]) == {"test_accuracy", "validation_accuracy", "training_cost",
                                     "epoch_seconds"}
    assert len(saved["history"]["test_accuracy"]) == 1
    assert 0.0 <= results["final"]["test_accuracy"] <= 1.0
