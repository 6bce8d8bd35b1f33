"""Per-example quantities and the private step against a plain step, beside Opacus and BackPACK.

    python -m benchmarks.extensions                         # all nets, writes the JSON
    python -m benchmarks.extensions --nets mlp --repeats 5  # one net
    python -m benchmarks.extensions --from-json benchmarks/extensions.json --markdown benchmarks/RESULTS.md
    python -m benchmarks.extensions --profile lenet5/private   # where a row's time goes

Issue 22, item 7. Four nets, each built once from torch.nn (the same weights serve
bptorch, through ``from_torch_nn``, Opacus and BackPACK):

* ``mlp``: [784, 100, 10], ReLU, batch 128;
* ``lenet5``: conv 6@5×5 (padding 2), ReLU, pool, conv 16@5×5, ReLU, pool, FC 120, 84, 10,
  batch 64 of 28×28;
* ``lstm``: LSTM 28 → 128 over T = 28 steps (a row of an image a step), the last step's h
  to FC 10, batch 64;
* ``transformer``: FC 28 → 64, one ``TransformerEncoderLayer`` (4 heads, feed-forward 128,
  no dropout), the mean over T = 28, FC 10, batch 64.

A step is zero_grad, forward, mean cross-entropy, backward, SGD step. Each quantity's step
runs the same with the quantity asked for; the ratio is its time over a plain bptorch
step's, the median of paired per-round ratios, the steps interleaved in one process on
one thread (``benchmarks.timing.interleaved``), so load drift cancels; the machine's load
average is recorded before and after. The quantities are a table, :data:`QUANTITIES`
(name → how to run it, the issue's target, the peers' own step for it): a name
``bptorch.extensions.collect`` does not know yet is skipped, so a row added before its
code lands costs nothing. The private step is ``bptorch.privacy`` (clip to C = 1, noise
σ = 1, one backward).

Peers, each its own absolute step time for the same quantity where it supports the net:
Opacus 1.6's ``GradSampleModule`` (hooks; per-sample gradients then their norms) for
``batch_l2``, its ``PrivacyEngine`` (hooks) and ghost clipping (two backward passes) for the
private step, with ``DPLSTM`` for the LSTM and ``DPMultiheadAttention`` (ModuleValidator.fix)
for the transformer; BackPACK 1.7's extensions (``BatchL2Grad``, ``SumGradSquared``,
``Variance``) where its hooks cover every layer. A peer that refuses a net is recorded
with its error.

Peak memory: torch.profiler with ``profile_memory=True`` over one step (after warm-up),
the peak of the running sum of the CPU allocator's allocations and frees in time order:
the bytes a step holds at once above what was held before it (parameters, inputs and
optimizer state excluded). tracemalloc does not see torch's allocator, hence the profiler.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from bptorch import cli

Step = Callable[[], object]
BEGIN, END = "<!-- benchmarks.extensions: begin -->", "<!-- benchmarks.extensions: end -->"


# -- the nets ------------------------------------------------------------------------------
class LastStep(nn.Module):
    """The last step's output of a batch-first recurrent layer's (output, state)."""

    def forward(self, out: tuple) -> Tensor:
        return out[0][:, -1]


class MeanOverTime(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.mean(1)


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(784, 100), nn.ReLU(), nn.Linear(100, 10))


def lenet5() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))


def lstm(recurrent: type = nn.LSTM) -> nn.Module:
    return nn.Sequential(recurrent(28, 128, batch_first=True), LastStep(), nn.Linear(128, 10))


def transformer() -> nn.Module:
    layer = nn.TransformerEncoderLayer(64, 4, dim_feedforward=128, dropout=0.0,
                                       batch_first=True)
    return nn.Sequential(nn.Linear(28, 64), layer, MeanOverTime(), nn.Linear(64, 10))


# name -> (build, input shape)
NETS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "mlp": (mlp, (128, 784)),
    "lenet5": (lenet5, (64, 1, 28, 28)),
    "lstm": (lstm, (64, 28, 28)),
    "transformer": (transformer, (64, 28, 28)),
}


# -- the steps -----------------------------------------------------------------------------
def sgd_step(model: nn.Module, x: Tensor, y: Tensor, optimizer: Any,
             backward: Callable[[Tensor], None] | None = None) -> Step:
    """zero_grad, forward, mean cross-entropy, backward (or ``backward(loss)``), step."""
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward() if backward is None else backward(loss)
        optimizer.step()
    return step


def bptorch_collect(name: str) -> Callable:
    """A step that collects ``name`` with ``bptorch.extensions.collect``."""
    def make(twin: nn.Module, x: Tensor, y: Tensor) -> Step:
        from bptorch.extensions import collect

        optimizer = torch.optim.SGD(twin.parameters(), lr=1e-3)
        loss_fn = nn.CrossEntropyLoss()

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            with collect(twin, name, loss_fn=loss_fn):
                loss_fn(twin(x), y).backward()
            optimizer.step()
        return step
    return make


def _loader(n: int) -> Any:
    from torch.utils.data import DataLoader, TensorDataset

    # q = 1/10: the expected batch (n) only scales the noise
    return DataLoader(TensorDataset(torch.zeros(10 * n, 1)), batch_size=n)


def bptorch_private(twin: nn.Module, x: Tensor, y: Tensor) -> Step:
    """bptorch.privacy's step: clip (C = 1) in the one backward, noise σ = 1, SGD."""
    from bptorch.privacy import PrivacyEngine

    module, optimizer, _ = PrivacyEngine().make_private(
        module=twin, optimizer=torch.optim.SGD(twin.parameters(), lr=1e-3),
        data_loader=_loader(x.shape[0]), noise_multiplier=1.0, max_grad_norm=1.0,
        poisson_sampling=False)
    return sgd_step(module, x, y, optimizer)


def _opacus_model(net: str, model: nn.Module) -> nn.Module:
    """Opacus's own layers where it needs them: DPLSTM, DPMultiheadAttention."""
    from opacus.validators import ModuleValidator

    if net == "lstm":
        from opacus.layers import DPLSTM

        dp = lstm(DPLSTM)
        dp[0].load_state_dict(model[0].state_dict())
        dp[2].load_state_dict(model[2].state_dict())
        return dp
    return ModuleValidator.fix(model)


def opacus_batch_l2(net: str, model: nn.Module, x: Tensor, y: Tensor) -> Step:
    """Opacus's GradSampleModule (hooks): per-sample gradients, then their squared norms."""
    from opacus import GradSampleModule

    gsm = GradSampleModule(_opacus_model(net, model))
    optimizer = torch.optim.SGD(gsm.parameters(), lr=1e-3)
    params = [p for p in gsm.parameters() if p.requires_grad]

    def backward(loss: Tensor) -> None:
        loss.backward()
        norms2 = sum(p.grad_sample.flatten(1).square().sum(1) for p in params)
        del norms2
        for p in params:
            p.grad_sample = None
    return sgd_step(gsm, x, y, optimizer, backward)


def opacus_private(mode: str) -> Callable:
    """Opacus's private step: ``hooks`` (per-sample gradients) or ``ghost`` (ghost
    clipping, two backward passes)."""
    def make(net: str, model: nn.Module, x: Tensor, y: Tensor) -> Step:
        from opacus import PrivacyEngine

        dp = _opacus_model(net, model)
        kwargs: dict[str, Any] = dict(
            module=dp, optimizer=torch.optim.SGD(dp.parameters(), lr=1e-3),
            data_loader=_loader(x.shape[0]), noise_multiplier=1.0, max_grad_norm=1.0,
            poisson_sampling=False, grad_sample_mode=mode)
        if mode == "ghost":
            module, optimizer, criterion, _ = PrivacyEngine().make_private(
                criterion=nn.CrossEntropyLoss(), **kwargs)

            def step() -> None:
                optimizer.zero_grad(set_to_none=True)
                criterion(module(x), y).backward()
                optimizer.step()
            return step
        module, optimizer, _ = PrivacyEngine().make_private(**kwargs)
        return sgd_step(module, x, y, optimizer)
    return make


BACKPACK_NAMES = {"BatchL2Grad": "batch_l2", "SumGradSquared": "sum_grad_squared",
                  "Variance": "variance"}


def backpack_quantity(extension: str) -> Callable:
    """BackPACK's step with one of its first-order extensions."""
    def make(net: str, model: nn.Module, x: Tensor, y: Tensor) -> Step:
        import backpack
        import backpack.extensions as ext

        extended = backpack.extend(model, use_converter=net == "lstm")
        optimizer = torch.optim.SGD(extended.parameters(), lr=1e-3)
        make_ext = getattr(ext, extension)

        def backward(loss: Tensor) -> None:
            with backpack.backpack(make_ext()):
                loss.backward()
        step = sgd_step(extended, x, y, optimizer, backward)
        step()  # BackPACK raises on some layers it lacks when the backward reaches them,
        # and passes others by silently: then some parameters lack the quantity
        attribute = BACKPACK_NAMES[extension]
        missing = [n for n, p in extended.named_parameters() if not hasattr(p, attribute)]
        if missing:
            raise RuntimeError(f"BackPACK left {attribute} off {len(missing)} parameters "
                               f"({', '.join(missing[:3])}, ...): a layer it does not cover")
        return step
    return make


# name -> what the bptorch step is, the target (× a plain step; None: none set),
# whether peak memory is measured, and the peers' own steps for it
QUANTITIES: dict[str, dict[str, Any]] = {
    "batch_l2": dict(bptorch=bptorch_collect("batch_l2"), target=1.10, memory=True,
                     peers={"opacus": opacus_batch_l2,
                            "backpack": backpack_quantity("BatchL2Grad")}),
    "private": dict(bptorch=bptorch_private, target=1.25, memory=True,
                    peers={"opacus": opacus_private("hooks"),
                           "opacus_ghost": opacus_private("ghost")}),
    "sum_grad_squared": dict(bptorch=bptorch_collect("sum_grad_squared"), target=1.3,
                             memory=False,
                             peers={"backpack": backpack_quantity("SumGradSquared")}),
    "variance": dict(bptorch=bptorch_collect("variance"), target=1.3, memory=False,
                     peers={"backpack": backpack_quantity("Variance")}),
}


def known(name: str) -> bool:
    """Whether ``bptorch.extensions.collect`` computes ``name`` (the private step always)."""
    if name == "private":
        return True
    from bptorch import extensions

    try:
        extensions._check_names((name,), nn.CrossEntropyLoss())
    except (NotImplementedError, ValueError):
        return False
    return True


# -- measuring -------------------------------------------------------------------------------
def peak_bytes(step: Step, warmup: int = 2) -> int:
    """The most bytes one ``step()`` holds at once above what was held before it: the peak
    of the running sum of torch.profiler's allocation events (the allocator's allocations
    +, frees −, in time order)."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    for _ in range(warmup):
        step()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    allocations, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        event = stack.pop()
        if event.tag == _EventType.Allocation:
            allocations.append((event.start_time_ns, event.extra_fields.alloc_size))
        stack.extend(event.children)
    held = peak = 0
    for _, size in sorted(allocations):
        held += size
        peak = max(peak, held)
    return peak


def load() -> dict:
    one, five, fifteen = os.getloadavg()
    return {"loadavg_1_5_15": [one, five, fifteen], "cpus": os.cpu_count(),
            "at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def bench_net(net: str, names: list[str], repeats: int, peers: bool) -> dict:
    from benchmarks.timing import interleaved, ratio
    from bptorch.convert import from_torch_nn

    build, shape = NETS[net]
    torch.manual_seed(0)
    model = build()
    x = torch.randn(shape)
    y = torch.randint(0, 10, (shape[0],))

    def twin() -> nn.Module:
        return from_torch_nn(_copy(model), strict=False)

    plain_twin = twin()
    fns: dict[str, Step] = {"plain": sgd_step(plain_twin, x, y,
                                              torch.optim.SGD(plain_twin.parameters(), lr=1e-3))}
    errors: dict[str, str] = {}
    for name in names:
        fns[name] = QUANTITIES[name]["bptorch"](twin(), x, y)
        if not peers:
            continue
        for peer, make in QUANTITIES[name]["peers"].items():
            key = f"{peer}:{name}"
            try:
                fns[key] = make(net, _copy(model), x, y)
            except Exception as e:  # the peer does not support this net
                errors[key] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
    before = load()
    medians, rounds = interleaved(fns, repeats)
    after = load()
    row: dict[str, Any] = {"net": net, "batch": shape[0], "input": list(shape),
                           "plain_ms": 1e3 * medians["plain"], "load_before": before,
                           "load_after": after, "repeats": repeats, "quantities": {}}
    plain_peak = peak_bytes(fns["plain"])
    row["plain_peak_bytes"] = plain_peak
    for name in names:
        q: dict[str, Any] = {"ms": 1e3 * medians[name], "ratio": ratio(rounds, name, "plain"),
                             "target": QUANTITIES[name]["target"], "peers": {}}
        if QUANTITIES[name]["memory"]:
            q["peak_bytes"] = peak_bytes(fns[name])
            q["peak_ratio"] = q["peak_bytes"] / plain_peak
        for peer in QUANTITIES[name]["peers"]:
            key = f"{peer}:{name}"
            if key in fns:
                q["peers"][peer] = {"ms": 1e3 * medians[key],
                                    "ratio_to_bptorch": ratio(rounds, key, name)}
            elif key in errors:
                q["peers"][peer] = {"error": errors[key]}
        row["quantities"][name] = q
    return row


def _copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model)


# -- the table ---------------------------------------------------------------------------------
def markdown(result: dict) -> str:
    """RESULTS.md's section: one row per (net, quantity)."""
    m = result["machine"]
    lines = [BEGIN, "### Per-example quantities and the private step, beside Opacus and "
             "BackPACK, cpu, 1 thread (benchmarks/extensions.py)", "",
             f"`{result['command']}`; {m['cpu']}, torch {m['torch']}, opacus {m['opacus']}, "
             f"backpack {m['backpack']}; {m['date']}. Steps interleaved in one process; ratio "
             "= median of paired per-round ratios to a plain bptorch step (zero_grad, forward, "
             "cross-entropy, backward, SGD). Peak: torch.profiler's CPU memory events over one "
             "step, the peak bytes held above the start, against a plain step's. Peers: their "
             "own absolute step time for the same quantity (Opacus: hooks, and ghost clipping "
             "for the private step; — where the peer refuses the net). Load average (1 min) "
             "before → after each net's timing, on " + f"{m['cpus']} CPUs: a load above the "
             "CPU count means other processes shared the cores, and the ratios then vary "
             "from run to run by tenths (the paired ratio and the ratio of the two medians "
             "can disagree); read them as rough.", "",
             "| net | batch | plain ms | quantity | bptorch ms | × plain | target | "
             "peak × plain | Opacus ms | Opacus ghost ms | BackPACK ms | load |",
             "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for row in result["rows"]:
        for name, q in row["quantities"].items():
            ok = "" if q["target"] is None else (" ✔" if q["ratio"] <= q["target"] else " ✗")
            peak = "" if "peak_ratio" not in q else f"{q['peak_ratio']:.2f}" + (
                " ✔" if q["peak_ratio"] <= 1.1 else " ✗")

            def peer(name: str) -> str:
                p = q["peers"].get(name)
                if p is None:
                    return ""
                return "—" if "error" in p else f"{p['ms']:.1f}"
            target = "" if q["target"] is None else f"≤ {q['target']:g}"
            lb, la = row["load_before"]["loadavg_1_5_15"][0], row["load_after"]["loadavg_1_5_15"][0]
            lines.append(f"| {row['net']} | {row['batch']} | {row['plain_ms']:.1f} | {name} | "
                         f"{q['ms']:.1f} | {q['ratio']:.2f}{ok} | {target} | {peak} | "
                         f"{peer('opacus')} | {peer('opacus_ghost')} | {peer('backpack')} | "
                         f"{lb:.1f} → {la:.1f} |")
    refused = [f"{row['net']} {name} {peer}: {p['error']}" for row in result["rows"]
               for name, q in row["quantities"].items() for peer, p in q["peers"].items()
               if "error" in p]
    if refused:
        lines += ["", "Peers that refused a net: " + "; ".join(refused) + "."]
    lines.append(END)
    return "\n".join(lines) + "\n"


def write_section(md: str, path: Path) -> None:
    """Put the section into ``path``, replacing the one there (between the markers)."""
    text = path.read_text() if path.exists() else ""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + md.rstrip("\n") + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + md
    path.write_text(text)


def machine() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    def v(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "absent"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cpus": os.cpu_count(), "torch": torch.__version__,
            "opacus": v("opacus"), "backpack": v("backpack-for-pytorch"),
            "python": platform.python_version(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.extensions",
                                description=__doc__.splitlines()[0],
                                formatter_class=cli.HelpFormatter)
    p.add_argument("--nets", nargs="+", choices=list(NETS), help="default all four")
    p.add_argument("--quantities", nargs="+", choices=list(QUANTITIES),
                   help="default every one collect knows")
    p.add_argument("--repeats", type=cli.positive_int, default=9,
                   help="interleaved rounds (default 9)")
    p.add_argument("--no-peers", action="store_true", help="bptorch only")
    p.add_argument("--threads", type=cli.thread_count, default=1,
                   help="torch intra-op threads (default 1)")
    p.add_argument("--json", metavar="PATH", type=cli.json_path,
                   default="benchmarks/extensions.json", help="write the results here")
    p.add_argument("--from-json", metavar="PATH", nargs="+", type=cli.json_file,
                   help="saved results: write their section (with --markdown) only")
    p.add_argument("--markdown", metavar="PATH", type=cli.output_path(".md"),
                   help="put the table into this file's section (benchmarks/RESULTS.md)")
    p.add_argument("--profile", metavar="NET/QUANTITY",
                   choices=[f"{n}/{q}" for n in NETS for q in QUANTITIES],
                   help="torch.profiler's top ops of NET's plain step and QUANTITY's step")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.from_json:
        result = json.loads(Path(args.from_json[0]).read_text())
        for extra in args.from_json[1:]:  # rows of other runs (other nets) joined
            result["rows"] += json.loads(Path(extra).read_text())["rows"]
        if args.markdown:
            write_section(markdown(result), Path(args.markdown))
        print(markdown(result))
        return result
    if args.profile:
        return profile(*args.profile.split("/"))
    names = [n for n in (args.quantities or QUANTITIES) if known(n)]
    skipped = [n for n in (args.quantities or QUANTITIES) if n not in names]
    if skipped:
        print(f"skipped (bptorch.extensions.collect does not know them yet): "
              f"{', '.join(skipped)}", file=sys.stderr)
    rows = []
    for net in args.nets or NETS:
        row = bench_net(net, names, args.repeats, not args.no_peers)
        rows.append(row)
        print(json.dumps(row), flush=True)
    command = "python -m benchmarks.extensions " + " ".join(
        argv if argv is not None else sys.argv[1:])
    result = {"command": command.strip(), "machine": machine(), "threads": args.threads,
              "rows": rows, "skipped": skipped}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    if args.markdown:
        write_section(markdown(result), Path(args.markdown))
    print(markdown(result))
    return result


def profile(net: str, name: str) -> dict:
    """Where the time goes: torch.profiler's top ops of the plain step and ``name``'s."""
    from benchmarks.timing import profiler_table
    from bptorch.convert import from_torch_nn

    build, shape = NETS[net]
    torch.manual_seed(0)
    model = build()
    x, y = torch.randn(shape), torch.randint(0, 10, (shape[0],))
    plain = from_torch_nn(_copy(model), strict=False)
    steps = {"plain": sgd_step(plain, x, y, torch.optim.SGD(plain.parameters(), lr=1e-3)),
             name: QUANTITIES[name]["bptorch"](from_torch_nn(_copy(model), strict=False), x, y)}
    for label, step in steps.items():
        print(profiler_table(step, 20, f"{net}, {label} step, 20 calls", row_limit=14))
    return {}


if __name__ == "__main__":
    main()
