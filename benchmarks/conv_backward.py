"""Conv layer forward + backward: bptorch's written-out backward vs ATen's fused kernel.

The written-out backward (the default, ``bptorch.functions.conv.conv2d_bwd``) computes
BP2 as ``conv_transpose2d(δ, W)`` and BP4 as a ``conv2d`` of a^{l-1} with δ (roles
swapped). The opt-in fused path (``Conv2d(..., fused_backward=True)``) computes both
with ``aten.convolution_backward``, autograd's own kernel for torch.nn.Conv2d.
torch.nn.Conv2d is timed as a third reference. Shapes are the chapter-6
net's two conv layers at batch 64: 20 maps 5×5 on 1×28×28 input (the first layer:
the input needs no gradient, so BP2 is skipped, as in a real net) and 40 maps 5×5 on
20×12×12 input (input gradient needed). Timings are interleaved (written, aten, torch,
written, ...); the median seconds per step and the median of per-round ratios are
reported.

    OMP_NUM_THREADS=1 python -m benchmarks.conv_backward --threads 1
    OMP_NUM_THREADS=2 python -m benchmarks.conv_backward --threads 2
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from bptorch import cli
from bptorch import nn as bnn
from bptorch.functions.conv import Conv2dFunction


def _step(fn, x, params, n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        z = fn(x)
        torch.autograd.grad(z, (x, *params) if x.requires_grad else params, z)
    return (time.perf_counter() - t) / n


def _median_ratio(a: list[float], b: list[float]) -> float:
    """The median of per-round ratios: cancels most of a shared machine's drift."""
    return statistics.median(s / t for s, t in zip(a, b))


def rows(quick: bool = False) -> list[dict]:
    out = []
    for c_in, c_out, hw, input_grad in ((1, 20, 28, False), (20, 40, 12, True)):
        torch.manual_seed(0)
        layer = bnn.Conv2d(c_in, c_out, 5)
        ref = torch.nn.Conv2d(c_in, c_out, 5)
        ref.load_state_dict(layer.state_dict())
        x = torch.randn(64, c_in, hw, hw, requires_grad=input_grad)
        args = (layer.weight, layer.bias, layer.stride, layer.padding, layer.dilation, 1)
        fns = {
            "written": lambda x: Conv2dFunction.apply(x, *args, "conv"),
            "aten": lambda x: Conv2dFunction.apply(x, *args, "fused"),
            "torch": ref,
        }
        params = {"written": (layer.weight, layer.bias), "aten": (layer.weight, layer.bias),
                  "torch": (ref.weight, ref.bias)}
        # the two bptorch paths agree (a benchmark of a wrong answer is no benchmark)
        g = [torch.autograd.grad(fns[k](x).square().sum(), params[k]) for k in fns]
        for a, b in zip(g[0], g[1]):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-3)
        steps, repeats = (5, 5) if quick else (20, 15)
        for k in fns:  # warm-up
            _step(fns[k], x, params[k], 3)
        times = {k: [] for k in fns}
        for _ in range(repeats):
            for k in fns:
                times[k].append(_step(fns[k], x, params[k], steps))
        med = {k: statistics.median(v) for k, v in times.items()}
        out.append({
            "layer": f"conv {c_out}@5x5 on {c_in}x{hw}x{hw}, batch 64",
            "input_grad": input_grad, "threads": torch.get_num_threads(),
            "written_ms": round(med["written"] * 1e3, 3), "aten_ms": round(med["aten"] * 1e3, 3),
            "torch_ms": round(med["torch"] * 1e3, 3),
            "written_over_aten": round(_median_ratio(times["written"], times["aten"]), 3),
            "written_over_torch": round(_median_ratio(times["written"], times["torch"]), 3),
        })
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.conv_backward",
                                description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=cli.thread_count, default=None,
                   help="torch intra-op threads (default: torch's own count)")
    return p


def main(argv: list[str] | None = None) -> list[dict]:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = rows(args.quick)
    for r in result:
        print(json.dumps(r))
    return result


if __name__ == "__main__":
    main()
