"""Tabulate experiments.mnist JSON results as markdown, next to the book's figures.

    python -m experiments.summarize results/mnist/*.json

One row per (preset, engine): test accuracy at each run's best epoch and at its last
epoch (median and best over seeds), validation accuracy after the last epoch (median),
the median training seconds per epoch, the number of seeds, and the book's figure:
chapter 1's are peak test accuracy, chapter 3's 97.92% is final validation accuracy.
"""
from __future__ import annotations

import argparse
import glob
import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Sequence

from bptorch.cli import OLD_ENGINE_NAMES
from experiments.mnist import BOOK_ACCURACY, PRESETS

HEADER = ("| preset | engine | seeds | best epoch: median | best epoch: best | "
          "last epoch: median | last epoch: best | validation, last epoch: median | "
          "s/epoch (median) | book |\n"
          "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.2f}%"


def summarize(runs: Sequence[dict]) -> str:
    """The markdown table for these runs (JSON dicts written by ``experiments.mnist``)."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for run in runs:
        c = run["config"]
        name = c.get("preset") or "custom"
        if c.get("l1"):  # an L1 run is not its preset's (the book's ch3 uses L2 alone)
            name += f" + L1 λ₁ = {c['l1']:g}, λ = {c['lmbda']:g}"
        engine = OLD_ENGINE_NAMES.get(c["engine"], c["engine"])  # autograd: now bptorch
        groups[(name, engine)].append(run)
    order = {name: i for i, name in enumerate([*PRESETS, "custom"])}
    rows = [HEADER]
    for (preset, engine), group in sorted(
            groups.items(), key=lambda kv: (order.get(kv[0][0].split(" ")[0], 99), kv[0])):
        best = [max(r["history"]["test_accuracy"]) for r in group]
        last = [r["history"]["test_accuracy"][-1] for r in group]
        val = [r["history"]["validation_accuracy"][-1] for r in group]
        seconds = statistics.median(s for r in group for s in r["history"]["epoch_seconds"])
        seeds = sorted({r["config"]["seed"] for r in group})
        rows.append(f"| {preset} | {engine} | {len(seeds)} | {_pct(statistics.median(best))} | "
                    f"{_pct(max(best))} | {_pct(statistics.median(last))} | {_pct(max(last))} | "
                    f"{_pct(statistics.median(val))} | "
                    f"{seconds:.2f} | {_pct(BOOK_ACCURACY.get(preset))} |")
    return "\n".join(rows)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.summarize", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", type=json_files, help="JSON files or glob patterns")
    return p


def json_files(pattern: str) -> list[str]:
    """argparse type for ``paths``: the files a glob pattern (or a plain name) matches."""
    files = sorted(f for f in glob.glob(pattern) if Path(f).is_file())
    if not files:
        raise argparse.ArgumentTypeError(f"expected JSON files or a glob pattern matching "
                                         f"some, got {pattern!r} (no such file)")
    return files


json_files.bad_examples = ("/nonexistent/*.json", "missing.json")  # see bptorch.cli


def main(argv: Sequence[str] | None = None) -> str:
    args = build_parser().parse_args(argv)
    paths = sorted({f for files in args.paths for f in files})
    table = summarize([json.loads(Path(f).read_text()) for f in paths])
    print(table)
    return table


if __name__ == "__main__":
    main()
