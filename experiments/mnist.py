"""Reproduce chapters 1 and 3 of Nielsen's book: MNIST digits with a sigmoid net and SGD.

    python -m experiments.mnist --preset ch1       # [784, 30, 10], quadratic cost: 95.42%
    python -m experiments.mnist --preset ch3       # cross-entropy, L2: 97.92% (validation)

The defaults are the book's chapter 1 call, ``net.SGD(training_data, 30, 10, 3.0)`` on
``Network([784, 30, 10])``; a ``--preset`` sets one of the book's configurations and
explicit flags override it. Each epoch prints the book's line ``Epoch j: k / 10000``
(test images right), then validation accuracy, training cost and training seconds.

Three engines train on the same shuffled mini-batches from the same initial weights:

* ``explicit``: ``Network.update_mini_batch``, the seed's algorithm with the book's
  update W ← (1 − ηλ/n) W − (η/m) Σ_x ∂C_x/∂W, b ← b − (η/m) Σ_x ∂C_x/∂b fused in;
* ``bptorch`` (``autograd`` before issue 24, still accepted): the same Network under
  ``loss.backward()`` and ``torch.optim.SGD`` (lr = η, weight_decay = λ/n on the weights
  only: the same update);
* ``native``: plain ``torch.nn`` layers and torch's own costs and autograd.

``--l1 λ₁`` adds chapter 3's L1 term (λ₁/n) Σ|w| to the cost: the explicit engine's update
gains − (ηλ₁/n) sgn(W) (``Network.update_mini_batch``'s ``l1``), the other two add
(λ₁/n) sgn(W) to the weights' gradients before the optimizer's step.

``--threads`` (default ``auto``) sets torch's intra-op thread count through
``bptorch.threads.set_threads``: one thread at the book's batch 10, where more only wait
on each other; the JSON config records it as ``torch_threads``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import bptorch
from bptorch import Network, cli
from bptorch.convert import network_to_sequential, sequential_state_dict_to_network
from bptorch.distributed import all_reduce_grads, average_parameters, init_from_env, shard
# the book's configurations (BOOK_ACCURACY: read from here by experiments.summarize)
from bptorch.presets import BOOK_ACCURACY, PRESETS  # noqa: F401
from bptorch.threads import keep_threads, mlp_step_flops, set_threads

# network.py's defaults: Network([784, 30, 10]).SGD(training_data, 30, 10, 3.0, test_data).
DEFAULTS: dict[str, Any] = dict(
    sizes=[784, 30, 10], epochs=30, batch_size=10, eta=3.0, lmbda=0.0, l1=0.0,
    cost="quadratic",
    activation="sigmoid", init="large", seed=0, dataset="mnist", data_dir=None,
    train_size=None, device="cpu", engine="explicit", preset=None, diagnostics=False,
    threads="auto", compile=0)
# What defines a saved model, and so what a checkpoint restores: --load takes these from the
# checkpoint, and a --preset or flag that contradicts them is an error (CheckpointMismatch).
# init is among them: the loaded weights replace the initialisation, so a different --init
# would be silently ignored.
MODEL_KEYS = ("sizes", "activation", "cost", "init")
ENGINES = ("explicit", "bptorch", "native")  # "autograd": the old name of "bptorch"
HIDDEN_ACTIVATIONS = ("sigmoid", "tanh", "relu", "leaky_relu", "identity")
COST_SUBSET = 10_000  # training images the per-epoch training cost is measured on
DIAGNOSTIC_SUBSET = 1_000


# -- the three engines -----------------------------------------------------------------
def native_model(net: Network) -> nn.Sequential:
    """Plain torch.nn layers holding a copy of ``net``'s weights (keys mapped), and its cost.

    ``nn.Sequential(Linear, act, ..., Linear, out)``: ``layers.{l}.*`` → ``{2l}.*``.
    """
    model = network_to_sequential(net)
    model.cost = net.cost  # type: ignore[assignment]
    return model


_from_native_keys = sequential_state_dict_to_network  # the inverse key map, by its old name


def native_loss(model: nn.Sequential, x: Tensor, y: Tensor) -> Tensor:
    """The book's batch-mean costs in plain torch ops (y one-hot, (N, 10))."""
    if model.cost == "quadratic":  # ½‖a − y‖², mean over the batch
        return 0.5 * (model(x) - y).pow(2).sum(1).mean()
    z = model[:-1](x)  # z^L: the output activation is folded into the cost
    if model.cost == "cross_entropy":
        return F.binary_cross_entropy_with_logits(z, y, reduction="sum") / x.shape[0]
    return F.cross_entropy(z, y)  # log-likelihood of softmax(z); y as class probabilities


def loss_of(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    return model.loss(x, y) if isinstance(model, Network) else native_loss(model, x, y)


def sgd(model: nn.Module, eta: float, lmbda: float, n: int) -> torch.optim.SGD:
    """SGD with the book's L2: weight_decay λ/n on the weights, none on the biases."""
    weights = [p for name, p in model.named_parameters() if name.endswith("weight")]
    biases = [p for name, p in model.named_parameters() if name.endswith("bias")]
    return torch.optim.SGD([{"params": weights, "weight_decay": lmbda / n},
                            {"params": biases, "weight_decay": 0.0}], lr=eta)


def add_l1_grad(model: nn.Module, l1: float, n: int) -> None:
    """The L1 term's gradient, (λ₁/n) sgn(W), added to each weight's .grad (not the biases');
    sgn(0) = 0, as ``Network.update_mini_batch`` takes it."""
    for name, p in model.named_parameters():
        if name.endswith("weight"):
            p.grad.add_(torch.sign(p), alpha=l1 / n)


def train_epoch(model: nn.Module, engine: str, x: Tensor, y: Tensor, batch_size: int,
                eta: float, lmbda: float, gen: torch.Generator, optimizer=None,
                progress: bool = False, desc: str = "", rank: int = 0, world: int = 1,
                compiled=None, steps: int = 0, l1: float = 0.0) -> None:
    """One pass over a fresh shuffle of (x, y), in mini-batches (the last may be short).

    ``compiled`` (``bptorch.compile.sgd_steps(model, steps)``) takes the explicit engine's
    steps ``steps`` mini-batches at a time; what does not fill a whole chunk runs eagerly.

    With ``world`` > 1 (torchrun), every rank draws the same permutation and trains on
    its shard of it; after each step the ranks average their gradients (autograd,
    native) or their updated parameters (explicit), so all hold the same weights.
    """
    from tqdm import tqdm

    n = x.shape[0]
    perm = torch.randperm(n, generator=gen)
    if world > 1:
        perm = shard(perm, rank, world)
    perm = perm.to(x.device)
    x, y = x[perm], y[perm]  # one gather per epoch; batches below are views
    start = 0
    if compiled is not None:
        chunk = steps * batch_size
        whole = x.shape[0] // chunk * chunk
        xs = x[:whole].view(-1, steps, batch_size, x.shape[1])
        ys = y[:whole].view(-1, steps, batch_size, y.shape[1])
        for j in tqdm(range(xs.shape[0]), desc=desc, leave=False, file=sys.stderr,
                      disable=not progress, unit=f"{steps} batches"):
            compiled(xs[j], ys[j], eta, lmbda, n)
        start = whole
    starts = tqdm(range(start, x.shape[0], batch_size), desc=desc, leave=False,
                  file=sys.stderr, disable=not progress or start > 0, unit="batch")
    for k in starts:
        xb, yb = x[k:k + batch_size], y[k:k + batch_size]
        if engine == "explicit":
            model.update_mini_batch(xb, yb, eta, lmbda, n, l1)
            if world > 1:
                average_parameters(model)
        else:
            optimizer.zero_grad(set_to_none=True)
            loss_of(model, xb, yb).backward()
            if world > 1:
                all_reduce_grads(model)
            if l1:
                add_l1_grad(model, l1, n)
            optimizer.step()


@torch.no_grad()
def correct(model: nn.Module, x: Tensor, labels: Tensor) -> int:
    """How many rows of x the model classifies right (argmax of a^L)."""
    return int((model(x).argmax(-1) == labels).sum())


@torch.no_grad()
def training_cost(model: nn.Module, x: Tensor, y: Tensor, lmbda: float, n: int,
                  l1: float = 0.0) -> float:
    """Mean cost on x plus the book's L2 term (λ/2n) Σ‖W‖², as network2's total_cost, and
    the L1 term (λ₁/n) Σ|W|."""
    cost = float(loss_of(model, x, y))
    weights = [p for name, p in model.named_parameters() if name.endswith("weight")]
    return (cost + 0.5 * (lmbda / n) * sum(float(w.pow(2).sum()) for w in weights)
            + (l1 / n) * sum(float(w.abs().sum()) for w in weights))


# -- command line -----------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.mnist", description=__doc__,
                                formatter_class=cli.HelpFormatter)
    d = DEFAULTS  # every default is None here, so that we can tell what was given
    p.add_argument("--preset", choices=list(PRESETS), help="one of the book's configurations")
    p.add_argument("--sizes", type=cli.positive_int, nargs="+",
                   help=f"layer sizes (default {d['sizes']})")
    p.add_argument("--epochs", type=cli.non_negative_int,
                   help=f"0: evaluate only (default {d['epochs']})")
    p.add_argument("--batch-size", type=cli.positive_int,
                   help=f"mini-batch size m (default {d['batch_size']})")
    p.add_argument("--eta", type=cli.positive_float, help=f"learning rate η (default {d['eta']})")
    p.add_argument("--lmbda", type=cli.non_negative_float,
                   help="L2 λ: W ← (1 − ηλ/n) W, n = training-set size; biases not decayed "
                        f"(default {d['lmbda']})")
    p.add_argument("--l1", type=cli.non_negative_float,
                   help="L1 λ₁: W ← W − (ηλ₁/n) sgn(W), sgn(0) = 0; biases not touched "
                        f"(default {d['l1']})")
    p.add_argument("--cost", choices=["quadratic", "cross_entropy", "log_likelihood"],
                   help=f"default {d['cost']}; log_likelihood puts softmax on the output")
    p.add_argument("--activation", choices=HIDDEN_ACTIVATIONS,
                   help=f"hidden layers' σ (default {d['activation']})")
    p.add_argument("--init", choices=["large", "scaled"],
                   help="large: N(0, 1) weights (ch1); scaled: N(0, 1/n_in) (ch3) "
                        f"(default {d['init']})")
    p.add_argument("--seed", type=cli.non_negative_int, help=f"default {d['seed']}")
    p.add_argument("--dataset", choices=["mnist", "fashion-mnist"], help="default mnist")
    p.add_argument("--data-dir", type=cli.folder,
                   help="default $BPTORCH_DATA or ~/.cache/bptorch")
    p.add_argument("--train-size", type=cli.positive_int,
                   help="train on the first N images (default all)")
    p.add_argument("--device", type=cli.device, help="default cpu")
    cli.add_engine(p, ENGINES, None, help_default="explicit")
    p.add_argument("--diagnostics", action="store_true", default=None,
                   help="record bptorch.diagnostics.measure on 1000 training images per epoch "
                        "and print each layer's speed of learning")
    p.add_argument("--json", metavar="PATH", type=cli.json_path,
                   help="write config and history here")
    p.add_argument("--plot", metavar="PATH", type=cli.plot_path,
                   help="draw the learning curves here (.png, .pdf, .svg, ...)")
    p.add_argument("--from-json", metavar="PATH", nargs="+", type=cli.json_file,
                   help="with --plot: replot these results without training")
    p.add_argument("--save", metavar="PATH", help="checkpoint: state_dict and config")
    p.add_argument("--load", metavar="PATH", type=cli.existing_file,
                   help="start from this checkpoint: its sizes, activation, cost and init "
                        "win, and a --preset or flag that contradicts them is an error; "
                        "--epochs 0 only evaluates")
    p.add_argument("--threads", type=cli.threads,
                   help="torch intra-op threads, or auto: bptorch.threads.choose_threads "
                        "from the work per step (1 at the book's batch 10) (default auto)")
    p.add_argument("--compile", type=cli.non_negative_int, nargs="?", const=10, metavar="STEPS",
                   help="explicit engine only: torch.compile STEPS mini-batch steps as one "
                        "function (bptorch.compile.sgd_steps; default 10 when given, 0 = eager)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    p.add_argument("--distributed", action="store_true",
                   help="data-parallel under torchrun: each rank trains on its shard of every "
                        "epoch, --batch-size rows per rank per step (gloo on CPU, nccl on GPU)")
    return p


# MNIST and Fashion-MNIST: 28×28 = 784 pixels in, 10 classes out
N_INPUTS, N_CLASSES = 784, 10


def check_sizes(parser: argparse.ArgumentParser, sizes: Sequence[int], flag: str) -> None:
    """``parser.error`` unless ``sizes`` fits the data: 784 inputs first, 10 classes last."""
    if len(sizes) < 2:
        parser.error(f"{flag}: expected at least two layer sizes ({N_INPUTS} inputs ... "
                     f"{N_CLASSES} outputs), got {list(sizes)}")
    if sizes[0] != N_INPUTS or sizes[-1] != N_CLASSES:
        parser.error(f"{flag}: expected {N_INPUTS} inputs first and {N_CLASSES} outputs last "
                     f"(28×28 images, 10 classes), got {list(sizes)}")


def read_checkpoint(parser: argparse.ArgumentParser, path: str) -> Any:
    """``torch.load(path)``, or ``parser.error`` naming --load if torch cannot read it."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a pickle, zip or weights_only error: not ours
        parser.error(f"--load {path}: not a checkpoint torch.load can read "
                     f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")


class CheckpointMismatch(ValueError):
    """A --preset or flag contradicts a model field of the checkpoint given to --load."""


def check_checkpoint(checkpoint: Any, path: str) -> dict:
    """The checkpoint's model fields (MODEL_KEYS); a clear error if it is not one of ours."""
    config = checkpoint.get("config") if isinstance(checkpoint, dict) else None
    if not isinstance(config, dict) or not isinstance(checkpoint.get("model"), dict):
        raise ValueError(f"--load {path}: not an experiments.mnist checkpoint (expected a dict "
                         f"with 'model' and 'config', as --save writes; got "
                         f"{type(checkpoint).__name__}"
                         + (f" with keys {sorted(checkpoint)}" if isinstance(checkpoint, dict)
                            else "") + ")")
    missing = [k for k in MODEL_KEYS if k not in config]
    if missing:
        raise ValueError(f"--load {path}: the checkpoint's config lacks {missing}")
    return {k: list(config[k]) if k == "sizes" else config[k] for k in MODEL_KEYS}


def resolve_config(args: argparse.Namespace, checkpoint: dict | None = None) -> dict:
    """defaults < preset < flags given on the command line, except that with a checkpoint
    its model fields (MODEL_KEYS) win and a preset or flag contradicting them raises
    CheckpointMismatch."""
    preset = PRESETS[args.preset] if args.preset is not None else {}
    flags = {k: v for k, v in vars(args).items() if k in DEFAULTS and v is not None}
    config = {**DEFAULTS, **preset, **flags}
    if checkpoint is not None:
        path = getattr(args, "load", None) or "checkpoint"
        saved = check_checkpoint(checkpoint, path)
        for key in MODEL_KEYS:
            if key in flags:  # a flag overrides the preset, so it is the one to compare
                source, value = "--" + key.replace("_", "-"), flags[key]
            elif key in preset:
                source, value = f"--preset {args.preset}", preset[key]
            else:
                continue
            value = list(value) if key == "sizes" else value
            if value != saved[key]:
                raise CheckpointMismatch(
                    f"--load {path}: the checkpoint's {key} is {saved[key]!r}, but {source} "
                    f"sets {key}={value!r}. A loaded model keeps its checkpoint's "
                    f"{', '.join(MODEL_KEYS)}: drop {source} or set it to the checkpoint's "
                    "value.")
        config.update(saved)
    config["sizes"] = list(config["sizes"])
    return config


@keep_threads()
def main(argv: Sequence[str] | None = None) -> dict:
    """Train (or evaluate a checkpoint), print the book's epoch lines; return the results.

    torch's intra-op thread count is set from ``--threads`` for the run and restored after.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if (saved := cli.replay(parser, args, replot)) is not None:
        return saved

    checkpoint = read_checkpoint(parser, args.load) if args.load else None
    try:
        config = resolve_config(args, checkpoint)
    except ValueError as e:  # CheckpointMismatch, or not a checkpoint of ours
        parser.error(str(e))
    c = config
    check_sizes(parser, c["sizes"], "--sizes" if checkpoint is None else f"--load {args.load}")
    if checkpoint is not None:  # the weights against the net they must fit, on no memory
        try:
            Network(c["sizes"], c["activation"], c["cost"], c["init"],
                    device="meta").load_state_dict(checkpoint["model"], assign=True)
        except RuntimeError as e:
            parser.error(f"--load {args.load}: the checkpoint's weights do not fit "
                         f"Network({c['sizes']}): {e}")
    if c["engine"] == "native" and c["diagnostics"]:
        parser.error("--diagnostics needs a bptorch net (engine explicit or bptorch)")
    if c["compile"] and c["l1"]:
        parser.error("--compile's steps have no L1 term: drop --compile or --l1")
    if c["compile"] and (c["engine"] != "explicit" or args.distributed):
        parser.error("--compile compiles the explicit engine's steps: use --engine explicit, "
                     "without --distributed")
    measure = None
    if c["diagnostics"]:
        measure = getattr(bptorch.diagnostics, "measure", None)
        if measure is None:
            parser.error("--diagnostics: bptorch.diagnostics.measure does not exist in this "
                         "version of bptorch")

    from bptorch.data import load_mnist

    rank, world = init_from_env() if args.distributed else (0, 1)
    device = torch.device(c["device"])
    if args.distributed and device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    data = load_mnist(c["dataset"], c["data_dir"], device=device)
    x_train, labels_train = data.train
    if c["train_size"] is not None:
        x_train, labels_train = x_train[:c["train_size"]], labels_train[:c["train_size"]]
    n = x_train.shape[0]
    y_train = F.one_hot(labels_train, c["sizes"][-1]).to(x_train.dtype)  # once, not per batch
    (x_val, labels_val), (x_test, labels_test) = data.validation, data.test
    # the work of one step decides the thread count: 1 at the book's batch 10 (see
    # bptorch.threads); under torchrun each rank steps on batch_size rows
    set_threads(c["threads"], flops=mlp_step_flops(c["sizes"], c["batch_size"]),
                rows=c["batch_size"])
    config.update(n_train=n, data_source=data.source, torch_version=str(torch.__version__),
                  torch_threads=torch.get_num_threads(),
                  bptorch_version=bptorch.__version__, load=args.load, world_size=world)

    torch.manual_seed(c["seed"])  # the initial weights
    net = Network(c["sizes"], c["activation"], c["cost"], c["init"], device=device)
    if checkpoint is not None:
        try:
            net.load_state_dict(checkpoint["model"])
        except RuntimeError as e:  # weights that do not fit the sizes the config names
            parser.error(f"--load {args.load}: the checkpoint's weights do not fit "
                         f"Network({c['sizes']}): {e}")
    model: nn.Module = native_model(net) if c["engine"] == "native" else net
    optimizer = sgd(model, c["eta"], c["lmbda"], n) if c["engine"] != "explicit" else None
    compiled, compile_seconds = None, None
    if c["compile"]:  # compile on the first steps, then restore the weights: epochs start clean
        from bptorch.compile import sgd_steps

        compiled = sgd_steps(net, c["compile"])
        start = time.perf_counter()
        state = {k: v.clone() for k, v in net.state_dict().items()}
        m, k = c["batch_size"], c["compile"]
        compiled(x_train[:m * k].view(k, m, -1), y_train[:m * k].view(k, m, -1),
                 c["eta"], c["lmbda"], n)
        net.load_state_dict(state)  # undo the warm-up steps
        compile_seconds = time.perf_counter() - start
        config["compile_seconds"] = compile_seconds
        print(f"Compiled {k} steps a call in {compile_seconds:.1f} s", flush=True)
    gen = torch.Generator().manual_seed(c["seed"])  # the shuffles, apart from the weights
    progress = not args.no_progress and sys.stderr.isatty() and rank == 0

    history: dict[str, list] = {"test_accuracy": [], "validation_accuracy": [],
                                "training_cost": [], "epoch_seconds": []}
    if measure is not None:
        history["diagnostics"] = []
    n_test, n_val = x_test.shape[0], x_val.shape[0]
    for j in range(c["epochs"]):
        start = time.perf_counter()
        train_epoch(model, c["engine"], x_train, y_train, c["batch_size"], c["eta"], c["lmbda"],
                    gen, optimizer, progress, desc=f"Epoch {j}", rank=rank, world=world,
                    compiled=compiled, steps=c["compile"], l1=c["l1"])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        k_test, k_val = correct(model, x_test, labels_test), correct(model, x_val, labels_val)
        cost = training_cost(model, x_train[:COST_SUBSET], y_train[:COST_SUBSET], c["lmbda"], n,
                             c["l1"])
        history["test_accuracy"].append(k_test / n_test)
        history["validation_accuracy"].append(k_val / n_val)
        history["training_cost"].append(cost)
        history["epoch_seconds"].append(seconds)
        if measure is not None:
            m = measure(model, x_train[:DIAGNOSTIC_SUBSET], labels_train[:DIAGNOSTIC_SUBSET])
            history["diagnostics"].append(_jsonable(m))
        if rank == 0:
            print(f"Epoch {j}: {k_test} / {n_test}  (validation {k_val} / {n_val}, "
                  f"training cost {cost:.4f}, {seconds:.2f} s)", flush=True)
            if measure is not None:
                print(diagnostics_line(history["diagnostics"][-1]), flush=True)

    k_test, k_val = correct(model, x_test, labels_test), correct(model, x_val, labels_val)
    final = {"test_accuracy": k_test / n_test, "validation_accuracy": k_val / n_val}
    if not c["epochs"]:
        print(f"Evaluated: {k_test} / {n_test}  (validation {k_val} / {n_val})")
    results = {"config": config, "history": history, "final": final}
    if rank != 0:  # every rank holds the same weights; rank 0 writes the files
        return results
    if args.save:
        state = model.state_dict()
        if c["engine"] == "native":
            state = sequential_state_dict_to_network(state)
        Path(args.save).parent.mkdir(parents=True, exist_ok=True)  # as --json's folder
        torch.save({"model": {k: v.cpu() for k, v in state.items()}, "config": config}, args.save)
    save_results(results, args.json, args.plot)
    return results


def diagnostics_line(stats: dict[str, dict[str, float]]) -> str:
    """One epoch's --diagnostics summary: each layer's speed of learning ‖∂C/∂b^l‖ (the
    book's, chapter 5) and the fraction of its neurons saturated."""
    return "  speed of learning ‖∂C/∂b‖: " + ", ".join(
        f"{layer} {v['speed']:.3g} ({100 * v['saturated_fraction']:.0f}% saturated)"
        for layer, v in stats.items())


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Tensor):
        return obj.tolist()
    return obj


# -- plots ----------------------------------------------------------------------------
def run_label(results: dict) -> str:
    c = results["config"]
    name = c.get("preset") or c.get("rule") or c.get("model") or "custom"
    return f"{name} {c.get('engine', '')} seed {c.get('seed')}".replace("  ", " ")


def save_results(results: dict, json_path: str | None, plot_path: str | None,
                 plot_fn=None) -> None:
    """Write ``results`` as JSON and draw ``plot_fn(results, plot_path)`` (default
    :func:`plot`), creating missing folders; a None path skips that output."""
    if json_path:
        path = Path(json_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")  # then rename: a kill mid-write keeps the old
        tmp.write_text(json.dumps(results, indent=1) + "\n")
        os.replace(tmp, path)
    if plot_path:
        Path(plot_path).parent.mkdir(parents=True, exist_ok=True)
        (plot_fn or plot)(results, plot_path)


def replot(json_paths: Sequence[str], path: str | Path) -> dict:
    """Draw saved runs (``--json`` files) with :func:`plot`, without training."""
    runs = [json.loads(Path(p).read_text()) for p in json_paths]
    plot(runs[0] if len(runs) == 1 else runs, path)
    return runs[0] if len(runs) == 1 else {"runs": runs}


def markers(n: int) -> dict:
    """Plot keywords that mark each of ``n`` points while they are few enough to see: a
    line through one point draws nothing, so a run of one epoch would plot empty."""
    return {"marker": "o", "ms": 3} if n <= 60 else {}


def plot(results: dict | list[dict], path: str | Path) -> None:
    """Accuracy (test solid, validation dashed) and training cost against epoch.

    ``results`` is one run's JSON dict, or a list of them drawn on the same axes.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = results if isinstance(results, list) else [results]
    fig, (ax_acc, ax_cost) = plt.subplots(1, 2, figsize=(9, 3.4))
    for i, run in enumerate(runs):
        h, color = run["history"], f"C{i}"
        epochs = range(len(h["test_accuracy"]))
        label, dots = run_label(run) if len(runs) > 1 else "", markers(len(epochs))
        ax_acc.plot(epochs, [100 * a for a in h["test_accuracy"]], color=color,
                    label=f"{label} test".strip(), **dots)
        ax_acc.plot(epochs, [100 * a for a in h["validation_accuracy"]], color=color,
                    ls="--", label=f"{label} validation".strip(), **dots)
        ax_cost.plot(epochs, h["training_cost"], color=color, label=label or "training",
                     **dots)
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")
    ax_cost.set(xlabel="epoch", ylabel="cost", title="Training cost", yscale="log")
    ax_acc.legend(fontsize=7)
    ax_cost.legend(fontsize=7)
    for ax in (ax_acc, ax_cost):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    main()
