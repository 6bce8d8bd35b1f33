"""The LeNet training step with feedback alignment, bptorch against BioTorch 0.0.16 (issue
23, "Done when": bptorch's ``feedback="fa"`` step no slower than BioTorch's).

Both nets are BioTorch's LeNetMNIST (``experiments.feedback.lenet("fa")`` in bptorch;
``biotorch.models.fa.le_net.le_net_mnist()``), loaded with the same weights, biases and
feedback matrices B (bptorch's ``feedback_weight`` buffers are copied into BioTorch's
``weight_backward``). One step: ``zero_grad`` + forward + cost (cross-entropy of the
logits) + backward + ``SGD.step`` (BioTorch's recipe: momentum 0.9, weight decay 1e-3),
on one random batch (64, 1, 32, 32), one thread. Before timing, the two nets' gradients
are checked equal after one step. Timings are interleaved (bptorch, BioTorch, ...) in one
process; the ratio is the median of the per-round ratios, with the rounds' spread.

BioTorch hands its convolution backward to ATen's helpers (``torch.nn.grad.conv2d_input``
and ``conv2d_weight``, i.e. ``convolution_backward``); bptorch writes BP2 and BP4 out.
BioTorch is not a dependency: ``pip install --no-deps biotorch==0.0.16`` (its pins are old).

    python -m benchmarks.biotorch_step [--repeats 21] [--batch-size 64]
"""
from __future__ import annotations

import argparse
import importlib
import json
import statistics

import torch
from torch import nn

from bptorch import cli
from bptorch import nn as bnn
from bptorch.threads import using_threads

from .timing import interleaved, ratio

LAYERS = ("conv1", "conv2", "conv3", "fc1", "fc2")


def pair(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """(bptorch's fa LeNet, BioTorch's fa LeNet) with bptorch's weights, biases and B."""
    import contextlib
    import io

    from experiments.feedback import lenet

    torch.manual_seed(seed)
    ours, _ = lenet("fa")
    with contextlib.redirect_stdout(io.StringIO()):  # BioTorch prints its conversion
        theirs = importlib.import_module("biotorch.models.fa.le_net").le_net_mnist()
    with torch.no_grad():
        for name in LAYERS:
            a, b = getattr(ours, name), getattr(theirs.module, name)
            b.weight.copy_(a.weight)
            b.bias.copy_(a.bias)
            b.weight_backward.copy_(a.feedback_weight)
    return ours.train(), theirs.train()


def _step(net: nn.Module, cost, opt, x, y):
    def step() -> None:
        opt.zero_grad(set_to_none=True)
        cost(net(x), y).backward()
        opt.step()
    return step


def _sgd(net: nn.Module) -> torch.optim.Optimizer:
    params = [p for p in net.parameters() if p.requires_grad]
    return torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-3)


def check_equal_gradients(ours: nn.Module, theirs: nn.Module, x, y) -> float:
    """The largest relative difference of the two nets' gradients after one backward."""
    for net in (ours, theirs):
        net.zero_grad(set_to_none=True)
    bnn.LogLikelihoodCost(logits=True)(ours(x), y).backward()
    nn.CrossEntropyLoss()(theirs(x), y).backward()
    worst = 0.0
    for name in LAYERS:
        a, b = getattr(ours, name), getattr(theirs.module, name)
        for p, q in ((a.weight, b.weight), (a.bias, b.bias)):
            err = ((p.grad - q.grad).abs().max() / q.grad.abs().max().clamp_min(1e-30)).item()
            assert err < 1e-4, f"{name}: bptorch and BioTorch gradients differ by {err:.2e}"
            worst = max(worst, err)
    for net in (ours, theirs):
        net.zero_grad(set_to_none=True)
    return worst


def row(repeats: int = 21, batch: int = 64, threads: int = 1) -> dict:
    """bptorch's and BioTorch's step (median ms), the paired ratio and its spread."""
    with using_threads(threads):
        ours, theirs = pair()
        g = torch.Generator().manual_seed(1)
        x = torch.randn(batch, 1, 32, 32, generator=g)
        y = torch.randint(0, 10, (batch,), generator=g)
        err = check_equal_gradients(ours, theirs, x, y)
        fns = {"bptorch": _step(ours, bnn.LogLikelihoodCost(logits=True), _sgd(ours), x, y),
               "biotorch": _step(theirs, nn.CrossEntropyLoss(), _sgd(theirs), x, y)}
        med, rounds = interleaved(fns, repeats, warmup=3, min_time=0.05)
    per_round = sorted(a / b for a, b in zip(rounds["bptorch"], rounds["biotorch"]))
    q = statistics.quantiles(per_round, n=4) if len(per_round) > 1 else per_round * 3
    return {"case": f"LeNet fa train step, batch {batch}, {threads} thread(s)",
            "bptorch_ms": med["bptorch"] * 1e3, "biotorch_ms": med["biotorch"] * 1e3,
            "ratio": ratio(rounds, "bptorch", "biotorch"), "ratio_q1": q[0], "ratio_q3": q[2],
            "ratio_min": per_round[0], "ratio_max": per_round[-1], "repeats": repeats,
            "max_grad_rel_diff": err, "target": 1.0}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.biotorch_step",
                                description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=cli.positive_int, default=21)
    p.add_argument("--batch-size", dest="batch", type=cli.positive_int, default=64)
    p.add_argument("--threads", type=cli.thread_count, default=1)
    return p


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    r = row(args.repeats, args.batch, args.threads)
    print(json.dumps(r), flush=True)
    return r


if __name__ == "__main__":
    main()
