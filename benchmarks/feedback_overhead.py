"""What ``feedback=`` costs the default path: ``bptorch.nn.Dense`` (feedback="backprop")
against the same layer's forward without the option (the check and ``DenseFunction.apply``
alone), one SGD step of [784, 30, 10] at batch 10, in one process with interleaved repeats.

    python -m benchmarks.feedback_overhead [--repeats 15]

Issue 14's bound: the default path within 2% of the code without the option.
"""
from __future__ import annotations

import argparse

import torch

from bptorch import cli
from bptorch import nn as bnn
from bptorch._checks import check_linear
from bptorch.functions.linear import DenseFunction

from .timing import interleaved, ratio


class PlainDense(bnn.Dense):
    """Dense's forward as it was before ``feedback=``: the check, then the Function."""

    def forward(self, input):
        check_linear(input, self.weight, self.bias)
        return DenseFunction.apply(input, self.weight, self.bias, self.activation,
                                   getattr(self, "_diag_name", None))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.feedback_overhead",
                                description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=cli.positive_int, default=15)
    return p


def main(argv: list[str] | None = None) -> float:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x, y = torch.rand(10, 784), torch.rand(10, 10)
    nets = {}
    for name, cls in (("option", bnn.Dense), ("plain", PlainDense)):
        torch.manual_seed(0)
        nets[name] = torch.nn.Sequential(cls(784, 30), cls(30, 10))
    cost = bnn.QuadraticCost()

    def step(net, opt):
        def run():
            opt.zero_grad()
            cost(net(x), y).backward()
            opt.step()
        return run

    fns = {k: step(n, torch.optim.SGD(n.parameters(), lr=3.0)) for k, n in nets.items()}
    med, rounds = interleaved(fns, args.repeats, min_time=0.05)
    r = ratio(rounds, "option", "plain")
    same = all(torch.equal(a, b) for a, b in zip(nets["option"].parameters(),
                                                 nets["plain"].parameters()))
    print(f"Dense step [784, 30, 10], batch 10, 1 thread: with feedback= (backprop) "
          f"{med['option'] * 1e6:.1f} µs, without {med['plain'] * 1e6:.1f} µs, ratio {r:.3f} "
          f"(bound 1.02); same weights after every step: {same}")
    return r


if __name__ == "__main__":
    main()
