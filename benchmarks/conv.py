"""Conv net training step, bptorch vs torch.nn: forward + backward + SGD step.

The net is the book's two-conv net with ReLU (chapter 6): conv 20@5×5, pool 2×2,
conv 40@5×5, pool 2×2, FC 100, softmax with log-likelihood. Both nets start from the
same weights; timings are interleaved (bptorch, native, bptorch, ...); the median
seconds per step and the median of the per-round ratios are reported.

    python -m benchmarks.conv            # full
    python -m benchmarks.conv --quick
    python -m benchmarks.conv --fused-backward   # bptorch's convs with ATen's backward kernel
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from bptorch import cli
from bptorch import nn as bnn


def _net(engine: str, fused: bool = False) -> tuple[torch.nn.Module, torch.nn.Module]:
    if engine == "bptorch":
        net = torch.nn.Sequential(
            bnn.Conv2d(1, 20, 5, fused_backward=fused), bnn.MaxPool2d(2), bnn.ReLU(),
            bnn.Conv2d(20, 40, 5, fused_backward=fused), bnn.MaxPool2d(2), bnn.ReLU(),
            bnn.Flatten(),
            bnn.Dense(40 * 4 * 4, 100, "relu"), bnn.Linear(100, 10),
        )
        return net, bnn.LogLikelihoodCost(logits=True)
    nn = torch.nn
    net = nn.Sequential(
        nn.Conv2d(1, 20, 5), nn.MaxPool2d(2), nn.ReLU(),
        nn.Conv2d(20, 40, 5), nn.MaxPool2d(2), nn.ReLU(), nn.Flatten(),
        nn.Linear(40 * 4 * 4, 100), nn.ReLU(), nn.Linear(100, 10),
    )
    return net, nn.CrossEntropyLoss()


def _steps(net, cost, opt, x, y, n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        opt.zero_grad(set_to_none=True)
        cost(net(x), y).backward()
        opt.step()
    return (time.perf_counter() - t) / n


def rows(quick: bool = False, fused: bool = False) -> list[dict]:
    """One row per batch size: median seconds per training step, bptorch and native."""
    out = []
    for batch in (10, 128):
        torch.manual_seed(0)
        x, y = torch.rand(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
        nets = {}
        for engine in ("bptorch", "native"):
            torch.manual_seed(1)
            net, cost = _net(engine, fused)
            nets[engine] = (net, cost, torch.optim.SGD(net.parameters(), lr=0.01))
        with torch.no_grad():  # same weights (the keys differ: Dense fuses Linear + ReLU)
            for p, q in zip(nets["native"][0].parameters(), nets["bptorch"][0].parameters()):
                p.copy_(q)
        steps = (5 if quick else 20) if batch > 10 else (20 if quick else 100)
        repeats = 3 if quick else 7
        times = {"bptorch": [], "native": []}
        for engine in nets:  # warm-up
            _steps(*nets[engine], x, y, 2)
        for _ in range(repeats):
            for engine in nets:
                times[engine].append(_steps(*nets[engine], x, y, steps))
        b, n = statistics.median(times["bptorch"]), statistics.median(times["native"])
        # the median of the per-round ratios cancels most of a shared machine's drift
        ratio = statistics.median(t / u for t, u in zip(times["bptorch"], times["native"]))
        out.append({"name": "conv-net train step", "fused_backward": fused, "batch": batch, "bptorch_s": b,
                    "native_s": n, "ratio": ratio})
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.conv",
                                description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=cli.thread_count, default=None,
                   help="torch intra-op threads (default: torch's own count)")
    p.add_argument("--fused-backward", action="store_true",
                   help="bptorch's Conv2d with fused_backward=True (aten.convolution_backward)")
    return p


def main(argv: list[str] | None = None) -> list[dict]:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = rows(args.quick, args.fused_backward)
    for r in result:
        print(json.dumps(r))
    return result


if __name__ == "__main__":
    main()
