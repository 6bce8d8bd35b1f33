"""Does torch.compile speed up a bptorch training step on this machine? Eager vs compiled.

Times two steps on random MNIST-shaped data (784 inputs, 10 classes):
``Network.update_mini_batch`` (the fused explicit engine, no autograd) and an autograd
step (``net.loss(x, y).backward()`` + SGD). Eager and compiled blocks alternate and the
fastest block counts, which keeps the ratio fair on a busy machine. Prints one JSON line
with the config.

The autograd step compiles with no graph break (``bptorch.functions.base.BPFunction``
hides each Function's ``jvp`` from Dynamo). For the explicit engine compiled several
steps at a time, see ``bptorch.compile.sgd_steps`` and ``python -m benchmarks.run``.

    python -m examples.compile_speed --sizes 784 30 10 --batch 10
"""
from __future__ import annotations

import argparse
import json
import time

import torch

import bptorch


def _block_ms(fn, steps: int) -> float:
    t = time.perf_counter()
    for _ in range(steps):
        fn()
    return 1e3 * (time.perf_counter() - t) / steps


def _compare(eager, compiled, steps: int, repeats: int) -> tuple[float, float]:
    for _ in range(3):  # warm up (and compile)
        eager(), compiled()
    e = c = float("inf")
    for _ in range(repeats):  # alternate, keep the fastest block of each
        e = min(e, _block_ms(eager, steps))
        c = min(c, _block_ms(compiled, steps))
    return e, c


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[784, 30, 10])
    p.add_argument("--batch", type=int, default=10)
    p.add_argument("--steps", type=int, default=100, help="steps per timed block")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--backend", default="inductor")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.manual_seed(args.seed)
    x = torch.rand(args.batch, args.sizes[0])
    y = torch.randint(0, args.sizes[-1], (args.batch,))
    net = bptorch.Network(args.sizes, cost="cross_entropy")
    opt = torch.optim.SGD(net.parameters(), lr=0.1)

    def autograd_step(loss_fn):
        def step():
            opt.zero_grad()
            loss_fn(x, y).backward()
            opt.step()
        return step

    def fused_step(update):
        return lambda: update(x, y, eta=0.1, lmbda=5.0, n=50000)

    res = {"config": vars(args), "torch": torch.__version__, "threads": torch.get_num_threads()}
    res["graph_breaks_autograd"] = torch._dynamo.explain(net.loss)(x, y).graph_break_count
    torch._dynamo.reset()
    compiled_update = torch.compile(net.update_mini_batch, backend=args.backend)
    compiled_loss = torch.compile(net.loss, backend=args.backend)
    for name, eager, compiled in [
        ("update_mini_batch", fused_step(net.update_mini_batch), fused_step(compiled_update)),
        ("autograd", autograd_step(net.loss), autograd_step(compiled_loss)),
    ]:
        e, c = _compare(eager, compiled, args.steps, args.repeats)
        res[f"{name}_eager_ms"], res[f"{name}_compiled_ms"] = round(e, 4), round(c, 4)
        res[f"{name}_speedup"] = round(e / c, 3)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
