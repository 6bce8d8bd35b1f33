"""How many intra-op threads a training step should use, chosen from the work per step.

torch starts with one intra-op (OpenMP) thread per core. At the book's sizes that is a
loss: a step of ``Network([784, 30, 10])`` at mini-batch 10 is a few GEMMs of 10 rows
(0.96 MFLOP in all), too small to split, and each split ends at a barrier where every
thread waits for the slowest. On a quiet 2-core machine one thread is already faster (a
``ch1`` epoch, ``python -m benchmarks.run``: 0.456 s with 1 thread against 0.504 s with 2);
on a busy one, where another process holds a core, the barrier waits for the OS to
schedule the second thread and a batch-10 step becomes 20-100x slower.

The policy (:func:`choose_threads`):

* **one thread** unless the step's largest GEMM has at least ``MIN_ROWS`` = 64 rows (the
  mini-batch for dense layers; mini-batch x output positions for a convolution) *and*
  the step has ``FLOPS_PER_THREAD`` = 5e6 FLOPs for each thread (10 MFLOP for two);
* then **one thread per** ``FLOPS_PER_THREAD`` **FLOPs**, at most the cores this
  process may run on (``os.sched_getaffinity``), and at most ``OMP_NUM_THREADS`` when
  that is set: the user's own cap wins. An explicit count is used as given.

Where the constants come from: 2 threads against 1 on a 2-core AMD EPYC, torch 2.14.1,
``Network.update_mini_batch`` (quiet machine, ``benchmarks/RESULTS.md`` against
``RESULTS-1thread.md``, fused column): [784, 30, 10] at batch 10 (0.96 MFLOP), 2 threads
1.08x slower; [784, 1024, 1024, 10] at batch 10, 96 MFLOP but 10 rows, 1.8x slower;
[784, 30, 10] at batch 128 (12 MFLOP), 1.44x faster. ``python -m benchmarks.busy
--crossover`` fills in the border (machine shared, so noisy): [784, 100, 10] at batch 16
and 32 (5 and 10 MFLOP), 2 threads 1.4-1.9x slower; from batch 64 (6 MFLOP at [784, 30,
10], 20 MFLOP at [784, 100, 10]) 0.7-0.8x. Rows matter as well as FLOPs: skinny GEMMs do
not split well. The policy stays at one thread a little past the border, because the
border is noisy and one thread is the side that survives a busy machine.

``import bptorch`` never changes torch's thread count. A script calls :func:`set_threads`
once, before training, and records ``torch.get_num_threads()`` with its results: a
different thread count changes float rounding (GEMM blocking), so a run repeats digit for
digit only at the same count.

    from bptorch.threads import mlp_step_flops, set_threads
    set_threads("auto", flops=mlp_step_flops([784, 30, 10], 10), rows=10)   # -> 1
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
from typing import Callable, Iterator, Sequence

import torch

__all__ = ["MIN_ROWS", "FLOPS_PER_THREAD", "available_cores", "choose_threads",
           "mlp_step_flops", "conv_step_flops", "count_flops", "set_threads", "using_threads",
           "threads_arg"]

MIN_ROWS = 64  # fewer GEMM rows than this: one thread, whatever the FLOPs
FLOPS_PER_THREAD = 5e6  # a thread must have at least this much of a step's work


def available_cores() -> int:
    """Cores this process may run on, capped by ``OMP_NUM_THREADS`` when it is set."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.strip().isdigit() and int(env) > 0:
        cores = min(cores, int(env))
    return max(1, cores)


def choose_threads(flops: float, rows: int | None = None, *,
                   max_threads: int | None = None) -> int:
    """The intra-op thread count for a step of ``flops`` FLOPs whose GEMMs have ``rows`` rows.

    Args:
        flops: the work of one training step (forward + backward + update), e.g. from
            :func:`mlp_step_flops`, :func:`conv_step_flops` or :func:`count_flops`.
        rows: the rows of the step's GEMMs (mini-batch size for dense layers, mini-batch x
            output positions for a convolution); None skips the rows rule.
        max_threads: the most threads to use (default :func:`available_cores`).

    Returns 1 unless ``rows >= MIN_ROWS`` and ``flops >= 2 * FLOPS_PER_THREAD``; then
    ``flops // FLOPS_PER_THREAD`` threads, at most ``max_threads``. It does not look at
    the machine's load: the same command picks the same count, so runs repeat.
    """
    if not math.isfinite(flops) or flops < 0 or (rows is not None and rows < 0):
        raise ValueError(f"expected finite flops >= 0 and rows >= 0, got flops={flops}, "
                         f"rows={rows}")
    cap = available_cores() if max_threads is None else max_threads
    if cap < 1:
        raise ValueError(f"expected max_threads >= 1, got {max_threads}")
    if rows is not None and rows < MIN_ROWS:
        return 1
    return int(max(1, min(cap, flops // FLOPS_PER_THREAD)))


def mlp_step_flops(sizes: Sequence[int], batch_size: int, grad_input: bool = False) -> float:
    """FLOPs of one SGD step of a fully connected net, the GEMMs only.

    Per layer 2·m·n_in·n_out for z = a_prev Wᵀ (forward) and as much for BP4's δᵀ a_prev;
    BP2's δ W for every layer but the first, unless ``grad_input`` (the net's input needs
    a δ, as when conv layers sit below). The elementwise work (σ, σ', the update) is
    O(m·n) and left out. [784, 30, 10] at m = 10: 0.96 MFLOP, what ``count_flops``
    counts for ``net.loss(x, y).backward()``.
    """
    products = [a * b for a, b in zip(sizes[:-1], sizes[1:])]
    bp2 = sum(products) if grad_input else sum(products[1:])
    return 2.0 * batch_size * (2 * sum(products) + bp2)


def conv_step_flops(batch_size: int, in_channels: int, out_channels: int, kernel_size: int,
                    out_size: int, grad_input: bool = True) -> float:
    """FLOPs of one step of a square convolution layer with an out_size² output:
    2·m·C_out·C_in·k²·H_out·W_out for the forward, as much for BP4, and as much for BP2
    when ``grad_input`` (False for a first layer, whose input needs no δ)."""
    return (4.0 + 2.0 * grad_input) * batch_size * out_channels * in_channels \
        * kernel_size ** 2 * out_size ** 2


def count_flops(step: Callable[[], object]) -> float:
    """Run ``step()`` once under ``torch.utils.flop_counter.FlopCounterMode`` and return
    the FLOPs it counted (matmuls and convolutions, forward and backward). The RNG state
    is restored afterwards, so counting does not change a seeded run's dropout masks; the
    step's other effects (``.grad``, an optimizer step) are not undone. In-place GEMMs
    such as ``Network.update_mini_batch``'s ``addmm_`` are not counted: count
    ``net.loss(x, y).backward()`` instead."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.random.fork_rng(devices=[]), FlopCounterMode(display=False) as counter:
        step()
    return float(counter.get_total_flops())


def set_threads(n: int | str = "auto", flops: float | None = None, rows: int | None = None,
                *, max_threads: int | None = None) -> int:
    """Set torch's intra-op thread count and return the count now in force.

    ``n`` is a positive int (used as given) or ``"auto"``, resolved by
    :func:`choose_threads` from ``flops`` and ``rows`` (both about one training step;
    ``flops`` is required). To restore, call ``set_threads(previous)`` with
    ``previous = torch.get_num_threads()`` taken first, or use :func:`using_threads`.
    """
    if n == "auto":
        if flops is None:
            raise ValueError('set_threads("auto") needs flops=, the work of one step '
                             "(see bptorch.threads.mlp_step_flops / count_flops)")
        n = choose_threads(flops, rows, max_threads=max_threads)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f'expected a thread count >= 1 or "auto", got {n!r}')
    if n != torch.get_num_threads():
        torch.set_num_threads(n)
    return torch.get_num_threads()


@contextlib.contextmanager
def using_threads(n: int | str = "auto", flops: float | None = None, rows: int | None = None,
                  *, max_threads: int | None = None) -> Iterator[int]:
    """``with using_threads("auto", flops=...) as count:``: :func:`set_threads` for the
    block, torch's previous count restored on exit."""
    previous = torch.get_num_threads()
    try:
        yield set_threads(n, flops, rows, max_threads=max_threads)
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def keep_threads() -> Iterator[int]:
    """``with keep_threads():``: whatever the block sets (an experiment's ``--threads``),
    torch's thread count is what it was before once the block ends. As a decorator,
    ``@keep_threads()``, the same around each call (the scripts' ``main``)."""
    previous = torch.get_num_threads()
    try:
        yield previous
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)


def threads_arg(value: str) -> int | str:
    """argparse ``type=`` for ``--threads``: ``"auto"`` or a positive int."""
    if value == "auto":
        return value
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f'expected "auto" or a thread count >= 1, got {value!r}')
    return n
