"""Chapter 3's single neuron: a saturated sigmoid learns slowly under the quadratic cost.

    python -m experiments.saturation --json results/saturation/saturation.json \\
        --plot docs/img/saturation_neuron.png

One sigmoid neuron, input x = 1, target y = 0, trained by gradient descent for 300
epochs (one step each). The book's runs (chapter 3, "Learning with the cross-entropy
cost function"):

* quadratic cost, η = 0.15, from (w, b) = (0.6, 0.9): a = 0.82 at first, learns at once;
* quadratic cost, η = 0.15, from (2.0, 2.0): a = 0.98 sits on a plateau for ~150 epochs,
  since δ = (a − y) σ'(z) and σ'(z) is small there (BP1);
* cross-entropy, same start, η = 0.15 and the book's η = 0.005: δ = a − y, σ' cancels,
  and there is no plateau.

The neuron is ``bptorch.nn.Dense(1, 1, "sigmoid")`` and the costs bptorch's cost
modules, trained with ``loss.backward()`` and ``torch.optim.SGD``. Each run also
records ``bptorch.diagnostics``' speed |∂C/∂b| per epoch.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Sequence

import torch

import bptorch
from bptorch import cli
from bptorch.diagnostics import record
from bptorch.threads import keep_threads, mlp_step_flops, set_threads
from experiments.mnist import markers, save_results

# (cost, w0, b0, eta): the book's four runs.
RUNS = [
    ("quadratic", 0.6, 0.9, 0.15),
    ("quadratic", 2.0, 2.0, 0.15),
    ("cross_entropy", 2.0, 2.0, 0.15),
    ("cross_entropy", 2.0, 2.0, 0.005),
]
DEFAULTS = dict(epochs=300, x=1.0, y=0.0, seed=0, dtype="float64", threads="auto")


def train_neuron(cost: str, w0: float, b0: float, eta: float, epochs: int = 300,
                 x: float = 1.0, y: float = 0.0, dtype=torch.float64) -> dict:
    """Train one sigmoid neuron from (w0, b0); a, C and |∂C/∂b| at epochs 0..epochs."""
    neuron = bptorch.nn.Dense(1, 1, "sigmoid", dtype=dtype)
    with torch.no_grad():
        neuron.weight.fill_(w0)
        neuron.bias.fill_(b0)
    C = {"quadratic": bptorch.nn.QuadraticCost(),
         "cross_entropy": bptorch.nn.CrossEntropyCost()}[cost]
    optimizer = torch.optim.SGD(neuron.parameters(), lr=eta)
    xs = torch.full((1, 1), x, dtype=dtype)
    ys = torch.full((1, 1), y, dtype=dtype)
    output, cost_value = [], []
    with record(neuron) as rec:
        for epoch in range(epochs + 1):
            a = neuron(xs)
            loss = C(a, ys)
            output.append(a.item())
            cost_value.append(loss.item())
            if epoch == epochs:
                break
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    speed = rec.history().get("layer0", {}).get("speed", [])
    return {"cost": cost, "w0": w0, "b0": b0, "eta": eta, "output": output,
            "cost_value": cost_value, "speed": speed}


def plot(results: dict, path: str | Path) -> None:
    """Output a, cost C and speed |∂C/∂b| against epoch, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(10, 3.2))
    for i, run in enumerate(results["runs"]):
        label = (f"{run['cost'].replace('_', '-')}, (w,b)=({run['w0']:g},{run['b0']:g}), "
                 f"η={run['eta']:g}")
        ls = "-" if run["cost"] == "quadratic" else "--"
        dots = markers(len(run["output"]))
        axes[0].plot(run["output"], color=f"C{i}", ls=ls, label=label, **dots)
        axes[1].plot(run["cost_value"], color=f"C{i}", ls=ls, **dots)
        axes[2].plot(run["speed"], color=f"C{i}", ls=ls, **dots)
    axes[0].set(xlabel="epoch", ylabel="output a", title="Output (target 0)", ylim=(0, 1))
    axes[1].set(xlabel="epoch", ylabel="C", title="Cost")
    axes[2].set(xlabel="epoch", ylabel="|∂C/∂b|", title="Speed of learning", yscale="log")
    axes[0].legend(fontsize=6)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=cli.non_negative_int, default=DEFAULTS["epochs"])
    p.add_argument("--seed", type=cli.non_negative_int, default=DEFAULTS["seed"],
                   help="unused by the deterministic runs; kept for the config")
    p.add_argument("--json", metavar="PATH", type=cli.json_path, help="write config and runs here")
    p.add_argument("--plot", metavar="PATH", type=cli.plot_path,
                   help="draw output, cost and speed here (.png, .pdf, .svg, ...)")
    p.add_argument("--from-json", metavar="PATH", type=cli.json_file,
                   help="plot a saved JSON instead of running")
    p.add_argument("--threads", type=cli.threads, default=DEFAULTS["threads"],
                   help="torch intra-op threads, or auto: bptorch.threads.choose_threads "
                        "(1 for one neuron) (default auto)")
    return p


def main(argv: Sequence[str] | None = None) -> dict:
    """Train the four neurons (or replot); torch's thread count is restored after."""
    with keep_threads():
        return _main(argv)


def _main(argv: Sequence[str] | None) -> dict:
    args = build_parser().parse_args(argv)
    if args.from_json:
        results = json.loads(Path(args.from_json).read_text())
    else:
        torch.manual_seed(args.seed)
        set_threads(args.threads, flops=mlp_step_flops([1, 1], 1), rows=1)
        config = dict(DEFAULTS, epochs=args.epochs, seed=args.seed, threads=args.threads,
                      torch_threads=torch.get_num_threads(),
                      runs=[dict(zip(("cost", "w0", "b0", "eta"), r)) for r in RUNS],
                      bptorch_version=bptorch.__version__, torch_version=torch.__version__)
        runs = [train_neuron(*r, epochs=args.epochs) for r in RUNS]
        results = {"config": config, "runs": runs}
        for r in runs:
            marks = [e for e in (0, 50, 150, 300) if e < len(r["output"])]
            print(f"{r['cost']:>13} (w,b)=({r['w0']:g},{r['b0']:g}) η={r['eta']:<5g} "
                  + "  ".join(f"a[{e}]={r['output'][e]:.3f} C[{e}]={r['cost_value'][e]:.4f}"
                              for e in marks))
    # a replot (--from-json) writes no JSON
    save_results(results, None if args.from_json else args.json, args.plot, plot)
    return results


if __name__ == "__main__":
    main()
