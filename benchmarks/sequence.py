"""Attention and LSTM, bptorch vs torch.nn: forward + backward, and bytes saved for backward.

Each row times one forward and one backward (a random upstream gradient on the output)
of a bptorch layer against its torch twin, from the same weights and inputs, float32,
one thread unless ``--threads``; timings are interleaved (bptorch, native, bptorch, ...)
with ``benchmarks.timing.interleaved`` and the ratio is the median of the per-round ratios
(``benchmarks.timing.ratio``). Saved bytes are counted with ``benchmarks.timing.saved_bytes``
(unique storages, parameters and inputs included) and, by :func:`kept_bytes`, the bytes
of saved storages that are neither an input nor a parameter: what the forward computed
and keeps alive for backward, non-differentiable outputs such as the row log-sum-exp
included (``saved_bytes``' activation bytes count only tensors with a grad_fn).

* attention: (batch 32, 4 heads, T = 64, d = 64), ``bptorch.functional
  .scaled_dot_product_attention`` (default, and ``recompute=True``, the memory-lean mode
  that keeps the row log-sum-exp instead of P) vs ``torch.nn.functional
  .scaled_dot_product_attention`` (on the CPU, torch's fused flash kernel);
* MultiheadAttention: batch 32, T = 64, embed 256, 4 heads, self-attention,
  ``need_weights=False`` (both; torch then takes its SDPA path), batch_first;
* LSTM: batch 64, T = 28, input 28, hidden 128, 1 and 2 layers, batch_first; and the
  1-layer bptorch LSTM under ``torch.compile`` (the whole module: dynamo traces the
  autograd.Function's forward and backward loops, no graph break), its compile time (the
  first call) reported apart and its ratio against native eager. The compile time depends
  on inductor's on-disk cache: 154 s cold, 11 s warm on the loaded 2-core machine.

Targets (issue 13): attention and MultiheadAttention ≤ 1.2× native, LSTM ≤ 2.5× native
(also for the compiled LSTM against native eager); the ``recompute`` rows have none: they
trade time for the bytes they save.

Where the LSTM's time goes (``--profile``: torch.profiler, self CPU time of 10 forward +
backward, 1 thread, a loaded 2-core machine): bptorch's 28-step Python loop runs ≈ 60 ATen
ops per step. aten::mm (31–34%: the per-step (W_hh)ᵀ δ_t of BP2 through time and BP4's two
(T·N)-row weight products) and addmm (8–10%: the per-step W_hh h_{t−1}) are the GEMMs;
aten::cat (≈ 15%: the per-step gate and δ concatenations and the stacks over T), tanh
(7–8%), mul/add/sub/sigmoid (≈ 15%) and the dispatch between them are the rest. torch's
CPU LSTM is one oneDNN call per layer forward (aten::mkldnn_rnn_layer, ≈ 34%) and one
backward (mkldnn_rnn_layer_backward, ≈ 63%): no per-step dispatch at all.

    python -m benchmarks.sequence              # full (the compiled LSTM compiles for minutes)
    python -m benchmarks.sequence --quick --no-compile
    python -m benchmarks.sequence --profile    # the LSTM's top ops, bptorch and native
"""
from __future__ import annotations

import argparse
import json
import time
from typing import Callable

import torch
from torch import nn

import bptorch.functional as BF
from bptorch import cli
from bptorch import nn as bnn
from bptorch.threads import using_threads

from .timing import interleaved, profiler_table, ratio, saved_bytes

TARGETS = {"attention": 1.2, "mha": 1.2, "lstm": 2.5}
ATTN = dict(batch=32, heads=4, T=64, d=64)
MHA = dict(batch=32, T=64, embed=256, heads=4)
LSTM = dict(batch=64, T=28, input=28, hidden=128)


def _fwd_bwd(forward: Callable[[], torch.Tensor], grad: torch.Tensor) -> Callable[[], None]:
    """One forward and one backward with the upstream gradient ``grad``."""
    def step() -> None:
        forward().backward(grad)
    return step


def attention_cases() -> list[tuple]:
    """(name, target key or None, bptorch forward, native forward, upstream gradient,
    leaves: the inputs and parameters, left out of the kept bytes)."""
    b, h, T, d = ATTN["batch"], ATTN["heads"], ATTN["T"], ATTN["d"]
    q, k, v = (torch.randn(b, h, T, d, requires_grad=True) for _ in range(3))
    g = torch.randn(b, h, T, d)
    native = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v)  # noqa: E731
    shape = f"({b}, {h}, {T}, {d})"
    return [(f"attention {shape}", "attention",
             lambda: BF.scaled_dot_product_attention(q, k, v), native, g, [q, k, v]),
            (f"attention {shape}, recompute=True", None,
             lambda: BF.scaled_dot_product_attention(q, k, v, recompute=True), native, g,
             [q, k, v])]


def mha_cases() -> list[tuple]:
    b, T, E, h = MHA["batch"], MHA["T"], MHA["embed"], MHA["heads"]
    ours = bnn.MultiheadAttention(E, h, batch_first=True)
    lean = bnn.MultiheadAttention(E, h, batch_first=True)
    lean.recompute = True
    theirs = nn.MultiheadAttention(E, h, batch_first=True)
    theirs.load_state_dict(ours.state_dict())
    lean.load_state_dict(ours.state_dict())
    x = torch.randn(b, T, E, requires_grad=True)
    g = torch.randn(b, T, E)
    native = lambda: theirs(x, x, x, need_weights=False)[0]  # noqa: E731
    name = f"MultiheadAttention (N {b}, T {T}, E {E}, {h} heads)"
    leaves = [x, *ours.parameters(), *lean.parameters(), *theirs.parameters()]
    return [(name, "mha", lambda: ours(x, x, x, need_weights=False)[0], native, g, leaves),
            (f"{name}, recompute", None, lambda: lean(x, x, x, need_weights=False)[0],
             native, g, leaves)]


def lstm_pair(layers: int) -> tuple[nn.Module, nn.Module]:
    """A bptorch LSTM and torch's, same weights, batch_first."""
    ours = bnn.LSTM(LSTM["input"], LSTM["hidden"], layers, batch_first=True)
    theirs = nn.LSTM(LSTM["input"], LSTM["hidden"], layers, batch_first=True)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def lstm_cases() -> list[tuple]:
    n, T, H = LSTM["batch"], LSTM["T"], LSTM["hidden"]
    x = torch.randn(n, T, LSTM["input"], requires_grad=True)
    g = torch.randn(n, T, H)
    out = []
    for layers in (1, 2):
        ours, theirs = lstm_pair(layers)
        out.append((f"LSTM (N {n}, T {T}, 28 -> {H}), {layers} layer{'s' * (layers > 1)}",
                    "lstm", lambda m=ours: m(x)[0], lambda m=theirs: m(x)[0], g,
                    [x, *ours.parameters(), *theirs.parameters()]))
    return out


def kept_bytes(fn: Callable[[], torch.Tensor], leaves: list[torch.Tensor]) -> int:
    """Bytes of the unique storages ``fn()`` saves for backward, leaving out ``leaves``'."""
    skip = {t.untyped_storage().data_ptr() for t in leaves}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in skip:
            seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(seen.values())


def _row(name: str, key: str, ours, theirs, g, leaves, repeats: int) -> dict:
    med, rounds = interleaved({"bptorch": _fwd_bwd(ours, g), "native": _fwd_bwd(theirs, g)},
                              repeats)
    r = ratio(rounds, "bptorch", "native")
    limit = TARGETS.get(key)  # None: no target (the memory-lean modes trade time for bytes)
    _, bb, _ = saved_bytes(ours)
    _, bn, _ = saved_bytes(theirs)
    ab, an = kept_bytes(ours, leaves), kept_bytes(theirs, leaves)
    return {"case": name, "bptorch_ms": med["bptorch"] * 1e3, "native_ms": med["native"] * 1e3,
            "ratio": r, "target": limit, "ok": None if limit is None else r <= limit,
            "saved_bytes_bptorch": bb, "saved_bytes_native": bn,
            "kept_bytes_bptorch": ab, "kept_bytes_native": an}


def compiled_lstm_row(repeats: int) -> dict:
    """The 1-layer bptorch LSTM under torch.compile against native eager."""
    import torch._dynamo

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    ours, theirs = lstm_pair(1)
    x = torch.randn(LSTM["batch"], LSTM["T"], LSTM["input"], requires_grad=True)
    g = torch.randn(LSTM["batch"], LSTM["T"], LSTM["hidden"])
    compiled = torch.compile(ours)
    start = time.perf_counter()
    _fwd_bwd(lambda: compiled(x)[0], g)()  # the first call compiles forward and backward
    compile_s = time.perf_counter() - start
    breaks = sum(torch._dynamo.utils.counters["graph_break"].values())
    med, rounds = interleaved({"compiled": _fwd_bwd(lambda: compiled(x)[0], g),
                               "native": _fwd_bwd(lambda: theirs(x)[0], g)}, repeats)
    r = ratio(rounds, "compiled", "native")
    return {"case": "LSTM 1 layer, torch.compile(bptorch) vs native eager",
            "bptorch_ms": med["compiled"] * 1e3, "native_ms": med["native"] * 1e3, "ratio": r,
            "target": TARGETS["lstm"], "ok": r <= TARGETS["lstm"], "compile_s": compile_s,
            "graph_breaks": breaks}


def rows(quick: bool = False, compile: bool = True, threads: int = 1) -> list[dict]:
    """One row per case: median ms per forward + backward, bptorch/native, target, bytes."""
    repeats = 5 if quick else 15
    out = []
    with using_threads(threads):
        torch.manual_seed(0)
        for case in attention_cases() + mha_cases() + lstm_cases():
            out.append(_row(*case, repeats))
        if compile:
            out.append(compiled_lstm_row(repeats))
    return out


def profile(threads: int = 1, row_limit: int = 12) -> str:
    """torch.profiler's top ops (self CPU time) of 10 LSTM forward + backward, both engines."""
    tables = []
    with using_threads(threads):
        torch.manual_seed(0)
        ours, theirs = lstm_pair(1)
        x = torch.randn(LSTM["batch"], LSTM["T"], LSTM["input"], requires_grad=True)
        g = torch.randn(LSTM["batch"], LSTM["T"], LSTM["hidden"])
        for name, m in (("bptorch", ours), ("native", theirs)):
            tables.append(profiler_table(_fwd_bwd(lambda m=m: m(x)[0], g), 10,
                                         f"{name} LSTM, 10 x forward + backward", row_limit))
    return "\n".join(tables)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.sequence",
                                description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer repeats")
    p.add_argument("--threads", type=cli.thread_count, default=1,
                   help="torch intra-op threads (default 1)")
    p.add_argument("--no-compile", action="store_true",
                   help="skip the torch.compile row (compiling takes minutes)")
    p.add_argument("--profile", action="store_true",
                   help="print torch.profiler's top ops of the LSTM instead")
    return p


def main(argv: list[str] | None = None) -> list[dict]:
    args = build_parser().parse_args(argv)
    if args.profile:
        print(profile(args.threads))
        return []
    result = rows(args.quick, not args.no_compile, args.threads)
    for r in result:
        print(json.dumps(r))
    return result


if __name__ == "__main__":
    main()
