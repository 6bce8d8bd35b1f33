"""BP4 of a convolution, ∂C/∂W = Σ_{n,p} δ_{n,p} a_col,n,pᵀ, in its two written-out forms,
at the shapes of experiments.resnet's convolutions, with ATen's ``convolution_backward``
(weight only) as the yardstick; then the ResNet training step with each form as the
default path's BP4 (correlation everywhere, unfolded everywhere, and the default rule).

* correlation: ``conv2d`` with the roles swapped (δ's maps as the kernels), the default
  path's BP4 (``bptorch.functions.conv.conv2d_weight_grad``);
* unfolded: ``unfold`` (for 1×1 kernels, the input read at the stride), then one einsum
  over examples and positions (``conv2d_weight_grad_unfold``), the default path's BP4 for
  1×1 kernels on the CPU and for an empty batch (``bp4_unfolded``).

Timings are interleaved medians (``benchmarks.timing.interleaved``), float32, batch 128 as
the experiment trains.

    python -m benchmarks.bp4_forms --device cuda
    python -m benchmarks.bp4_forms               # the CPU, one thread
"""
from __future__ import annotations

import argparse
import json

import torch
from torch import nn

import bptorch.functions.conv as conv
from bptorch import cli
from bptorch import nn as bnn
from bptorch.threads import using_threads

from .layers import resnet_row
from .timing import interleaved, ratio

aten = torch.ops.aten


def conv_shapes(batch: int) -> list[tuple]:
    """(input shape, weight shape, stride, padding) of each distinct conv in the net."""
    from experiments.resnet import DEFAULTS, build_net

    net, seen = build_net(DEFAULTS, bnn), {}
    hooks = [m.register_forward_hook(
        lambda m, args, out: seen.setdefault(
            (tuple(args[0].shape), tuple(m.weight.shape), m.stride, m.padding), None))
        for m in net.modules() if isinstance(m, bnn.Conv2d)]
    with torch.no_grad():
        net(torch.zeros(batch, 1, 28, 28))
    for h in hooks:
        h.remove()
    return list(seen)


def bp4_rows(device: str, batch: int, repeats: int) -> list[dict]:
    out = []
    for shape, wshape, stride, padding in conv_shapes(batch):
        a = torch.randn(shape, device=device)
        w = torch.randn(wshape, device=device)
        delta = torch.randn_like(nn.functional.conv2d(a, w, None, stride, padding))
        k, one = wshape[2:], (1, 1)
        fns = {
            "correlation": lambda: conv.conv2d_weight_grad(delta, a, k, stride, padding, one, 1),
            "unfolded": lambda: conv.conv2d_weight_grad_unfold(delta, a, k, stride, padding,
                                                               one, 1),
            "aten": lambda: aten.convolution_backward(delta, a, w, None, stride, padding, one,
                                                      False, (0, 0), 1, (False, True, False)),
        }
        ref = fns["aten"]()[1]
        for name in ("correlation", "unfolded"):  # the three agree before they are timed
            torch.testing.assert_close(fns[name](), ref, rtol=1e-3, atol=1e-3 * ref.abs().max())
        med, rounds = interleaved(fns, repeats, device=device)
        out.append({"input": shape, "weight": wshape, "stride": stride,
                    **{f"{n}_ms": med[n] * 1e3 for n in fns},
                    "correlation/aten": ratio(rounds, "correlation", "aten"),
                    "unfolded/aten": ratio(rounds, "unfolded", "aten")})
    return out


def resnet_rows(device: str, repeats: int) -> list[dict]:
    """benchmarks.layers' ResNet step with the correlation everywhere, the unfolded form
    everywhere, and the default rule (``bp4_unfolded``)."""
    rule, out = conv.bp4_unfolded, []
    try:
        for form, choose in (("correlation", lambda a, w: False),
                             ("unfolded", lambda a, w: True), ("default", rule)):
            conv.bp4_unfolded = choose
            out.append(dict(resnet_row(repeats, device), bp4=form, device=device))
    finally:
        conv.bp4_unfolded = rule
    return out


def rows(device: str = "cpu", batch: int = 128, repeats: int = 9) -> list[dict]:
    """The per-convolution rows, then the three ResNet-step rows; one thread on the CPU."""
    with using_threads(1 if device == "cpu" else torch.get_num_threads()):
        return bp4_rows(device, batch, repeats) + resnet_rows(device, repeats)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bp4_forms",
                                description=__doc__.splitlines()[0])
    p.add_argument("--device", type=cli.device, default="cpu", help="default cpu")
    p.add_argument("--batch-size", "--batch", dest="batch", type=cli.positive_int, default=128,
                   help="mini-batch size (default 128; --batch is its old name)")
    p.add_argument("--repeats", type=cli.positive_int, default=9)
    return p


def main(argv: list[str] | None = None) -> list[dict]:
    args = build_parser().parse_args(argv)
    out = rows(args.device, args.batch, args.repeats)
    for r in out:
        print(json.dumps(r), flush=True)
    return out


if __name__ == "__main__":
    main()
