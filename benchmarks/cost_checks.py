"""What the value checks of the costs cost: the probability range check (a^L in [0, 1],
the mark of logits passed to a cost on a^L) and the class-index range check.

    python -m benchmarks.cost_checks [--device cuda]

For output shapes (N, C) = (10, 10) and (128, 10) it times, per call:

- ``check_cost_inputs`` with and without ``probabilities=True`` (the difference is the
  probability check: one ``aminmax`` and two ``.item()``), for a float target and for
  class indices (whose range check reads the values too);
- one training step of the book's output layer, ``Dense(30, 10, "sigmoid")`` then
  ``CrossEntropyCost()``, forward and backward, with the check as shipped and with it
  switched off; the ratio is the check's share of the step.

Each figure is the minimum over ``--repeats`` runs of ``--number`` calls (the least
disturbed run on a shared machine), in µs; a dict of them is printed as JSON and returned.
On CUDA every timed call ends with a synchronize, and the checks' ``.item()`` is a sync
of its own: the figure that matters there is the step with and without the check.
"""
from __future__ import annotations

import argparse
import json
import timeit
from unittest import mock

import torch

import bptorch.functional as F
import bptorch.nn as bnn
from bptorch import cli
from bptorch._checks import check_cost_inputs


def per_call_us(fn, number: int, repeats: int, device: str = "cpu") -> float:
    if device != "cpu":
        call = fn
        fn = lambda: (call(), torch.cuda.synchronize())  # noqa: E731
    return min(timeit.repeat(fn, number=number, repeat=repeats)) / number * 1e6


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.cost_checks",
                                description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=cli.positive_int, default=200)
    p.add_argument("--number", type=cli.positive_int, default=50)
    p.add_argument("--threads", type=cli.thread_count, default=1,
                   help="torch intra-op threads (default 1)")
    p.add_argument("--seed", type=cli.non_negative_int, default=0)
    p.add_argument("--device", type=cli.device, default="cpu", help="default cpu")
    return p


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    time = lambda fn: per_call_us(fn, args.number, args.repeats, args.device)  # noqa: E731
    results: dict = {"config": vars(args), "torch": torch.__version__}
    dev = torch.device(args.device)
    layer, cost = bnn.Dense(30, 10, "sigmoid", device=dev), bnn.CrossEntropyCost()

    def step(x, y):
        layer.zero_grad(set_to_none=True)
        cost(layer(x), y).backward()

    def no_probability_check(output, target, what="output", probabilities=False):
        return check_cost_inputs(output, target, what, False)

    for n in (10, 128):
        a = torch.rand(n, 10, device=dev).requires_grad_()
        soft, idx = torch.rand(n, 10, device=dev), torch.randint(0, 10, (n,), device=dev)
        x = torch.rand(n, 30, device=dev)
        r = {
            "check_float_target": time(lambda: check_cost_inputs(a, soft)),
            "check_float_target_probabilities": time(
                lambda: check_cost_inputs(a, soft, probabilities=True)),
            "check_indices": time(lambda: check_cost_inputs(a, idx)),
            "check_indices_probabilities": time(
                lambda: check_cost_inputs(a, idx, probabilities=True)),
            "step": time(lambda: step(x, idx)),
        }
        with mock.patch.object(F, "check_cost_inputs", no_probability_check):
            r["step_without_probability_check"] = time(lambda: step(x, idx))
        r["probability_check"] = r["check_indices_probabilities"] - r["check_indices"]
        r["probability_check_share_of_step"] = r["probability_check"] / r["step"]
        results[f"N={n}, C=10"] = {k: round(v, 3) for k, v in r.items()}
    print(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
