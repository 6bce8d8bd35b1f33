"""The figures of the "Works with" table (docs/works-with.md) that no test prints, measured here.

    BPTORCH_OFFLINE=1 python -m examples.works_with            # all three, ~30 s
    BPTORCH_OFFLINE=1 python -m examples.works_with --only vmap jacfwd

* ``vmap``: per-example gradients of a [784, 30, 10] sigmoid net (``bptorch.nn.Dense`` ×
  2, ``CrossEntropyCost``) by ``torch.func.vmap(grad(C))`` against a loop of one
  ``backward()`` per example; max abs error over every parameter, float32, the first 64
  MNIST training images.
* ``jacfwd``: the input Jacobian of the same net by ``torch.func.jacfwd`` (bptorch's
  hand-written ``jvp``, forward mode) against ``torch.func.jacrev`` of its plain
  ``torch.nn`` twin (``bptorch.convert.to_torch_nn``, torch's own autograd), float32,
  8 images.
* ``autocast``: one epoch of SGD on the first 5,000 MNIST training images,
  ``Network([784, 30, 10], cost="cross_entropy")``, m = 10, η = 0.5, ``net.loss`` +
  ``loss.backward()`` + ``torch.optim.SGD``, once in float32 and once with ``net.loss``
  under ``torch.autocast("cpu", torch.bfloat16)``, from the same seed; validation accuracy
  on the 10,000 validation images and the epoch's seconds.

Seeded (``--seed``, default 0); the thread count comes from ``--threads`` (default auto:
``bptorch.threads`` picks 1 for these batch-10 steps) and is printed, since it changes
float rounding. The seconds depend on the machine and its load.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Sequence

import torch
from torch.func import functional_call, grad, jacfwd, jacrev, vmap

import bptorch
import bptorch.nn as bnn
from bptorch.convert import to_torch_nn
from bptorch.threads import mlp_step_flops, set_threads, threads_arg

SECTIONS = ("vmap", "jacfwd", "autocast")


def dense_net(seed: int) -> torch.nn.Sequential:
    """[784, 30, 10], sigmoid throughout, torch's default init from ``seed``."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(bnn.Dense(784, 30, "sigmoid"), bnn.Dense(30, 10, "sigmoid"))


def per_example_error(x: torch.Tensor, labels: torch.Tensor, seed: int) -> float:
    """Max |vmap(grad) − per-example loop| over every parameter and example."""
    model, cost = dense_net(seed), bnn.CrossEntropyCost()
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p, xb, yb):  # one example: add the batch dimension back
        return cost(functional_call(model, p, (xb[None],)), yb[None])

    per_example = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, labels)
    err = 0.0
    for i in range(x.shape[0]):
        model.zero_grad()
        cost(model(x[i:i + 1]), labels[i:i + 1]).backward()
        for name, p in model.named_parameters():
            err = max(err, float((per_example[name][i] - p.grad).abs().max()))
    return err


def jacobian_error(x: torch.Tensor, seed: int) -> tuple[float, float]:
    """Max |jacfwd(bptorch net) − jacrev(torch.nn twin)|, and max |J| for scale."""
    model = dense_net(seed)
    twin = to_torch_nn(model, copy=True)
    forward, reverse = jacfwd(model)(x).detach(), jacrev(twin)(x).detach()
    return float((forward - reverse).abs().max()), float(reverse.abs().max())


def autocast_epoch(data, bf16: bool, seed: int, n: int = 5000) -> tuple[float, float]:
    """One epoch as tests/test_autocast.py: validation accuracy (%) and seconds."""
    torch.manual_seed(seed)
    x, labels = data.train[0][:n], data.train[1][:n]
    net = bptorch.Network([784, 30, 10], cost="cross_entropy")
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    start = time.perf_counter()
    for idx in torch.randperm(n).split(10):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = net.loss(x[idx], labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    seconds = time.perf_counter() - start
    xv, yv = data.validation
    return 100 * net.evaluate(xv, yv) / len(yv), seconds


def main(argv: Sequence[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=threads_arg, default="auto",
                   help="torch intra-op threads, or auto (bptorch.threads; default auto)")
    p.add_argument("--json", metavar="PATH", help="write the figures and config here")
    args = p.parse_args(argv)

    from bptorch.data import load_mnist

    previous = torch.get_num_threads()
    try:
        threads = set_threads(args.threads, flops=mlp_step_flops([784, 30, 10], 10), rows=10)
        data = load_mnist()
        x, labels = data.train[0][:64], data.train[1][:64]
        out: dict = {"config": {"seed": args.seed, "threads": args.threads,
                                "torch_threads": threads, "torch_version": torch.__version__,
                                "bptorch_version": bptorch.__version__,
                                "data_source": data.source}}
        print(f"torch {torch.__version__}, {threads} thread(s), seed {args.seed}")
        if "vmap" in args.only:
            out["vmap_max_abs_err"] = per_example_error(x, labels, args.seed)
            print(f"vmap(grad) vs per-example loop, [784, 30, 10], float32, 64 examples: "
                  f"max abs err {out['vmap_max_abs_err']:.2g}")
        if "jacfwd" in args.only:
            err, scale = jacobian_error(x[:8], args.seed)
            out["jacfwd_max_abs_err"], out["jacobian_max_abs"] = err, scale
            print(f"jacfwd (bptorch jvp) vs torch jacrev, [784, 30, 10], float32, 8 examples: "
                  f"max abs err {err:.2g} (max |J| {scale:.2g})")
        if "autocast" in args.only:
            acc32, s32 = autocast_epoch(data, False, args.seed)
            acc16, s16 = autocast_epoch(data, True, args.seed)
            out["autocast"] = {"float32": {"validation_accuracy": acc32, "seconds": s32},
                               "bfloat16": {"validation_accuracy": acc16, "seconds": s16}}
            print(f"1 epoch, 5,000 MNIST images, m = 10, η = 0.5, net.loss + SGD: validation "
                  f"{acc32:.2f} % float32 vs {acc16:.2f} % bfloat16 ({s32:.1f} s vs {s16:.1f} s)")
    finally:
        torch.set_num_threads(previous)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
