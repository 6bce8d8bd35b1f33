"""torchvision's model zoo through bptorch: convert, compare with torch, check coverage.

For every model of torchvision's classification, segmentation, video, optical-flow and
detection zoos (``weights=None``), one row:

1. **converts**: ``bptorch.convert.from_torch_nn(model, strict=True)`` succeeds (else the
   error, and the model is converted with ``strict=False`` for the next two columns);
2. **equals torch**: one forward and backward of the converted model and of torch's, from
   the same weights, input, seed and random upstream gradient, in float64 (the models above
   FLOAT32_ABOVE parameters lean, their weights held once, float32 only where even that
   does not fit in memory; raft's float32 pixel grid is built in float64,
   :func:`_coords_in_default_dtype`): the worst relative error over the
   outputs and over every parameter gradient, ``max|a − b| / max|b|``;
3. **whole backward in bptorch**: ``bptorch.coverage``: no torch node that computes, and
   every parameter's whole gradient from bptorch Functions.

Each model runs in its own process (memory, and a crash stays one row). Results go to a
JSON that records every flag, rewritten after each model; ``--resume`` skips the models
already in it. ``--table`` prints the markdown table from the JSON.

    python -m experiments.zoo --json results/zoo/zoo.json --resume      # hours on 2 cores
    python -m experiments.zoo --models resnet18 googlenet --json /tmp/z.json
    python -m experiments.zoo --from-json results/zoo/zoo.json --table
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

from bptorch import cli

ZOOS = ("classification", "segmentation", "video", "optical_flow", "detection")
# models whose parameters in float64 (twice, with gradients) would not fit in 24 GB: they
# run lean (the weights once, see _LeanGrads), in float32 only where even that does not fit
FLOAT32_ABOVE = 150_000_000
TOLERANCE = {"float64": 1e-6, "float32": 2e-3}
# the detection transforms' resize (min and max side, px) where torchvision's is 800/1333
DETECTION_SIZE = (160, 224)
# RoIs sampled per image for the models with a convolutional RoI head (torchvision: 512)
DETECTION_ROIS = 16


def model_name(value: str) -> str:
    """A torchvision model name (``torchvision.models.list_models()``)."""
    from torchvision import models
    if value not in models.list_models():
        raise argparse.ArgumentTypeError(f"expected a torchvision model name "
                                         f"(torchvision.models.list_models()), got {value!r}")
    return value


model_name.bad_examples = ("no_such_model",)  # what tests/test_cli.py tries


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--zoos", nargs="+", choices=ZOOS, default=list(ZOOS))
    p.add_argument("--models", nargs="+", type=model_name, default=None,
                   help="only these torchvision model names (default: every model of --zoos)")
    p.add_argument("--json", type=cli.json_path, default="results/zoo/zoo.json")
    p.add_argument("--resume", action="store_true",
                   help="skip the models --json has as converting, equal and complete "
                        "(the others run again)")
    p.add_argument("--timeout", type=cli.positive_int, default=1800, help="seconds per model")
    p.add_argument("--threads", type=cli.thread_count, default=1)
    p.add_argument("--seed", type=cli.non_negative_int, default=0)
    p.add_argument("--from-json", type=cli.json_file, default=None,
                   help="read results, run nothing")
    p.add_argument("--table", action="store_true", help="print the markdown table")
    p.add_argument("--write-docs", action="store_true",
                   help="write the table to docs/zoo.md and the per-zoo summary into "
                        "README.md (between its zoo-summary markers)")
    p.add_argument("--one", type=model_name, default=None, help=argparse.SUPPRESS)  # child process: one model
    return p


def zoo_of(name: str) -> str:
    from torchvision import models
    for zoo in ZOOS[1:]:
        if name in models.list_models(module=getattr(models, zoo)):
            return zoo
    return "classification"


def model_names(zoos: list[str]) -> list[str]:
    from torchvision import models
    names = []
    for zoo in zoos:
        module = models if zoo == "classification" else getattr(models, zoo)
        names += models.list_models(module=module)
    return names


# ---------------------------------------------------------------- one model (child)
def _inputs(name: str, zoo: str, dtype):
    """(args, kwargs, forward kwargs) for one forward of ``name``."""
    import torch
    g = torch.Generator().manual_seed(1)
    rand = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    if zoo == "classification":
        size = 224 if name.startswith(("vit_", "maxvit", "swin_v2")) else (
            299 if name.startswith("inception") else 64)  # inception's aux head: 299
        return (rand(2, 3, size, size),), {}
    if zoo == "segmentation":
        return (rand(2, 3, 64, 64),), {}
    if zoo == "video":
        if name.startswith("mvit") or name == "s3d":  # their last pools need 16×224×224
            return (rand(1, 3, 16, 224, 224),), {}
        return (rand(2, 3, 8, 64, 64),), {}
    if zoo == "optical_flow":
        return (rand(1, 3, 128, 128), rand(1, 3, 128, 128)), {"num_flow_updates": 2}
    # detection, train mode: images and targets; the output is the dict of losses
    images = [rand(3, 96, 128), rand(3, 112, 96)]
    targets = []
    for img in images:
        h, w = img.shape[1:]
        xy = torch.tensor([[8.0, 10.0, 60.0, 70.0], [20.0, 5.0, 90.0, 50.0]], dtype=dtype)
        xy[:, 0::2].clamp_(max=w - 1)
        xy[:, 1::2].clamp_(max=h - 1)
        t = {"boxes": xy, "labels": torch.tensor([1, 2])}
        if "mask" in name:
            t["masks"] = torch.zeros(2, h, w, dtype=torch.uint8)
            t["masks"][:, 10:40, 10:50] = 1
        if "keypoint" in name:
            t["labels"] = torch.tensor([1, 1])  # its two classes: background and person
            # float32 whatever the model's dtype: RoIHeads rejects other keypoint dtypes
            t["keypoints"] = torch.tensor([[[20.0, 30.0, 1.0]] * 17] * 2, dtype=torch.float32)
        targets.append(t)
    return (images, targets), {}




def _coords_in_default_dtype() -> None:
    """raft's ``make_coords_grid`` casts its pixel grid to float32 (``.float()``): in a
    float64 run the first flow, ``coords1 − coords0``, is float32 and the motion encoder's
    float64 convolution rejects it. The grid holds small integers, exact in either dtype:
    build it in the default dtype instead, for torch's run and ours alike (the forward is
    otherwise raft's own)."""
    import torch
    from torchvision.models.optical_flow import raft
    make = getattr(raft.make_coords_grid, "__wrapped__", raft.make_coords_grid)

    def make_coords_grid(*args, **kwargs):
        return make(*args, **kwargs).to(torch.get_default_dtype())
    make_coords_grid.__wrapped__ = make
    raft.make_coords_grid = make_coords_grid


# ---------------------------------------------------------------- the largest models, lean
# Above FLOAT32_ABOVE parameters a float64 run holds one copy of the weights, not four: the
# converted model shares torch's weight storage (converted from a weightless meta copy), and
# each gradient leaves memory as soon as it is accumulated, torch's to a file-backed tensor,
# ours compared with it there (post-accumulate-grad hooks). Peak: the weights once, the
# activations and one layer's gradient. Float32 only where even that does not fit.
def _available_bytes() -> int:
    """MemAvailable of /proc/meminfo (0 where unreadable)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _fits_lean(n_params: int) -> bool:
    """The float64 weights once, a quarter as much again (the largest gradients in flight)
    and 1.5 GiB for the activations and the rest."""
    return _available_bytes() >= 1.25 * 8 * n_params + 1.5 * 2**30


def _put_back(root, params: dict, buffers: dict, share: bool) -> None:
    """Give ``root``'s modules the weights ``params`` (the same Parameters, or with
    ``share`` new Parameters on the same storage) and ``buffers`` (copies with ``share``)."""
    from torch import nn
    for prefix, module in root.named_modules(remove_duplicate=False):
        where = prefix + "." if prefix else ""
        for k, p in module._parameters.items():
            if p is not None:
                real = params[where + k]
                module._parameters[k] = (nn.Parameter(real.detach(), real.requires_grad)
                                         if share else real)
        for k, b in module._buffers.items():
            if b is not None:
                module._buffers[k] = buffers[where + k].clone() if share else buffers[where + k]


def _convert_sharing(model, strict: bool = True):
    """``from_torch_nn(model, strict)`` whose parameters share ``model``'s storage (buffers
    copied): converted from ``model`` moved to the meta device (no copy of the weights),
    then the weights put back in both."""
    from bptorch.convert import from_torch_nn
    params = dict(model.named_parameters(remove_duplicate=False))
    buffers = dict(model.named_buffers(remove_duplicate=False))
    model.to("meta")
    try:
        ours = from_torch_nn(model, strict=strict)
    finally:
        _put_back(model, params, buffers, share=False)
    _put_back(ours, params, buffers, share=True)
    assert not any(t.is_meta for t in (*ours.parameters(), *ours.buffers()))
    return ours


class _LeanGrads:
    """torch's parameter gradients kept in a file-backed tensor as each is accumulated
    (``keep``), ours compared with them there (``compare``); both leave memory at once."""

    def __init__(self, model, dtype) -> None:
        import tempfile

        import torch
        self.where, n = {}, 0
        for k, p in model.named_parameters():
            self.where[k] = (n, p.shape)
            n += p.numel()
        self._file = tempfile.NamedTemporaryFile(suffix=".zoo-grads")
        self.store = torch.from_file(self._file.name, shared=True, size=max(n, 1), dtype=dtype)
        self.scale: dict[str, float] = {}  # max|∂C/∂w| of torch's, per parameter
        self.error: dict[str, float] = {}  # max|ours − torch's|

    def _slot(self, k):
        start, shape = self.where[k]
        return self.store[start:start + shape.numel()].view(shape)

    def keep(self, model) -> None:
        for k, p in model.named_parameters():
            def hook(p, k=k):
                self._slot(k).copy_(p.grad)
                self.scale[k] = float(p.grad.abs().max()) if p.grad.numel() else 0.0
                p.grad = None
            p.register_post_accumulate_grad_hook(hook)

    def compare(self, ours) -> None:
        for k, p in ours.named_parameters():
            def hook(p, k=k):
                if k not in self.scale:  # ours has a gradient where torch's has none
                    self.error[k] = float("inf")
                elif p.grad.numel():
                    self.error[k] = float((p.grad - self._slot(k)).abs().max())
                else:
                    self.error[k] = 0.0
                p.grad = None
            p.register_post_accumulate_grad_hook(hook)

    def worst(self) -> tuple[float, float | None, str | None]:
        """(the floor, the worst relative error, its parameter), as the eager comparison."""
        floor = 1e-6 * max(self.scale.values(), default=0.0)
        worst, where = 0.0, None
        for k in self.where:
            if (k in self.scale) != (k in self.error):
                return floor, float("inf"), k
            if k in self.scale:
                scale = max(self.scale[k], floor)
                r = self.error[k] / scale if scale > 0 else self.error[k]
                if r > worst:
                    worst, where = r, k
        return floor, worst, where


def _rel(a, b, floor: float = 0.0) -> float:
    scale = max(float(b.abs().max()) if b.numel() else 0.0, floor)
    err = float((a - b).abs().max()) if b.numel() else 0.0
    return err / scale if scale > 0 else err


def run_one(name: str, seed: int) -> dict:
    import torch
    from torchvision import models

    import bptorch
    from bptorch.convert import from_torch_nn
    from bptorch.routing import tensors_in

    zoo = zoo_of(name)
    row: dict = {"model": name, "zoo": zoo}
    torch.manual_seed(seed)
    kwargs = {"weights": None}
    if name in ("googlenet", "inception_v3"):
        kwargs["init_weights"] = True
    if zoo in ("detection", "segmentation"):
        kwargs["weights_backbone"] = None
    model = models.get_model(name, **kwargs)
    transform = getattr(model, "transform", None)
    if zoo == "detection" and transform.fixed_size is None and max(transform.min_size) > 320:
        # the R-CNN, RetinaNet and FCOS transforms resize every image to 800 px (min side)
        # by default: a resnet50-FPN there, in float64, twice, would not fit this machine's
        # memory. Their images are resized to DETECTION_SIZE instead (the same layers,
        # code paths and losses; SSD's fixed 300 and 320 and the 320 model's are kept)
        transform.min_size, transform.max_size = (DETECTION_SIZE[0],), DETECTION_SIZE[1]
    heads = getattr(model, "roi_heads", None)
    if zoo == "detection" and heads is not None and any(
            isinstance(m, torch.nn.Conv2d) for m in heads.modules()):
        # a per-RoI convolutional head (the v2 box head: 4 convs at 7×7 on every sampled
        # RoI, 512 per image; mask: 4 convs, keypoint: 8 convs of 512 channels at 14×14 on
        # the positive ones): TFLOPs in float64 here. The sampler draws DETECTION_ROIS per
        # image instead
        heads.fg_bg_sampler.batch_size_per_image = DETECTION_ROIS
    n_params = sum(p.numel() for p in model.parameters())
    # float32 for the models too large for float64 here
    dtype = torch.float64 if n_params <= FLOAT32_ABOVE else torch.float32
    lean = n_params > FLOAT32_ABOVE  # the weights once (float64 where they fit)
    if lean and _fits_lean(n_params):
        dtype = torch.float64
    if lean:
        row["available_gib"] = round(_available_bytes() / 2**30, 1)
    if zoo == "optical_flow":
        _coords_in_default_dtype()
    model = model.to(dtype).train()
    torch.set_default_dtype(dtype)  # tensors a model makes in its forward (raft's grids)
    row.update(params=n_params, dtype=str(dtype).removeprefix("torch."))
    if zoo == "detection":
        # the resize of its transform (min side, max side), which every image goes through
        row["image_size"] = [model.transform.min_size[0], model.transform.max_size]
        if heads is not None:
            row["rois_per_image"] = heads.fg_bg_sampler.batch_size_per_image
    t0 = time.perf_counter()
    if lean:
        from_torch_nn = _convert_sharing  # noqa: F811  (the same conversion, no weight copy)
        row["lean"] = True
    try:
        ours = from_torch_nn(model, strict=True)
        row["converts"] = True
    except NotImplementedError as e:
        row.update(converts=False, convert_error=str(e)[:2000])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ours = from_torch_nn(model, strict=False)
    args, fwd_kwargs = _inputs(name, zoo, dtype)
    if lean:
        lean_grads = _LeanGrads(model, dtype)
        lean_grads.keep(model)
        lean_grads.compare(ours)

    torch.manual_seed(seed)
    out_t = model(*args, **fwd_kwargs)
    outs_t = [t for t in tensors_in(out_t) if t.grad_fn is not None and t.is_floating_point()]
    g = torch.Generator().manual_seed(2)
    grads_out = [torch.randn(t.shape, generator=g, dtype=t.dtype) for t in outs_t]
    torch.autograd.backward(outs_t, grads_out)

    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        found = bptorch.coverage(ours, *args, grad_outputs=grads_out, verbose=False,
                                 **fwd_kwargs)
    outs_b = [t for t in tensors_in(found.output) if t.grad_fn is not None
              and t.is_floating_point()]
    row["output_rel_err"] = max((_rel(a.detach(), b.detach()) for a, b in zip(outs_b, outs_t)),
                                default=0.0)
    if len(outs_b) != len(outs_t):
        row["output_rel_err"] = float("inf")
    # a gradient that is zero in exact arithmetic (a norm's bias that reaches the loss only
    # through a linear map and another train-mode norm) is roundoff in both engines: each
    # parameter's error is measured against a floor of 1e-6 of the largest gradient
    floor = 1e-6 * max((float(p.grad.abs().max()) for p in model.parameters()
                        if p.grad is not None and p.grad.numel()), default=0.0)
    worst, where = 0.0, None
    for (k, p_t), p_b in zip(model.named_parameters(), ours.parameters()):
        if p_t.grad is None and p_b.grad is None:
            continue
        if (p_t.grad is None) != (p_b.grad is None):
            worst, where = float("inf"), k
            break
        r = _rel(p_b.grad, p_t.grad, floor)
        if r > worst:
            worst, where = r, k
    if lean:  # the gradients left memory as they came: compared by the hooks
        floor, worst, where = lean_grads.worst()
    row.update(grad_rel_err=worst, worst_param=where)
    tol = TOLERANCE[row["dtype"]]
    row["equal"] = row["output_rel_err"] <= tol and worst <= tol
    row.update(complete=found.complete, share=found.share,
               torch_nodes=dict(found.torch), moves=dict(found.moves),
               bptorch_nodes=dict(found.bptorch), params_torch=found.params_torch[:20],
               fallbacks=dict(found.fallbacks), seconds=round(time.perf_counter() - t0, 1))
    return row


# ---------------------------------------------------------------- the driver
def _save(path: Path, config: dict, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"config": config, "rows": rows}, indent=1))
    tmp.replace(path)


def table(rows: list[dict]) -> str:
    def mark(ok):
        return "✓" if ok else "✗"
    lines = ["| zoo | model | converts (strict) | equals torch (worst rel. err, dtype) | "
             "whole backward in bptorch (params) | torch nodes that compute |",
             "|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (ZOOS.index(r["zoo"]), r["model"])):
        if "error" in r:
            lines.append(f"| {r['zoo']} | {r['model']} | error: {r['error'][:80]} | | | |")
            continue
        err = max(r["output_rel_err"], r["grad_rel_err"])
        nodes = ", ".join(f"{k} ×{v}" for k, v in sorted(r["torch_nodes"].items()))
        lines.append(f"| {r['zoo']} | {r['model']} | {mark(r['converts'])} | "
                     f"{mark(r['equal'])} {err:.1e} {r['dtype']} | "
                     f"{mark(r['complete'])} {100 * r['share']:.0f}% | {nodes} |")
    for zoo in ZOOS:
        zr = [r for r in rows if r["zoo"] == zoo and "error" not in r]
        n = len([r for r in rows if r["zoo"] == zoo])
        if n:
            all3 = sum(r["converts"] and r["equal"] and r["complete"] for r in zr)
            lines.append(f"\n{zoo}: {all3}/{n} models do all three "
                         f"(convert {sum(r['converts'] for r in zr)}, "
                         f"equal {sum(r['equal'] for r in zr)}, "
                         f"whole backward {sum(r['complete'] for r in zr)})")
    return "\n".join(lines)


def summary(rows: list[dict]) -> str:
    """One line per zoo: how many models convert, equal torch, run their whole backward
    in bptorch, and do all three."""
    from torchvision import models
    lines = ["| zoo | models | converts (strict) | equals torch | whole backward in bptorch "
             "| all three |", "|---|---|---|---|---|---|"]
    for zoo in ZOOS:
        n = len(models.list_models(module=models if zoo == "classification"
                                   else getattr(models, zoo)))
        zr = [r for r in rows if r["zoo"] == zoo and "error" not in r]
        count = lambda key: sum(bool(r[key]) for r in zr)  # noqa: E731
        all3 = sum(r["converts"] and r["equal"] and r["complete"] for r in zr)
        lines.append(f"| {zoo.replace('_', ' ')} | {n} | {count('converts')} | "
                     f"{count('equal')} | {count('complete')} | {all3} ({100 * all3 / n:.0f}%) |")
    return "\n".join(lines)


DOC_HEAD = """# torchvision's zoo through bptorch

Issue 21's test of "drop-in for real": every model of torchvision's classification,
segmentation, video, optical-flow and detection zoos (`weights=None`), one row each, made by
[`experiments/zoo.py`](../experiments/zoo.py). Back to the [README](../README.md).

* **converts**: `bptorch.convert.from_torch_nn(model, strict=True)` succeeds;
* **equals torch**: one forward and backward of the converted model and of torch's, from
  the same weights, input, seed and random upstream gradient, in float64 unless the row
  says float32; the worst relative error over the outputs and every parameter gradient,
  each against a floor of 1e-6 of the largest gradient (a gradient that is zero in exact
  arithmetic is roundoff in both engines); ✓ at ≤ 1e-6 (float64) or 2e-3 (float32);
* **whole backward in bptorch**: [`bptorch.coverage`](layers.md#a-models-own-functional-calls-and-bptorchcoverage)
  finds no torch node that computes, and every parameter's whole gradient comes from
  bptorch Functions; the percentage is the share of parameters whose gradient does.

Each model runs in its own process, training mode, on the shared 2-core CPU; the inputs
(batch, image size, clip length) are `_inputs` in the script. Detection models train:
their output is the dict of losses, each given its own random upstream gradient.

```text
python -m experiments.zoo --json results/zoo/zoo.json --resume     # resumes; hours
python -m experiments.zoo --from-json results/zoo/zoo.json --write-docs  # this page
```

"""
README_BEGIN, README_END = "<!-- zoo-summary:begin -->", "<!-- zoo-summary:end -->"


def write_docs(rows: list[dict], root: Path = Path(".")) -> None:
    """docs/zoo.md (the table) and README.md's per-zoo summary, from the rows."""
    (root / "docs" / "zoo.md").write_text(DOC_HEAD + summary(rows) + "\n\n" + table(rows)
                                          + "\n")
    readme = root / "README.md"
    text = readme.read_text()
    head, rest = text.split(README_BEGIN, 1)
    _, tail = rest.split(README_END, 1)
    readme.write_text(f"{head}{README_BEGIN}\n{summary(rows)}\n{README_END}{tail}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.json = Path(args.json)
    if args.one:
        import torch
        torch.set_num_threads(args.threads)
        print(json.dumps(run_one(args.one, args.seed)))
        return 0
    if args.from_json:
        rows = json.loads(Path(args.from_json).read_text())["rows"]
        if args.write_docs:
            write_docs(rows)
        else:
            print(table(rows))
        return 0
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    names = args.models or model_names(args.zoos)
    rows = []
    if args.resume and args.json.exists():
        rows = json.loads(args.json.read_text())["rows"]
    # a row that raised, or that is not yet all three (convert, equal, whole backward), runs
    # again: the code it measures may have changed since
    done = {r["model"] for r in rows if "error" not in r
            and r["converts"] and r["equal"] and r["complete"]}
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    for i, name in enumerate(names):
        if name in done:
            continue
        t0 = time.perf_counter()
        try:
            res = subprocess.run([sys.executable, "-m", "experiments.zoo", "--one", name,
                                  "--seed", str(args.seed), "--threads", str(args.threads)],
                                 capture_output=True, text=True, timeout=args.timeout, env=env)
            if res.returncode == 0:
                row = json.loads(res.stdout.strip().splitlines()[-1])
            else:
                last = res.stderr.strip().splitlines()[-1:] or [
                    f"exit status {res.returncode}" + (" (killed: out of memory?)"
                                                       if res.returncode < 0 else "")]
                row = {"model": name, "zoo": zoo_of(name), "error": last[0][:500]}
        except subprocess.TimeoutExpired:
            row = {"model": name, "zoo": zoo_of(name), "error": f"timeout {args.timeout} s"}
        rows = [r for r in rows if r["model"] != name] + [row]
        _save(args.json, config, rows)
        status = row.get("error") or (f"converts={row['converts']} equal={row['equal']} "
                                      f"complete={row['complete']} share={row['share']:.2f}")
        print(f"[{i + 1}/{len(names)}] {name}: {status} ({time.perf_counter() - t0:.0f} s)",
              flush=True)
    if args.table:
        print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
