"""Checked argument types for the scripts in ``experiments/`` and ``benchmarks/``.

Plumbing for command lines, imported only by scripts: every flag with a numeric, path or
device meaning takes one of these as its argparse ``type=``, so a bad value ends in
argparse's usage error, exit status 2, before any work starts::

    $ python -m experiments.mnist --epochs -1
    usage: python -m experiments.mnist [-h] ...
    python -m experiments.mnist: error: argument --epochs: expected an integer >= 0, got '-1'

Each type raises ``argparse.ArgumentTypeError`` with the expected and the actual value;
argparse adds the flag's name. Checks that need two flags or the data (``--sizes``
against MNIST's 784 inputs) call ``parser.error`` in the script, naming the flag.

Each type carries ``bad_examples``: values it must refuse, which the tests feed to every
flag of every script (``tests/test_cli.py``). The module itself imports only the standard
library; ``device`` asks torch, and ``plot_path`` matplotlib, only when such a flag is given.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Callable

__all__ = ["positive_int", "non_negative_int", "positive_float", "non_negative_float",
           "finite_float", "probability", "threads", "thread_count", "device", "existing_file",
           "json_file", "folder", "output_path", "json_path", "plot_path", "alias",
           "choices_help", "HelpFormatter", "ENGINES", "OLD_ENGINE_NAMES", "add_engine",
           "add_results_flags", "add_resume", "replay"]

Type = Callable[[str], object]


def _checked(*bad: str) -> Callable[[Type], Type]:
    """Mark an argparse type as checked and record values it must refuse."""
    def mark(fn: Type) -> Type:
        fn.bad_examples = bad  # type: ignore[attr-defined]
        return fn
    return mark


def _error(expected: str, value: str) -> argparse.ArgumentTypeError:
    return argparse.ArgumentTypeError(f"expected {expected}, got {value!r}")


def _number(value: str, kind: type, expected: str) -> int | float:
    try:
        x = kind(value)
    except ValueError:
        raise _error(expected, value) from None
    if kind is float and not math.isfinite(x):
        raise _error(expected, value)
    return x


# -- numbers -----------------------------------------------------------------------------
@_checked("0", "-1", "x", "1.5")
def positive_int(value: str) -> int:
    """An integer >= 1: sizes, counts, mini-batch sizes, repeats."""
    n = _number(value, int, "an integer >= 1")
    if n < 1:
        raise _error("an integer >= 1", value)
    return n


@_checked("-1", "x", "1.5")
def non_negative_int(value: str) -> int:
    """An integer >= 0: epochs (0: evaluate only), seeds, shifts."""
    n = _number(value, int, "an integer >= 0")
    if n < 0:
        raise _error("an integer >= 0", value)
    return n


@_checked("0", "-0.5", "nan", "inf", "x")
def positive_float(value: str) -> float:
    """A finite number > 0: learning rates, decay factors, durations."""
    x = _number(value, float, "a number > 0")
    if not x > 0:
        raise _error("a number > 0", value)
    return x


@_checked("-0.5", "nan", "inf", "x")
def non_negative_float(value: str) -> float:
    """A finite number >= 0: regularisation strengths, weight decay."""
    x = _number(value, float, "a number >= 0")
    if x < 0:
        raise _error("a number >= 0", value)
    return x


@_checked("nan", "inf", "x")
def finite_float(value: str) -> float:
    """Any finite number (a bias at initialisation may be negative)."""
    return _number(value, float, "a finite number")


@_checked("-0.1", "1", "1.5", "nan", "x")
def probability(value: str) -> float:
    """A number in [0, 1): dropout p, momentum."""
    x = _number(value, float, "a number in [0, 1)")
    if not 0 <= x < 1:
        raise _error("a number in [0, 1)", value)
    return x


@_checked("0", "-1", "x")
def threads(value: str) -> int | str:
    """``--threads``: ``auto`` (bptorch.threads chooses from the work of one step) or a
    thread count >= 1 (the same as ``bptorch.threads.threads_arg``)."""
    from bptorch.threads import threads_arg

    return threads_arg(value)


@_checked("0", "-1", "x", "auto")
def thread_count(value: str) -> int:
    """``--threads`` where a script has no step to choose from: a thread count >= 1."""
    n = _number(value, int, "a thread count >= 1")
    if n < 1:
        raise _error("a thread count >= 1", value)
    return n


# -- devices -------------------------------------------------------------------------------
@_checked("gpu", "cuda:99", "")
def device(value: str) -> str:
    """A device that exists on this machine: ``cpu``, or ``cuda``/``cuda:N`` with a GPU,
    ``mps`` on Apple silicon. Returned as given, for ``torch.device``."""
    import torch

    here = ["cpu"]
    n_cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n_cuda:
        here += ["cuda", *(f"cuda:{i}" for i in range(n_cuda))]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        here.append("mps")
    expected = f"a device on this machine ({', '.join(here)})"
    try:
        dev = torch.device(value)
    except (RuntimeError, ValueError):
        raise _error(expected, value) from None
    ok = (dev.type == "cpu"
          or (dev.type == "cuda" and (dev.index or 0) < n_cuda)
          or (dev.type == "mps" and "mps" in here))
    if not ok:
        raise _error(expected, value)
    return value


# -- paths -----------------------------------------------------------------------------------
@_checked("/nonexistent/missing.pt", ".")
def existing_file(value: str) -> str:
    """A file that exists: ``--load``, ``--from-json``."""
    path = Path(value).expanduser()
    if not path.is_file():
        why = "a directory" if path.is_dir() else "no such file"
        raise argparse.ArgumentTypeError(f"expected an existing file, got {value!r} ({why})")
    return value


@_checked("/nonexistent/run.json", ".", __file__)
def json_file(value: str) -> str:
    """An existing file that holds JSON: ``--from-json``, saved results to replot."""
    import json

    existing_file(value)
    try:
        json.loads(Path(value).expanduser().read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise argparse.ArgumentTypeError(f"expected a JSON file, got {value!r} "
                                         f"({type(e).__name__}: {e})") from None
    return value


@_checked(__file__)
def folder(value: str) -> str:
    """A folder, created when missing (``--data-dir``): refused only if a file is there."""
    if Path(value).expanduser().is_file():
        raise argparse.ArgumentTypeError(f"expected a folder (created if missing), got "
                                         f"{value!r} (a file)")
    return value


def output_path(*suffixes: str) -> Type:
    """A path to write whose suffix is one of ``suffixes`` (missing folders are created)."""
    names = ", ".join(suffixes)

    @_checked("out.txt", "out")
    def check(value: str) -> str:
        if Path(value).suffix.lower() not in suffixes:
            raise _error(f"a file name ending in {names}", value)
        return value

    check.__name__ = check.__qualname__ = "output_path(" + names + ")"
    return check


json_path = output_path(".json")



@_checked("curves.txt", "curves")
def plot_path(value: str) -> str:
    """``--plot``: a file name ending in a format matplotlib's savefig writes (.png, .pdf,
    .svg, ...; matplotlib is imported here, only when the flag is given)."""
    from matplotlib.backend_bases import FigureCanvasBase

    formats = sorted(FigureCanvasBase.get_supported_filetypes())
    if Path(value).suffix.lower().lstrip(".") not in formats:
        raise _error("a file name ending in a format matplotlib writes ("
                     + ", ".join("." + f for f in formats) + ")", value)
    return value


# -- words -------------------------------------------------------------------------------------
def alias(old: dict[str, str]) -> Type:
    """A ``type=`` for a ``choices`` flag that maps old spellings to current names
    (``alias({"autograd": "bptorch"})``): argparse checks the choice after the mapping."""
    def name(value: str) -> str:
        return old.get(value, value)

    return name


def choices_help(options: dict[str, str], default: str | None = None,
                 old: dict[str, str] | None = None) -> str:
    """Help text listing each choice on its own line (with :class:`HelpFormatter`)."""
    lines = [f"{k}: {v}" for k, v in options.items()]
    if old:
        lines += [f"({', '.join(f'{a} is the old name of {b}' for a, b in old.items())})"]
    if default is not None:
        lines += [f"(default {default})"]
    return "\n".join(lines)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The description as written, and a flag's help wrapped line by line, so that
    :func:`choices_help` lists one choice per line."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        lines = []
        for part in text.splitlines():
            lines += super()._split_lines(part, width) or [""]
        return lines



# -- the engines: one name, one meaning, in every script -------------------------------------
ENGINES = {
    "explicit": "Network.update_mini_batch: BP1-BP4 and the SGD step written out, no autograd",
    "bptorch": "bptorch layers (each backward written out) under loss.backward() and "
               "torch.optim",
    "native": "the same net in plain torch.nn with torch's own backward, from the same "
              "initial weights on the same mini-batches",
}
OLD_ENGINE_NAMES = {"autograd": "bptorch"}  # results JSON and docs before issue 24


def add_engine(parser: argparse.ArgumentParser, names: tuple[str, ...] = ("bptorch", "native"),
               default: str | None = "bptorch", **kwargs) -> argparse.Action:
    """``--engine``, one of ``names`` (keys of :data:`ENGINES`), listed one per line in
    ``--help``; the old spellings in :data:`OLD_ENGINE_NAMES` still work. Pass
    ``default=None`` where the script resolves its own default (the help still names
    ``help_default``)."""
    old = {a: b for a, b in OLD_ENGINE_NAMES.items() if b in names}
    shown = kwargs.pop("help_default", default)
    return parser.add_argument("--engine", type=alias(old), choices=names, default=default,
                               help=choices_help({n: ENGINES[n] for n in names}, shown, old),
                               **kwargs)


# -- the flags of a training script's results, and --from-json -------------------------------
def add_results_flags(parser: argparse.ArgumentParser, plot_what: str,
                      table_help: str | None = None,
                      json_help: str = "write config and history here") -> None:
    """``--json PATH``, ``--plot PATH`` (help: "draw ``plot_what`` here") and
    ``--from-json PATH...``; with ``table_help`` (after "with --from-json: ") also
    ``--table``. :func:`replay` answers ``--from-json``."""
    parser.add_argument("--json", metavar="PATH", type=json_path, help=json_help)
    parser.add_argument("--plot", metavar="PATH", type=plot_path,
                        help=f"draw {plot_what} here (.png, .pdf, .svg, ...)")
    parser.add_argument("--from-json", metavar="PATH", nargs="+", type=json_file,
                        help="plot saved runs (needs --plot)" if table_help is None else
                        "saved runs: plot them (with --plot) or tabulate them (with --table)")
    if table_help is not None:
        parser.add_argument("--table", action="store_true",
                            help=f"with --from-json: {table_help}")


def add_resume(parser: argparse.ArgumentParser) -> None:
    """``--resume``, for a script that checkpoints next to its ``--json`` each epoch."""
    parser.add_argument("--resume", action="store_true",
                        help="continue from the checkpoint next to --json (PATH.ckpt.pt), if "
                             "any, with the same config; --epochs may grow")


def replay(parser: argparse.ArgumentParser, args: argparse.Namespace,
           replot: Callable[[list[str], str], dict],
           table: Callable[[list[str]], str] | None = None) -> dict | None:
    """``--from-json``: the saved runs replotted (``--plot``) or, where the script has a
    ``table``, printed as one (``--table``), instead of a run; None without ``--from-json``."""
    if not args.from_json:
        return None
    if table is None:
        if not args.plot:
            parser.error("--from-json needs --plot")
        return replot(args.from_json, args.plot)
    if not (args.plot or args.table):
        parser.error("--from-json needs --plot or --table")
    if args.table:
        print(table(args.from_json))
    return replot(args.from_json, args.plot) if args.plot else {}
