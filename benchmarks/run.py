"""Benchmarks: bptorch against native PyTorch, the book's NumPy loop and the machine's limit.

    python -m benchmarks.run                  # full suite (a few minutes), writes RESULTS.md
    python -m benchmarks.run --quick --out /tmp/r.md   # small subset, seconds

Every comparison runs in one process, on the same data and the same initial
weights, with warm-up and interleaved repeats (A B A B ...). Times are medians;
ratios are the median of the per-round ratios, which cancels most of the drift of
a shared machine. Sections:

(a) modules vs native: one SGD step of a ``bptorch.nn.Dense`` model on the autograd
    path against ``nn.Linear`` + ``nn.Sigmoid`` with the same quadratic cost in torch ops;
(b) the explicit engine (``Network.backprop`` + optimizer, and the fused
    ``update_mini_batch``) against the native step, and whole training epochs;
(c) the book's per-example NumPy loop (``benchmarks/reference_numpy.py``);
(d) the machine's limit: training FLOP/s at batch 1024 against a large ``torch.mm``;
(e) bytes saved for backward per layer type, via ``saved_tensors_hooks``;
(f) CUDA, where present: the same ratios, and the explicit step in a CUDA graph;
plus the conv rows of ``benchmarks/conv.py`` where that file exists.
"""
from __future__ import annotations

import argparse
import datetime
import platform
import sys
import time

import numpy as np
import torch
from torch import nn

import bptorch
from bptorch import Network, cli
from bptorch import nn as bnn
from bptorch.convert import network_to_sequential
from bptorch.presets import PRESETS as BOOK_PRESETS
from bptorch.threads import mlp_step_flops, using_threads

from .reference_numpy import ReferenceNetwork
from .timing import Table, Target, fmt, interleaved, ratio, saved_bytes

NETS = ([784, 30, 10], [784, 100, 10], [784, 1024, 1024, 10])
BATCHES = (10, 128, 1024)
LARGE = [784, 1024, 1024, 10]
N_TRAIN = 50_000
COMPILE_STEPS = 10  # mini-batches per compiled call (experiments.mnist --compile's default)


# -- the models ----------------------------------------------------------------
def quadratic(a: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The book's quadratic cost in plain torch ops: (1/N) Σ_x ½‖a − y‖²."""
    return 0.5 * ((a - y) ** 2).sum() / a.shape[0]


def step_fns(sizes, batch, device="cpu", eta=3.0):
    """The four one-step contenders on the same batch and initial weights."""
    torch.manual_seed(0)
    x = torch.rand(batch, sizes[0], device=device)
    y = torch.nn.functional.one_hot(torch.randint(0, sizes[-1], (batch,), device=device),
                                    sizes[-1]).float()
    mod = Network(sizes, device=device)  # autograd path through bnn.Dense
    exp = Network(sizes, device=device)  # explicit engine
    fused = Network(sizes, device=device)  # update_mini_batch
    nat = network_to_sequential(mod)
    cost = bnn.QuadraticCost()
    opt_m = torch.optim.SGD(mod.parameters(), lr=eta)
    opt_e = torch.optim.SGD(exp.parameters(), lr=eta)
    opt_n = torch.optim.SGD(nat.parameters(), lr=eta)

    def modules():
        opt_m.zero_grad()
        cost(mod(x), y).backward()
        opt_m.step()

    def native():
        opt_n.zero_grad()
        quadratic(nat(x), y).backward()
        opt_n.step()

    def explicit():
        opt_e.zero_grad()
        exp.backprop(x, y)
        opt_e.step()

    def update():
        fused.update_mini_batch(x, y, eta)

    return {"native": native, "modules": modules, "explicit": explicit, "fused": update}


def section_steps(quick: bool, device: str, targets: list[Target],
                  threads: int | str = "auto") -> Table:
    nets = NETS[:1] if quick else NETS
    batches = BATCHES[:2] if quick else BATCHES
    t = Table(f"(a, b) One SGD step, {device}: bptorch vs native PyTorch",
              ["net", "batch", "threads", "native ms", "modules ms", "modules/native",
               "explicit ms", "explicit/native", "fused ms", "fused/native"],
              note="native: nn.Linear+nn.Sigmoid, quadratic cost in torch ops, "
                   "zero_grad+forward+backward+SGD.step. modules: bptorch.nn.Dense "
                   "layers on the autograd path, bptorch QuadraticCost, the same SGD. "
                   "explicit: Network.backprop + SGD.step. fused: "
                   "Network.update_mini_batch (SGD inside the backward pass). threads: "
                   "bptorch.threads' choice for the step (--threads auto) or as given.")
    for sizes in nets:
        for batch in batches:
            fns = step_fns(sizes, batch, device)
            reps = 2 if quick else 15  # many short rounds: a paired median resists load
            with using_threads(threads, flops=mlp_step_flops(sizes, batch), rows=batch) as n:
                med, rounds = interleaved(fns, reps, device=device,
                                          min_time=0.005 if quick else 0.05)
            r = {k: ratio(rounds, k, "native") for k in ("modules", "explicit", "fused")}
            t.rows.append([str(sizes), batch, n, med["native"] * 1e3,
                           med["modules"] * 1e3, r["modules"], med["explicit"] * 1e3,
                           r["explicit"], med["fused"] * 1e3, r["fused"]])
            if device != "cpu":
                continue
            if sizes == LARGE:
                limits = {10: 1.25, 128: 1.10, 1024: 1.02}
                targets.append(Target(f"modules/native step, {sizes} batch {batch}",
                                      r["modules"], limits[batch]))
            elif batch in (10, 128):  # the book's nets, at its batch and at 128
                targets.append(Target(f"modules/native step, {sizes} batch {batch}",
                                      r["modules"], 1.25 if batch == 10 else 1.15))
            if sizes == [784, 30, 10] and batch in (10, 128):
                targets.append(Target(f"explicit (backprop+SGD)/native step, {sizes} "
                                      f"batch {batch}", r["explicit"],
                                      0.55 if batch == 10 else 0.85))
    return t


# -- (g) torch.compile ------------------------------------------------------------------
def section_compile(quick: bool, targets: list[Target], threads: int | str = "auto") -> Table:
    """The step of section (a), forward + cost compiled with ``fullgraph=True`` for both
    (AOTAutograd compiles each backward too), the SGD step eager."""
    t = Table("(g) torch.compile: compiled bptorch step vs compiled native step, cpu",
              ["net", "batch", "threads", "graph breaks", "native ms", "bptorch ms",
               "bptorch/native"],
              note="torch.compile(loss_fn, fullgraph=True) (inductor) of the forward and the "
                   "cost; the backward through AOTAutograd's compiled graph (bptorch's "
                   "written-out backward, traced); zero_grad and SGD.step eager. "
                   "graph breaks: torch._dynamo.explain on the bptorch loss.")
    nets = NETS[:1] if quick else NETS[:2]
    for sizes in nets:
        for batch in (10, 128):
            torch.manual_seed(0)
            x = torch.rand(batch, sizes[0])
            y = torch.nn.functional.one_hot(torch.randint(0, sizes[-1], (batch,)),
                                            sizes[-1]).float()
            mod = Network(sizes)
            nat = network_to_sequential(mod)
            cost = bnn.QuadraticCost()
            loss_b = torch.compile(lambda x, y: cost(mod(x), y), fullgraph=True)
            loss_n = torch.compile(lambda x, y: quadratic(nat(x), y), fullgraph=True)
            breaks = torch._dynamo.explain(lambda x, y: cost(mod(x), y))(x, y).graph_break_count
            opt_b = torch.optim.SGD(mod.parameters(), lr=3.0)
            opt_n = torch.optim.SGD(nat.parameters(), lr=3.0)

            def step(opt, loss):
                def run():
                    opt.zero_grad()
                    loss(x, y).backward()
                    opt.step()
                return run

            fns = {"native": step(opt_n, loss_n), "bptorch": step(opt_b, loss_b)}
            with using_threads(threads, flops=mlp_step_flops(sizes, batch), rows=batch) as n:
                med, rounds = interleaved(fns, 2 if quick else 15, warmup=3,
                                          min_time=0.005 if quick else 0.05)
            r = ratio(rounds, "bptorch", "native")
            t.rows.append([str(sizes), batch, n, breaks, med["native"] * 1e3,
                           med["bptorch"] * 1e3, r])
            targets.append(Target(f"compiled bptorch/compiled native step, {sizes} "
                                  f"batch {batch}", r, 1.05))
    return t


# -- epochs --------------------------------------------------------------------
PRESETS = {name: BOOK_PRESETS[name] for name in ("ch1", "ch3")}  # chapter 1 and chapter 3


def epoch_fns(preset: str, x: torch.Tensor, y: torch.Tensor, batch: int = 10,
              n_batches: int | None = None):
    """One epoch (shuffle + every mini-batch) of the explicit and the native engine."""
    p = PRESETS[preset]
    n = x.shape[0]
    torch.manual_seed(0)
    net = Network(p["sizes"], cost=p["cost"], init=p["init"])
    nat = network_to_sequential(net)
    eta, lmbda = p["eta"], p["lmbda"]
    # the book's L2: W decays by ηλ/n per step, b does not
    opt = torch.optim.SGD([{"params": [m.weight for m in nat if isinstance(m, nn.Linear)],
                            "weight_decay": lmbda / n},
                           {"params": [m.bias for m in nat if isinstance(m, nn.Linear)]}],
                          lr=eta)
    stop = n if n_batches is None else n_batches * batch

    # The shuffle: a random permutation, each mini-batch gathered by index_select as
    # it is used (cheaper than copying the whole shuffled set first; both engines).
    def explicit():
        perm = torch.randperm(n)
        for k in range(0, stop, batch):
            idx = perm[k:k + batch]
            net.update_mini_batch(x.index_select(0, idx), y.index_select(0, idx),
                                  eta, lmbda, n)

    def native():
        perm = torch.randperm(n)
        for k in range(0, stop, batch):
            idx = perm[k:k + batch]
            xb, yb = x.index_select(0, idx), y.index_select(0, idx)
            opt.zero_grad()
            if p["cost"] == "quadratic":
                loss = quadratic(nat(xb), yb)
            else:  # cross-entropy of σ(z^L), from the logits z^L
                z = nat[:-1](xb)
                loss = nn.functional.binary_cross_entropy_with_logits(
                    z, yb, reduction="sum") / xb.shape[0]
            loss.backward()
            opt.step()

    def compiled(step=[]):  # bptorch.compile.sgd_steps, 10 mini-batches a call
        if not step:
            from bptorch.compile import sgd_steps
            step.append(sgd_steps(cnet, COMPILE_STEPS))
        perm = torch.randperm(n)
        chunk = COMPILE_STEPS * batch
        for k in range(0, stop - stop % chunk, chunk):
            idx = perm[k:k + chunk]
            step[0](x.index_select(0, idx).view(COMPILE_STEPS, batch, -1),
                    y.index_select(0, idx).view(COMPILE_STEPS, batch, -1), eta, lmbda, n)

    cnet = Network(p["sizes"], cost=p["cost"], init=p["init"])
    cnet.load_state_dict(net.state_dict())
    return {"native": native, "explicit": explicit, "compiled": compiled}, net


def mnist_like(n: int = N_TRAIN, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random data of MNIST's shape: images (n, 784) in [0, 1], one-hot labels (n, 10)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 784, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    return x, torch.nn.functional.one_hot(labels, 10).float()


def section_epochs(quick: bool, targets: list[Target], threads: int | str = "auto",
                   compiled: bool = True) -> Table:
    x, y = mnist_like(2000 if quick else N_TRAIN)
    n_batches = 20 if quick else None
    t = Table("(b) Training epochs, cpu: explicit engine vs native PyTorch",
              ["preset", "mini-batches", "threads", "native s/epoch", "explicit s/epoch",
               "explicit/native", "compiled s/epoch", "compiled/native", "compile s"],
              note="50,000 random images of MNIST's shape, one-hot targets, batch 10; "
                   "an epoch is a permutation and every mini-batch, gathered with "
                   "index_select. explicit: "
                   "update_mini_batch; native: nn.Linear+nn.Sigmoid with torch.optim.SGD "
                   "(weight decay λ/n on W only, as the book's L2). compiled: "
                   "bptorch.compile.sgd_steps, 10 mini-batches per compiled call "
                   "(experiments.mnist --compile); compile s: its first call, apart. "
                   "ch1: [784,30,10] quadratic η=3; ch3: [784,100,10] cross-entropy η=0.5 λ=5."
                   + (" Quick mode: 20 mini-batches of a 2,000-image set, scaled."
                      if quick else ""))
    for preset in PRESETS:
        fns, _ = epoch_fns(preset, x, y, n_batches=n_batches)
        if not compiled:
            del fns["compiled"]
        rows = 10
        with using_threads(threads, flops=mlp_step_flops(PRESETS[preset]["sizes"], rows),
                           rows=rows) as n:
            t0 = time.perf_counter()
            if compiled:
                fns["compiled"]()  # compiles on its first call: timed apart, as a warm-up
            compile_s = time.perf_counter() - t0 if compiled else float("nan")
            # an epoch is 5000 steps, warm-up enough in itself
            med, rounds = interleaved(fns, 2 if quick else 5, inner=1, warmup=0)
        scale = 1.0 if n_batches is None else N_TRAIN / 10 / n_batches  # to 50k images
        r = ratio(rounds, "explicit", "native")
        rc = ratio(rounds, "compiled", "native") if compiled else float("nan")
        t.rows.append([preset, n_batches or N_TRAIN // 10, n, med["native"] * scale,
                       med["explicit"] * scale, r, med.get("compiled", float("nan")) * scale,
                       rc, compile_s])
        if preset == "ch1":
            targets.append(Target("ch1 epoch, explicit/native", r, 0.35))
            if compiled:
                targets.append(Target("ch1 epoch, compiled explicit/native eager", rc, 0.20))
    return t


# -- (c) the book's NumPy loop ---------------------------------------------------
def section_numpy(quick: bool) -> Table:
    x, y = mnist_like(2000 if quick else N_TRAIN)
    n_batches = 5 if quick else 500
    p = PRESETS["ch1"]
    fns, net = epoch_fns("ch1", x, y, n_batches=n_batches)
    ref = ReferenceNetwork([l.weight.detach().double().numpy() for l in net.layers],
                           [l.bias.detach().double().numpy() for l in net.layers])
    xn, yn = x.numpy(), y.numpy()  # float32, as the book's mnist.pkl.gz

    def numpy_loop():
        perm = np.random.permutation(len(xn))
        for k in range(0, n_batches * 10, 10):
            idx = perm[k:k + 10]
            ref.update_mini_batch(xn[idx], yn[idx], p["eta"])

    fns["numpy"] = numpy_loop
    med, rounds = interleaved(fns, 2 if quick else 3, inner=1, warmup=1)
    scale = N_TRAIN / 10 / n_batches
    t = Table("(c) ch1 epoch against the book's per-example NumPy loop, cpu",
              ["engine", "s/epoch (scaled)", "x faster than NumPy"],
              note=f"Each engine timed on the first {n_batches} mini-batches of 10 "
                   f"({n_batches * 10} images) of a shuffled epoch, then scaled by "
                   f"{scale:g} to the 50,000-image epoch. NumPy: float64 weights, a loop "
                   "over the examples of each mini-batch (benchmarks/reference_numpy.py).")
    for k in ("numpy", "native", "explicit"):
        t.rows.append([k, med[k] * scale, ratio(rounds, "numpy", k)])
    return t


# -- (d) the machine's limit -------------------------------------------------------
def n_params(sizes) -> int:
    return sum(i * o + o for i, o in zip(sizes[:-1], sizes[1:]))


def section_limit(quick: bool, device: str, targets: list[Target]) -> Table:
    sizes = [784, 64, 64, 10] if quick else LARGE
    batch = 64 if quick else 1024
    k = 256 if quick else 2048
    a = torch.randn(k, k, device=device)
    b = torch.randn(k, k, device=device)
    fns = {"gemm": lambda: torch.mm(a, b)}
    fns.update(step_fns(sizes, batch, device))
    med, _ = interleaved(fns, 2 if quick else 9, device=device,
                         min_time=0.005 if quick else 0.1)
    gemm_rate = 2 * k ** 3 / med["gemm"]
    P = n_params(sizes)
    model_flops = 6 * P * batch  # forward 2P, ∂C/∂W 2P, ∂C/∂a_prev 2P per example
    run_flops = model_flops - 2 * (sizes[0] * sizes[1]) * batch  # no ∂C/∂x at layer 1
    t = Table(f"(d) Throughput against the machine's GEMM rate, {device}",
              ["what", "ms/step", "GFLOP/s (6·P·N)", "GFLOP/s (GEMMs run)", "% of GEMM"],
              note=f"{sizes}, batch {batch}, P = {P:,} parameters. GEMM: torch.mm of two "
                   f"{k}x{k} float32 matrices, {2 * k ** 3 / med['gemm'] / 1e9:.1f} GFLOP/s, "
                   "timed interleaved with the steps. '6·P·N' counts the usual model "
                   "FLOPs; 'GEMMs run' leaves out ∂C/∂x of the first layer, which no "
                   "engine computes; the % is of the latter (the stricter).")
    t.rows.append(["torch.mm", med["gemm"] * 1e3, gemm_rate / 1e9, gemm_rate / 1e9, 100.0])
    for name in ("native", "modules", "explicit", "fused"):
        s = med[name]
        pct = 100 * run_flops / s / gemm_rate
        t.rows.append([name, s * 1e3, model_flops / s / 1e9, run_flops / s / 1e9, pct])
        if name == "fused" and device == "cpu":
            targets.append(Target(f"explicit (fused) throughput, {sizes} batch {batch}, "
                                  "% of GEMM rate", pct, 70, ">=", "%"))
    return t


# -- (e) memory saved for backward --------------------------------------------------
def section_memory(targets: list[Target]) -> Table:
    F = torch.nn.functional
    N, n_in, n_out = 64, 784, 30
    torch.manual_seed(0)
    x = torch.rand(N, n_in, requires_grad=True)
    z = torch.randn(N, n_out, requires_grad=True)
    a = torch.rand(N, 10, requires_grad=True)
    y = F.one_hot(torch.randint(0, 10, (N,)), 10).float()
    labels = y.argmax(1)
    blin = bnn.Linear(n_in, n_out)
    tlin = nn.Linear(n_in, n_out)
    bdense, tdense = bnn.Dense(n_in, 10), nn.Linear(n_in, 10)
    cases = [
        ("linear", lambda: blin(x), lambda: tlin(x)),
        ("dense (sigmoid)", lambda: bnn.Dense(n_in, n_out)(x),
         lambda: torch.sigmoid(tlin(x))),
        ("dense (relu)", lambda: bnn.Dense(n_in, n_out, "relu")(x),
         lambda: torch.relu(tlin(x))),
        ("sigmoid", lambda: bnn.Sigmoid()(z), lambda: nn.Sigmoid()(z)),
        ("tanh", lambda: bnn.Tanh()(z), lambda: nn.Tanh()(z)),
        ("relu", lambda: bnn.ReLU()(z), lambda: nn.ReLU()(z)),
        ("leaky_relu", lambda: bnn.LeakyReLU()(z), lambda: nn.LeakyReLU()(z)),
        ("softmax", lambda: bnn.Softmax(-1)(z), lambda: nn.Softmax(-1)(z)),
        ("identity", lambda: bnn.Identity()(z), lambda: nn.Identity()(z)),
        ("quadratic cost", lambda: bnn.QuadraticCost()(a, y), lambda: quadratic(a, y)),
        # in a net, the output layer already saved a^L: the cost adds y against a − y
        ("dense (sigmoid) + quadratic cost", lambda: bnn.QuadraticCost()(bdense(x), y),
         lambda: quadratic(torch.sigmoid(tdense(x)), y)),
        ("cross-entropy cost", lambda: bnn.CrossEntropyCost()(a, y),
         lambda: F.binary_cross_entropy(a, y, reduction="sum") / N),
        ("cross-entropy cost (logits)", lambda: bnn.CrossEntropyCost(logits=True)(a, y),
         lambda: F.binary_cross_entropy_with_logits(a, y, reduction="sum") / N),
        ("log-likelihood cost (logits, one-hot)",
         lambda: bnn.LogLikelihoodCost(logits=True)(a, y),
         lambda: F.cross_entropy(a, y, reduction="sum") / N),
        ("log-likelihood cost (logits, class indices)",
         lambda: bnn.LogLikelihoodCost(logits=True)(a, labels),
         lambda: F.cross_entropy(a, labels, reduction="sum") / N),
    ]
    t = Table("(e) Bytes saved for backward, per layer type",
              ["layer", "bptorch tensors", "bptorch bytes", "native tensors",
               "native bytes", "bptorch/native", "activation bytes: bptorch",
               "activation bytes: native"],
              note=f"Counted with torch.autograd.graph.saved_tensors_hooks, unique "
                   f"storages (parameters included, for both); float32, batch {N}, "
                   f"linear/dense {n_in}->{n_out}, activations on ({N}, {n_out}), costs on "
                   f"({N}, 10). Native: nn.Linear(+torch.sigmoid/relu), nn activations, "
                   "the quadratic cost in torch ops, F.binary_cross_entropy(_with_logits), "
                   "F.cross_entropy. Activation bytes count only saved tensors computed "
                   "in the forward (not inputs, targets or parameters): the memory a layer "
                   "keeps alive for backward.")
    for name, ours, theirs in cases:
        nb, bb, ab = saved_bytes(ours)
        nn_, bn, an = saved_bytes(theirs)
        t.rows.append([name, nb, bb, nn_, bn, bb / bn if bn else (1.0 if bb == 0 else
                                                                 float("inf")), ab, an])
        targets.append(Target(f"saved bytes, {name}, bptorch − native", float(bb - bn), 0,
                              unit=" B"))
    return t


# -- (f) CUDA ------------------------------------------------------------------------
def section_cuda(quick: bool) -> list[Table]:
    if not torch.cuda.is_available():
        return [Table("(f) CUDA", [], note="not run: no GPU")]
    tables = [section_steps(quick, "cuda", []), section_limit(quick, "cuda", [])]
    t = Table("(f) CUDA graph of the explicit step (update_mini_batch), cuda",
              ["net", "batch", "eager ms", "graph ms", "graph/eager", "native ms",
               "graph/native"])
    for sizes in NETS[:2] if quick else NETS:
        for batch in (10, 128):
            fns = step_fns(sizes, batch, "cuda")
            torch.manual_seed(0)
            net = Network(sizes, device="cuda")
            sx = torch.rand(batch, sizes[0], device="cuda")
            sy = torch.nn.functional.one_hot(
                torch.randint(0, sizes[-1], (batch,), device="cuda"), sizes[-1]).float()
            s = torch.cuda.Stream()  # warm up on a side stream before capture
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                for _ in range(3):
                    net.update_mini_batch(sx, sy, 3.0)
            torch.cuda.current_stream().wait_stream(s)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                net.update_mini_batch(sx, sy, 3.0)
            med, rounds = interleaved({"eager": fns["fused"], "graph": graph.replay,
                                       "native": fns["native"]}, 5 if quick else 9,
                                      device="cuda")
            t.rows.append([str(sizes), batch, med["eager"] * 1e3, med["graph"] * 1e3,
                           ratio(rounds, "graph", "eager"), med["native"] * 1e3,
                           ratio(rounds, "graph", "native")])
    tables.append(t)
    return tables


def section_conv(quick: bool) -> Table | None:
    try:
        from . import conv
    except ImportError:
        return None
    rows = conv.rows(quick)
    if not rows:
        return None
    cols = list(dict.fromkeys(k for r in rows for k in r))
    return Table("Convolutions (benchmarks/conv.py)", cols,
                 [[r.get(c, "") for c in cols] for r in rows])


def section_sequence(quick: bool, targets: list[Target], compile: bool = True,
                     threads: int | str = 1) -> Table | None:
    """Attention, MultiheadAttention and LSTM rows of ``benchmarks/sequence.py``."""
    try:
        from . import sequence
    except ImportError:
        return None
    rows = sequence.rows(quick, compile, threads if isinstance(threads, int) else 1)
    for r in rows:
        if r["target"] is not None:
            targets.append(Target(f"{r['case']}, bptorch/native fwd+bwd", r["ratio"],
                                  r["target"]))
    cols = list(dict.fromkeys(k for r in rows for k in r if k not in ("target", "ok")))
    return Table("Attention and LSTM, forward + backward (benchmarks/sequence.py)", cols,
                 [[r.get(c, "") for c in cols] for r in rows])


def section_layers(quick: bool, targets: list[Target], compile: bool = True,
                   threads: int | str = 1) -> Table | None:
    """BatchNorm, LayerNorm, Embedding, GELU and ResNet-step rows of ``benchmarks/layers.py``."""
    try:
        from . import layers
    except ImportError:
        return None
    rows = layers.rows(quick, compile, threads if isinstance(threads, int) else 1)
    targets.extend(layers.targets(rows))
    cols = list(dict.fromkeys(k for r in rows for k in r if k not in ("target", "ok")))
    return Table("Normalization, Embedding, GELU and the small ResNet, forward + backward "
                 "(benchmarks/layers.py)", cols, [[r.get(c, "") for c in cols] for r in rows])


def section_bp4(quick: bool) -> Table | None:
    """BP4's two written-out forms at the ResNet's convolutions (benchmarks/bp4_forms.py);
    the ResNet step with each form in the note."""
    try:
        from . import bp4_forms
    except ImportError:
        return None
    batch = 32 if quick else 128
    rows = bp4_forms.rows("cpu", batch, 5 if quick else 9)
    convs, steps = [r for r in rows if "bp4" not in r], [r for r in rows if "bp4" in r]
    cols = list(convs[0])
    note = ("ResNet train step (batch 64), bptorch/native with BP4 as "
            + ", ".join(f"{r['bp4']}: {fmt(r['ratio'])} ({fmt(r['bptorch_ms'])} ms against "
                        f"{fmt(r['native_ms'])} ms)" for r in steps)
            + ". The default: the unfolded form for 1×1 kernels, the correlation otherwise.")
    return Table(f"BP4 of each ResNet convolution, correlation vs unfolded vs ATen, batch "
                 f"{batch}, 1 thread (benchmarks/bp4_forms.py)", cols,
                 [[r[c] for c in cols] for r in convs], note=note)


# -- report ---------------------------------------------------------------------------
def machine() -> str:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    return (f"- CPU: {cpu}, {torch.get_num_threads()} torch threads\n"
            f"- GPU: {gpu}\n"
            f"- torch {torch.__version__}, numpy {np.__version__}, "
            f"Python {platform.python_version()}, bptorch {bptorch.__version__}\n"
            f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats, smaller subset")
    ap.add_argument("--out", default="benchmarks/RESULTS.md", type=cli.output_path(".md"),
                    help="markdown file to write")
    ap.add_argument("--seed", type=cli.non_negative_int, default=0)
    ap.add_argument("--no-conv", action="store_true", help="skip benchmarks/conv.py's rows")
    ap.add_argument("--threads", type=cli.threads, default="auto",
                    help="torch intra-op threads for every row, or auto (default): "
                         "bptorch.threads' choice for each row's step (1 at batch 10)")
    ap.add_argument("--no-compile", action="store_true",
                    help="skip section (g) and the compiled epochs (compiling takes minutes)")
    return ap


def main(argv: list[str] | None = None) -> str:
    args = build_parser().parse_args(argv)
    if args.threads != "auto":  # sections below pass "auto" per row otherwise
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    t0 = time.perf_counter()
    targets: list[Target] = []
    tables: list[Table] = []
    for make in (lambda: section_steps(args.quick, "cpu", targets, args.threads),
                 lambda: section_epochs(args.quick, targets, args.threads,
                                        not args.no_compile),
                 lambda: section_numpy(args.quick),
                 lambda: section_limit(args.quick, "cpu", targets),
                 lambda: section_memory(targets),
                 lambda: None if args.no_compile else section_compile(args.quick, targets,
                                                                       args.threads)):
        t1 = time.perf_counter()
        table = make()
        if table is None:
            continue
        tables.append(table)
        print(table.markdown(), flush=True)
        print(f"[{time.perf_counter() - t1:.1f} s]", file=sys.stderr)
    t1 = time.perf_counter()
    for tab in section_cuda(args.quick) + [None if args.no_conv else section_conv(args.quick),
                                           section_sequence(args.quick, targets,
                                                            not args.no_compile, args.threads),
                                           section_layers(args.quick, targets,
                                                          not args.no_compile, args.threads),
                                           section_bp4(args.quick)]:
        if tab is not None:
            tables.append(tab)
            print(tab.markdown(), flush=True)
    print(f"[{time.perf_counter() - t1:.1f} s]", file=sys.stderr)
    tt = Table("Targets", ["target", "limit", "measured", ""], [t.row() for t in targets])
    flags = [a for a in (argv if argv is not None else sys.argv[1:])
             if not a.endswith(".md") and a != "--out"]
    cmd = " ".join(["python -m benchmarks.run", *flags])
    header = (f"# bptorch benchmarks{' (quick)' if args.quick else ''}\n\n"
              f"`{cmd}`, "
              f"{time.perf_counter() - t0:.0f} s.\n\n{machine()}\n")
    md = "\n".join([header, tt.markdown()] + [t.markdown() for t in tables])
    print(tt.markdown())
    md += _kept_sections(args.out)
    with open(args.out, "w") as f:
        f.write(md)
    print(f"wrote {args.out}", file=sys.stderr)
    return md


def _kept_sections(path: str) -> str:
    """The sections other scripts keep in ``path`` between their own markers
    (``<!-- benchmarks.NAME: begin -->`` … ``end -->``, e.g. benchmarks.extensions): a
    rerun of this suite leaves them in place."""
    import re

    try:
        text = open(path).read()
    except OSError:
        return ""
    blocks = re.finditer(r"<!-- (benchmarks\.\w+): begin -->.*?<!-- \1: end -->", text, re.S)
    return "".join("\n" + b.group(0) + "\n" for b in blocks)


if __name__ == "__main__":
    main()
