"""Plot saturation and speed of learning per layer from ``experiments.mnist --diagnostics`` runs.

    python -m experiments.mnist --preset ch1 --epochs 10 --seed 1 --diagnostics \\
        --json results/saturation/mnist_ch1_diag.json
    python -m experiments.mnist --preset ch3 --epochs 10 --seed 1 --diagnostics \\
        --json results/saturation/mnist_ch3_diag.json
    python -m experiments.plot_diagnostics results/saturation/mnist_ch1_diag.json \\
        results/saturation/mnist_ch3_diag.json --plot docs/img/saturation_ch1_vs_ch3.png

Each JSON's ``history.diagnostics`` holds, per epoch, ``bptorch.diagnostics.measure`` of
the net on a probe batch: per layer the saturated fraction (σ'(z) < 1% of its maximum)
and the speed ‖∂C/∂b^l‖. One colour per run, one line style per layer.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Sequence

FIELDS = {"saturated_fraction": (r"saturated fraction: $\sigma'(z) < 1\%$ of max", "linear"),
          "speed": (r"speed $\|\partial C/\partial b^l\|$", "log"),
          "mean_abs_delta": (r"mean $|\delta^l|$", "log"),
          "weight_grad_norm": (r"$\|\partial C/\partial W^l\|$", "log")}
STYLES = ["-", "--", ":", "-."]


def run_label(results: dict) -> str:
    c = results["config"]
    name = c.get("preset") or f"{c.get('cost')}, {c.get('init')} init"
    return f"{name} (η={c.get('eta'):g}, seed {c.get('seed')})"


def plot(runs: list[dict], path: str | Path, fields: Sequence[str] = ("saturated_fraction",
                                                                    "speed"),
         labels: Sequence[str] | None = None) -> None:
    """One panel per field; x is the epoch after which the probe batch was measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(fields), figsize=(4.6 * len(fields), 3.4), squeeze=False)
    for i, run in enumerate(runs):
        diag = run["history"]["diagnostics"]
        label = labels[i] if labels else run_label(run)
        epochs = range(1, len(diag) + 1)
        for l, layer in enumerate(diag[0]):
            for ax, field in zip(axes[0], fields):
                ax.plot(epochs, [d[layer][field] for d in diag], color=f"C{i}",
                        ls=STYLES[l % len(STYLES)], marker=".", ms=3,
                        label=f"{label}: {layer}")
    for ax, field in zip(axes[0], fields):
        title, scale = FIELDS[field]
        ax.set(xlabel="epoch", title=title, yscale=scale)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    from bptorch import cli  # here: plotting alone needs neither bptorch nor torch

    p = argparse.ArgumentParser(prog="python -m experiments.plot_diagnostics",
                                description=__doc__.splitlines()[0])
    p.add_argument("json", nargs="+", type=cli.json_file,
                   help="experiments.mnist --diagnostics --json outputs")
    p.add_argument("--plot", metavar="PATH", required=True, type=cli.plot_path,
                   help="the figure to write (.png, .pdf, .svg, ...)")
    p.add_argument("--fields", nargs="+", choices=list(FIELDS),
                   default=["saturated_fraction", "speed"])
    p.add_argument("--labels", nargs="+", help="one legend label per JSON")
    return p


def main(argv: Sequence[str] | None = None) -> list[dict]:
    p = build_parser()
    args = p.parse_args(argv)
    runs = [json.loads(Path(f).read_text()) for f in args.json]
    for f, run in zip(args.json, runs):
        if "diagnostics" not in run.get("history", {}):
            p.error(f"{f} has no history.diagnostics: run experiments.mnist with --diagnostics")
    if args.labels and len(args.labels) != len(runs):
        p.error("--labels needs one label per JSON")
    Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
    plot(runs, args.plot, args.fields, args.labels)
    for f, run in zip(args.json, runs):
        last = run["history"]["diagnostics"][-1]
        print(f"{run_label(run)}: after epoch {len(run['history']['diagnostics'])}: "
              + "; ".join(f"{k} saturated {v['saturated_fraction']:.3f} speed {v['speed']:.3g}"
                          for k, v in last.items()))
    return runs


if __name__ == "__main__":
    main()
