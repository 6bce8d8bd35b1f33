"""What every benchmark measures with: interleaved timing, paired ratios, saved bytes, and
the markdown tables of ``RESULTS.md``.

A leaf: it imports only torch, so ``benchmarks.run`` and the per-topic benchmarks it
gathers (``layers``, ``sequence``, ``bp4_forms``, ``feedback_overhead``) all import it
and none imports another back.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

__all__ = ["Table", "Target", "fmt", "interleaved", "profiler_table", "ratio", "saved_bytes"]


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list] = field(default_factory=list)
    note: str = ""

    def markdown(self) -> str:
        out = [f"### {self.title}", ""]
        if self.note:
            out += [self.note, ""]
        if self.rows:
            out.append("| " + " | ".join(self.columns) + " |")
            out.append("|" + "---|" * len(self.columns))
            out += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in self.rows]
            out.append("")
        return "\n".join(out)


@dataclass
class Target:
    name: str
    value: float
    limit: float
    kind: str = "<="  # or ">="
    unit: str = ""

    @property
    def ok(self) -> bool:
        return self.value <= self.limit if self.kind == "<=" else self.value >= self.limit

    def row(self) -> list:
        return [self.name, f"{self.kind} {self.limit:g}{self.unit}",
                f"{self.value:.3g}{self.unit}", "✔" if self.ok else "✗"]


def fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.3e}"
    return str(v)


# -- timing --------------------------------------------------------------------
def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, inner: int = 0,
                warmup: int = 2, device: str = "cpu", min_time: float = 0.02) -> tuple:
    """Median seconds per call of each fn, timed A B A B ... ``repeats`` rounds.

    ``inner`` calls per sample (0: enough for ``min_time`` s). Returns
    (medians, rounds) where rounds[name] lists each round's time, for paired ratios.
    """
    for f in fns.values():
        for _ in range(warmup):
            f()
    _sync(device)
    if inner == 0:  # calibrate on the slowest function
        slowest = 0.0
        for f in fns.values():
            t0 = time.perf_counter(); f(); _sync(device)
            slowest = max(slowest, time.perf_counter() - t0)
        inner = max(1, int(min_time / max(slowest, 1e-7)))
    rounds: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, f in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(inner):
                f()
            _sync(device)
            rounds[name].append((time.perf_counter() - t0) / inner)
    return {k: statistics.median(v) for k, v in rounds.items()}, rounds


def profiler_table(step: Callable[[], object], calls: int, title: str,
                   row_limit: int = 10, warmup: int = 3) -> str:
    """``title`` and torch.profiler's top ops (self CPU time) over ``calls`` calls of
    ``step``, after ``warmup`` calls: where a row's time goes."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(warmup):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            step()
    return f"{title}\n" + prof.key_averages().table(sort_by="self_cpu_time_total",
                                                     row_limit=row_limit)


def ratio(rounds: dict, a: str, b: str) -> float:
    """Median over rounds of time(a) / time(b): paired, so load drift cancels."""
    return statistics.median(x / y for x, y in zip(rounds[a], rounds[b]))


# -- memory saved for backward -------------------------------------------------------
def saved_bytes(fn: Callable[[], torch.Tensor]) -> tuple[int, int, int]:
    """(tensors, bytes, activation bytes) saved for backward by fn(), counting unique
    storages. Activation bytes leave out leaves (inputs, targets, parameters): they are
    the storages kept alive only for backward, the memory a layer adds."""
    seen: dict[int, int] = {}
    made: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        seen[s.data_ptr()] = s.nbytes()
        root = t
        while root._base is not None:  # a view (W.t()) belongs to what it views
            root = root._base
        if root.grad_fn is not None:  # computed in the forward, not passed in
            made[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return len(seen), sum(seen.values()), sum(made.values())
