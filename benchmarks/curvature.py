"""Second-order quantities (issue 22): one training step with ``collect(..., "kfac")`` and
the others, against a plain bptorch step, and BackPACK's own step for the same quantity.

Nets as the issue's: MLP [784, 100, 10] (ReLU) at batch 128 and LeNet-5 (ReLU, max
pooling) at batch 64, 10 classes, cross-entropy. A step is forward, loss and backward
(``zero_grad`` first). The timings are interleaved repeats in one process (the machine is
shared: read the ratios, which are measured side by side), median per row, both wall-clock
and the thread's CPU time (``time.thread_time``: the time this thread ran, which other
jobs on a shared machine do not add to, though they still slow it through the caches).

    python -m benchmarks.curvature --json results/curvature.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Callable

import torch
from torch import nn

from bptorch import cli
from bptorch.convert import from_torch_nn
from bptorch.extensions import collect

NAMES = ("diag_ggn_mc", "kfac", "diag_ggn_exact", "kflr")
TARGETS = {"diag_ggn_mc": 1.5, "kfac": 1.5, "diag_ggn_exact": 2.5, "kflr": 2.5}


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 100), nn.ReLU(), nn.Linear(100, 10))


def lenet5() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))


NETS = {"mlp": (mlp, 128), "lenet5": (lenet5, 64)}


def steps(net: str) -> dict[str, Callable[[], None]]:
    """name -> one step: "plain" (bptorch), each quantity in bptorch, and BackPACK's."""
    build, batch = NETS[net]
    torch.manual_seed(0)
    model = build()
    twin = from_torch_nn(model, strict=True)
    x, y = torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    loss_fn = nn.CrossEntropyLoss()

    def plain() -> None:
        twin.zero_grad()
        loss_fn(twin(x), y).backward()

    out = {"plain": plain}
    for name in NAMES:
        def step(name: str = name) -> None:
            twin.zero_grad()
            with collect(twin, name, loss_fn=loss_fn):
                loss_fn(twin(x), y).backward()
        out[name] = step
    try:
        import backpack
        from backpack.extensions import KFAC, KFLR, DiagGGNExact, DiagGGNMC
    except ImportError:
        return out
    ext_model, ext_loss = backpack.extend(build()), backpack.extend(nn.CrossEntropyLoss())
    ext_model.load_state_dict(model.state_dict())
    extensions = {"diag_ggn_mc": DiagGGNMC, "kfac": KFAC, "diag_ggn_exact": DiagGGNExact,
                  "kflr": KFLR}
    for name, ext in extensions.items():
        def bp_step(ext=ext) -> None:
            ext_model.zero_grad()
            with backpack.backpack(ext()):
                ext_loss(ext_model(x), y).backward()
        out[f"backpack_{name}"] = bp_step
    return out


def measure(net: str, repeats: int, inner: int) -> dict[str, tuple[float, float]]:
    """Median (wall, thread CPU) seconds per step of each row, the rows interleaved in
    every repeat."""
    fns = steps(net)
    for fn in fns.values():  # warm-up
        fn()
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0, c0 = time.perf_counter(), time.thread_time()
            for _ in range(inner):
                fn()
            cpu[name].append((time.thread_time() - c0) / inner)
            wall[name].append((time.perf_counter() - t0) / inner)
    return {k: (statistics.median(wall[k]), statistics.median(cpu[k])) for k in fns}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.curvature",
                                description=__doc__.splitlines()[0],
                                formatter_class=cli.HelpFormatter)
    p.add_argument("--nets", nargs="+", choices=list(NETS), default=list(NETS),
                   help="default both")
    p.add_argument("--repeats", type=cli.positive_int, default=15,
                   help="interleaved rounds (default 15)")
    p.add_argument("--inner", type=cli.positive_int, default=5,
                   help="steps timed together in each round (default 5)")
    p.add_argument("--threads", type=cli.thread_count, default=1,
                   help="torch intra-op threads (default 1)")
    p.add_argument("--json", metavar="PATH", type=cli.json_path, default=None,
                   help="write the rows here")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for net in args.nets:
        t = measure(net, args.repeats, args.inner)
        base, base_cpu = t["plain"]
        print(f"{net}: plain bptorch step {base * 1e3:.2f} ms (CPU {base_cpu * 1e3:.2f} ms)")
        for name in NAMES:
            wall, cpu = t[name]
            row = {"net": net, "quantity": name, "plain_ms": base * 1e3,
                   "bptorch_ms": wall * 1e3, "ratio": wall / base,
                   "plain_cpu_ms": base_cpu * 1e3, "bptorch_cpu_ms": cpu * 1e3,
                   "cpu_ratio": cpu / base_cpu, "target": TARGETS[name]}
            if f"backpack_{name}" in t:
                bp_wall, bp_cpu = t[f"backpack_{name}"]
                row.update(backpack_ms=bp_wall * 1e3, backpack_ratio=bp_wall / base,
                           backpack_cpu_ms=bp_cpu * 1e3, backpack_cpu_ratio=bp_cpu / base_cpu)
            rows.append(row)
            bp = (f", BackPACK {row['backpack_ms']:.2f} ms ({row['backpack_ratio']:.2f}×; "
                  f"CPU {row['backpack_cpu_ratio']:.2f}×)" if "backpack_ms" in row else "")
            print(f"  {name:15s} {row['bptorch_ms']:7.2f} ms  {row['ratio']:.2f}× "
                  f"(CPU {row['cpu_ratio']:.2f}×; target ≤ {row['target']}×){bp}")
    if args.json:
        config = {k: v for k, v in vars(args).items() if k != "json"}
        config["torch"] = torch.__version__
        config["load_average"] = os.getloadavg()  # at the end: the machine's other jobs
        with open(args.json, "w") as f:
            json.dump({"config": config, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
