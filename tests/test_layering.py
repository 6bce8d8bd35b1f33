"""The house rules of bptorch/, checked on its source: imports point down only (no circles,
function-local imports included), ``functions/`` imports nothing above itself, every
Function derives from BPFunction, ``import bptorch`` loads neither Dynamo nor the
lazily loaded modules, and the moved names still work, with a DeprecationWarning."""
from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import bptorch
import bptorch.functions
from bptorch.functions.base import BPFunction

ROOT = Path(bptorch.__file__).parent
# the deprecated alias modules: they point at the new homes, lazily, for one release
SHIMS = {"bptorch.functions.layers", "bptorch.functions.pooling", "bptorch.nn.pooling"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    """The absolute name of ``from {'.' * level}{target} import ...`` inside ``module``."""
    if level == 0:
        return target or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def _imports(path: Path) -> set[str]:
    """Every bptorch module ``path`` imports, at any depth of its syntax tree."""
    module, is_package = _module_name(path), path.name == "__init__.py"
    known = {_module_name(p) for p in ROOT.rglob("*.py")}
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, is_package, node.level, node.module)
            # `from . import nn` imports the module bptorch.nn; `from .x import y` module x
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                     for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:  # `import bptorch.nn.linear as l` etc.
                name = name.rpartition(".")[0]
            if name.startswith("bptorch") and name != module:
                out.add(name)
    return out


def _graph() -> dict[str, set[str]]:
    graph = {_module_name(p): _imports(p) for p in ROOT.rglob("*.py")}
    for shim in SHIMS:
        graph.pop(shim, None)
    # a package imports its parents' __init__ on the way in; that is no edge of the code
    return {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in graph.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state and (found := visit(d)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_the_import_parser_sees_function_local_and_relative_imports(tmp_path):
    """The parser the two tests below use can fail: it finds an import inside a function."""
    graph = _graph()
    assert "bptorch.functions.base" in graph["bptorch.functions.linear"]
    assert "bptorch.nn.linear" in graph["bptorch.diagnostics"]
    fake = {"a": {"b"}, "b": {"c"}, "c": {"a"}}
    assert _cycle(fake) == ["a", "b", "c", "a"]
    # a function-local upward import, as functions/layers.py once had, is an edge
    src = ROOT / "functions" / "_probe_for_test.py"
    try:
        src.write_text("def f():\n    from .. import diagnostics\n")
        assert "bptorch.diagnostics" in _imports(src)
    finally:
        src.unlink()


def test_no_import_circles():
    assert _cycle(_graph()) is None


ABOVE_FUNCTIONS = ("bptorch.nn", "bptorch.diagnostics", "bptorch.network", "bptorch.convert",
                   "bptorch.functional", "bptorch._checks", "bptorch.compile", "bptorch.data",
                   "bptorch.distributed", "bptorch.feedback", "bptorch.threads", "bptorch.routing")


def test_functions_import_nothing_above_them():
    graph = _graph()
    for module, deps in graph.items():
        if module.startswith("bptorch.functions"):
            up = sorted(d for d in deps if d.startswith(ABOVE_FUNCTIONS))
            assert not up, f"{module} imports {up}"


def test_nn_imports_neither_functions_directly_nor_model_tools():
    """nn → functional → functions/: the modules call functional, which checks."""
    graph = _graph()
    tools = ("bptorch.diagnostics", "bptorch.network", "bptorch.convert", "bptorch.compile",
             "bptorch.routing")
    for module, deps in graph.items():
        if module.startswith("bptorch.nn"):
            assert not [d for d in deps if d.startswith(tools)], module
            fns = [d for d in deps if d.startswith("bptorch.functions")
                   and d not in ("bptorch.functions.base", "bptorch.functions.attention",
                                 "bptorch.functions.conv")]
            assert not fns, f"{module} applies Functions directly: {fns}"


def _function_classes() -> list[type]:
    found = []
    for info in pkgutil.iter_modules(bptorch.functions.__path__, "bptorch.functions."):
        if info.name in SHIMS:
            continue
        module = importlib.import_module(info.name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, torch.autograd.Function) and obj.__module__ == module.__name__:
                found.append(obj)
    return found


def test_every_function_derives_from_bpfunction():
    classes = _function_classes()
    assert len(classes) >= 20  # the walk found them: linear, conv, ..., recurrent, feedback
    for cls in classes:
        if cls is not BPFunction:
            assert issubclass(cls, BPFunction), cls


def test_import_loads_neither_dynamo_nor_the_lazy_modules():
    code = ("import sys, bptorch\n"
            "bad = [m for m in ('torch._dynamo', 'bptorch.data', 'bptorch.compile', "
            "'bptorch.convert', 'bptorch.distributed', 'bptorch.threads', 'bptorch.routing', "
            "'torchvision', "
            "'matplotlib') if m in sys.modules]\n"
            "assert not bad, bad\n"
            "bptorch.nn.Linear(3, 2)(__import__('torch').randn(4, 3)).sum().backward()\n"
            "assert 'torch._dynamo' not in sys.modules\n"
            "assert bptorch.data.load_mnist and bptorch.compile.sgd_steps\n"
            "assert bptorch.convert.to_torch_nn and bptorch.threads.set_threads\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT.parent)


MOVED = [
    ("bptorch.functions.layers", "DenseFunction", "bptorch.functions.linear"),
    ("bptorch.functions.layers", "LinearFeedbackFunction", "bptorch.functions.feedback"),
    ("bptorch.functions.pooling", "AvgPool2dFunction", "bptorch.functions.pool"),
    ("bptorch.functions.conv", "MaxPool2dFunction", "bptorch.functions.pool"),
    ("bptorch.functions.conv", "DropoutFunction", "bptorch.functions.dropout"),
    ("bptorch.functions.conv", "check_conv2d", "bptorch._checks"),
    ("bptorch.functions.normalization", "check_layer_norm", "bptorch._checks"),
    ("bptorch.nn.pooling", "AvgPool2d", "bptorch.nn.pool"),
    ("bptorch.nn.conv", "MaxPool2d", "bptorch.nn.pool"),
    ("bptorch.nn.conv", "Dropout", "bptorch.nn.dropout"),
    ("bptorch.nn.conv", "Flatten", "bptorch.nn.dropout"),
]


@pytest.mark.parametrize("old,name,new", MOVED, ids=[f"{o}.{n}" for o, n, _ in MOVED])
def test_moved_names_warn_and_still_work(old, name, new):
    with pytest.warns(DeprecationWarning, match=f"{old}.{name} has moved to {new}"):
        obj = getattr(importlib.import_module(old), name)
    assert obj is getattr(importlib.import_module(new), name)
    with pytest.raises(AttributeError):
        getattr(importlib.import_module(old), "NoSuchName")


def test_current_paths_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        subprocess.run([sys.executable, "-W", "error::DeprecationWarning", "-c",
                        "import bptorch, bptorch.convert, bptorch.compile"],
                       check=True, cwd=ROOT.parent)


def test_no_private_names_of_functional_outside_it():
    """nn and the whole-model tools use functional's public names only."""
    for path in ROOT.rglob("*.py"):
        if path.name == "functional.py":
            continue
        tree = ast.parse(path.read_text())
        aliases = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                   for a in n.names if a.name == "functional"}
        aliases |= {a.asname for n in ast.walk(tree) if isinstance(n, ast.Import)
                    for a in n.names if a.name == "bptorch.functional" and a.asname}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").endswith("functional") \
                    and not (node.module or "").startswith("torch"):
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{path.name} imports {private} from functional"
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                    and node.value.id in aliases and node.attr.startswith("_"):
                raise AssertionError(f"{path.name} uses functional.{node.attr}")
