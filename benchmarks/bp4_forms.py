"""BP4 of a convolution, ∂C/∂W = Σ_{n,p} δ_{n,p} a_col,n,pᵀ, in its written-out forms, at
the shapes of experiments.resnet's convolutions, with ATen's ``convolution_backward``
(weight only: cuDNN's weight-gradient kernel on a GPU) as the yardstick; BP2's two forms
beside it, with ATen's input gradient; then the ResNet training step with each BP4 form as
the default path's (correlation everywhere, unfolded everywhere, and the default rule).

* correlation: ``conv2d`` with the roles swapped (δ's maps as the kernels), the default
  path's BP4 (``bptorch.functions.conv.conv2d_weight_grad``);
* unfolded: one GEMM over the whole batch, δ_col (C_out × N·P) times the written-out
  unfold a_col (N·P × C·k·k) (``conv2d_weight_grad_unfold`` = ``conv_weight_grad_gemm``),
  the default path's BP4 on the CPU for 1×1 kernels, strided convolutions and one-position
  δ (``bp4_unfolded``, ``bp4_unfolded_cpu``), and for an empty batch;
* triton (CUDA, with triton installed): the implicit-GEMM kernel of
  ``bptorch.kernels`` "triton" (``conv2d_triton_bwd``, BP4 only), the same GEMM with
  a_col read through the convolution's index map; issue 23's target: ≤ 1.5× cuDNN's
  weight-gradient kernel at every shape;
* BP2: the transposed convolution (``conv2d_input_grad``), the unfolded form
  (W_colᵀ δ_col, then fold: ``conv_input_grad_gemm``) and, on CUDA, the Triton kernel,
  each against ATen's input gradient.

Timings are interleaved medians (``benchmarks.timing.interleaved``), float32, batch 128 as
the experiment trains.

    python -m benchmarks.bp4_forms --device cuda
    python -m benchmarks.bp4_forms               # the CPU, one thread
    python -m benchmarks.bp4_forms --no-resnet   # the per-convolution rows only
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


def _triton_ok(device: str) -> bool:
    """Whether the Triton kernels run here: CUDA tensors and triton importable."""
    from bptorch.functions.base import triton_available

    return device == "cuda" and triton_available()


def bp4_rows(device: str, batch: int, repeats: int) -> list[dict]:
    out = []
    one, need_w, need_x = (1, 1), (False, True), (True, False)
    for shape, wshape, stride, padding in conv_shapes(batch):
        a = torch.randn(shape, device=device)
        w = torch.randn(wshape, device=device)
        delta = torch.randn_like(nn.functional.conv2d(a, w, None, stride, padding))
        k, hw = wshape[2:], shape[2:]
        fns = {
            "correlation": lambda: conv.conv2d_weight_grad(delta, a, k, stride, padding, one, 1),
            "unfolded": lambda: conv.conv2d_weight_grad_unfold(delta, a, k, stride, padding,
                                                               one, 1),
            "aten": lambda: aten.convolution_backward(delta, a, w, None, stride, padding, one,
                                                      False, (0, 0), 1, (False, True, False)),
            "bp2_transposed": lambda: conv.conv2d_input_grad(delta, w, hw, stride, padding, one,
                                                             1),
            "bp2_unfolded": lambda: conv.conv_input_grad_gemm(delta, w, hw, stride, padding,
                                                              one, 1),
            "bp2_aten": lambda: aten.convolution_backward(delta, a, w, None, stride, padding,
                                                          one, False, (0, 0), 1,
                                                          (True, False, False)),
        }
        if _triton_ok(device):
            fns["triton"] = lambda: conv.conv2d_triton_bwd(delta, a, w, stride, padding, one,
                                                           1, need_w)[1]
            fns["bp2_triton"] = lambda: conv.conv2d_triton_bwd(delta, a, w, stride, padding,
                                                               one, 1, need_x)[0]
        ref, ref_x = fns["aten"]()[1], fns["bp2_aten"]()[0]
        for name in fns:  # every form agrees with ATen before it is timed
            if "aten" not in name:
                want = ref_x if name.startswith("bp2") else ref
                torch.testing.assert_close(fns[name](), want, rtol=1e-3,
                                           atol=1e-3 * want.abs().max())
        med, rounds = interleaved(fns, repeats, device=device)
        r = {"input": shape, "weight": wshape, "stride": stride,
             **{f"{n}_ms": med[n] * 1e3 for n in fns}}
        for name in fns:
            if "aten" not in name:
                r[f"{name}/aten"] = ratio(rounds, name, "bp2_aten" if name.startswith("bp2")
                                          else "aten")
        out.append(r)
    return out


def resnet_rows(device: str, repeats: int) -> list[dict]:
    """benchmarks.layers' ResNet step with the correlation everywhere, the unfolded form
    everywhere, and the default rule (``bp4_unfolded`` and ``bp4_unfolded_cpu``)."""
    rules, out = (conv.bp4_unfolded, conv.bp4_unfolded_cpu), []
    try:
        for form, choose in (("correlation", lambda *args: False),
                             ("unfolded", lambda *args: True), ("default", None)):
            conv.bp4_unfolded, conv.bp4_unfolded_cpu = rules if choose is None else (choose,) * 2
            out.append(dict(resnet_row(repeats, device), bp4=form, device=device))
    finally:
        conv.bp4_unfolded, conv.bp4_unfolded_cpu = rules
    return out


def rows(device: str = "cpu", batch: int = 128, repeats: int = 9,
         resnet: bool = True) -> list[dict]:
    """The per-convolution rows, then the three ResNet-step rows; one thread on the CPU."""
    with using_threads(1 if device == "cpu" else torch.get_num_threads()):
        return bp4_rows(device, batch, repeats) + (resnet_rows(device, repeats) if resnet
                                                   else [])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bp4_forms",
                                description=__doc__.splitlines()[0])
    p.add_argument("--device", type=cli.device, default="cpu", help="default cpu")
    p.add_argument("--batch-size", "--batch", dest="batch", type=cli.positive_int, default=128,
                   help="mini-batch size (default 128; --batch is its old name)")
    p.add_argument("--repeats", type=cli.positive_int, default=9)
    p.add_argument("--no-resnet", action="store_true",
                   help="the per-convolution rows only (no ResNet-step rows)")
    return p


def main(argv: list[str] | None = None) -> list[dict]:
    args = build_parser().parse_args(argv)
    out = rows(args.device, args.batch, args.repeats, not args.no_resnet)
    for r in out:
        print(json.dumps(r), flush=True)
    return out


if __name__ == "__main__":
    main()
