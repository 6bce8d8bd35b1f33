"""Every bad flag value a clear answer (issue 24): argparse's usage error naming the flag,
exit status 2, no traceback, before any work starts.

One test per kind of check (``bptorch.cli``'s types, each word for word), every case of
the issue's table through the scripts' own ``main``, and a walk over every script's
parser: each flag with a value is a choice, a checked type (whose ``bad_examples`` it
must refuse), or listed here as free text.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
from pathlib import Path

import pytest

import benchmarks
import experiments
from bptorch import cli

ROOT = Path(__file__).resolve().parent.parent


def script_modules() -> list[str]:
    """Every module of experiments/ and benchmarks/ with a command line."""
    names = []
    for package in (experiments, benchmarks):
        for info in pkgutil.iter_modules(package.__path__):
            path = Path(package.__path__[0]) / f"{info.name}.py"
            if "argparse" in path.read_text():
                names.append(f"{package.__name__}.{info.name}")
    return sorted(names)


SCRIPTS = script_modules()

# flags whose value is free text: a file to write (any name), legend labels
FREE_TEXT = {"--save", "--save-test-probs", "--labels"}


def parse_error(parser: argparse.ArgumentParser, argv: list[str], capsys) -> str:
    """Parse argv, expecting argparse's usage error; return its stderr."""
    with pytest.raises(SystemExit) as e:
        parser.parse_args(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2, (argv, err)
    assert err.startswith("usage: ") and "Traceback" not in err, err
    return err


def one_flag(flag: str, type_) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="prog")
    p.add_argument(flag, type=type_)
    return p


# -- one test per kind of check, word for word ---------------------------------------------
@pytest.mark.parametrize("type_, value, message", [
    (cli.positive_int, "0", "expected an integer >= 1, got '0'"),
    (cli.positive_int, "-4", "expected an integer >= 1, got '-4'"),
    (cli.positive_int, "2.5", "expected an integer >= 1, got '2.5'"),
    (cli.non_negative_int, "-1", "expected an integer >= 0, got '-1'"),
    (cli.non_negative_int, "ten", "expected an integer >= 0, got 'ten'"),
    (cli.positive_float, "-0.5", "expected a number > 0, got '-0.5'"),
    (cli.positive_float, "0", "expected a number > 0, got '0'"),
    (cli.positive_float, "nan", "expected a number > 0, got 'nan'"),
    (cli.non_negative_float, "-0.001", "expected a number >= 0, got '-0.001'"),
    (cli.non_negative_float, "inf", "expected a number >= 0, got 'inf'"),
    (cli.finite_float, "nan", "expected a finite number, got 'nan'"),
    (cli.probability, "1", "expected a number in [0, 1), got '1'"),
    (cli.probability, "-0.1", "expected a number in [0, 1), got '-0.1'"),
    (cli.threads, "0", "expected \"auto\" or a thread count >= 1, got '0'"),
    (cli.thread_count, "auto", "expected a thread count >= 1, got 'auto'"),
    (cli.device, "gpu", "expected a device on this machine (cpu"),
    (cli.existing_file, "missing.pt", "expected an existing file, got 'missing.pt' (no such file)"),
    (cli.existing_file, ".", "expected an existing file, got '.' (a directory)"),
    (cli.json_path, "out.txt", "expected a file name ending in .json, got 'out.txt'"),
    (cli.json_file, "missing.json", "expected an existing file, got 'missing.json' (no such "
                                    "file)"),
    (cli.folder, __file__, f"expected a folder (created if missing), got {__file__!r} (a file)"),
    (cli.output_path(".md"), "out", "expected a file name ending in .md, got 'out'"),
    (cli.plot_path, "curves.txt", "expected a file name ending in a format matplotlib writes "
                                  "(.avif, .eps, .gif, .jpeg, .jpg, .pdf"),
])
def test_each_kind_of_check_names_the_flag_and_both_values(type_, value, message, capsys):
    err = parse_error(one_flag("--flag", type_), ["--flag", value], capsys)
    assert f"prog: error: argument --flag: {message}" in err, err


@pytest.mark.parametrize("type_, value, parsed", [
    (cli.positive_int, "3", 3), (cli.non_negative_int, "0", 0),
    (cli.positive_float, "0.5", 0.5), (cli.non_negative_float, "0", 0.0),
    (cli.finite_float, "-2", -2.0), (cli.probability, "0", 0.0),
    (cli.probability, "0.5", 0.5), (cli.threads, "auto", "auto"), (cli.threads, "2", 2),
    (cli.thread_count, "1", 1), (cli.device, "cpu", "cpu"), (cli.json_path, "a/r.json", "a/r.json"),
    (cli.plot_path, "a/c.PNG", "a/c.PNG"), (cli.plot_path, "c.pdf", "c.pdf"),
])
def test_good_values_pass_through(type_, value, parsed):
    assert one_flag("--flag", type_).parse_args(["--flag", value]).flag == parsed


def test_existing_file_accepts_a_file(tmp_path):
    (tmp_path / "r.json").write_text("{}")
    assert cli.existing_file(str(tmp_path / "r.json")) == str(tmp_path / "r.json")
    assert cli.json_file(str(tmp_path / "r.json")) == str(tmp_path / "r.json")
    assert cli.folder(str(tmp_path / "new")) == str(tmp_path / "new")  # made when used
    assert cli.folder(str(tmp_path)) == str(tmp_path)


def test_json_file_refuses_what_is_not_json(tmp_path, capsys):
    (tmp_path / "run.json").write_text("Epoch 0: 9000 / 10000\n")
    err = parse_error(one_flag("--from-json", cli.json_file),
                      ["--from-json", str(tmp_path / "run.json")], capsys)
    assert (f"argument --from-json: expected a JSON file, got {str(tmp_path / 'run.json')!r} "
            "(JSONDecodeError: Expecting value: line 1 column 1 (char 0))") in err, err


def test_device_names_this_machines_devices():
    import torch

    with pytest.raises(argparse.ArgumentTypeError) as e:
        cli.device("cuda:99")
    here = "cpu" + (", cuda" if torch.cuda.is_available() else "")
    assert str(e.value).startswith(f"expected a device on this machine ({here}")
    assert str(e.value).endswith(", got 'cuda:99'")
    if not torch.cuda.is_available():
        with pytest.raises(argparse.ArgumentTypeError, match=r"^expected a device on this "
                                                             r"machine \(cpu\), got 'cuda'$"):
            cli.device("cuda")


def test_a_broken_type_is_caught_by_the_walk(capsys):
    """The walk below can fail: a flag with a plain ``type=int`` has no bad_examples and
    is not free text, and ``int`` lets -1 through."""
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int)
    action = p._actions[-1]
    assert not hasattr(action.type, "bad_examples") and "--epochs" not in FREE_TEXT
    assert p.parse_args(["--epochs", "-1"]).epochs == -1


# -- the issue's table, through the scripts' own main -------------------------------------
@pytest.fixture
def no_data(monkeypatch):
    """Fail the test if a script starts loading data: a bad value must stop before."""
    import bptorch.data

    def refuse(*args, **kwargs):
        raise AssertionError("the run started: load_mnist was called")

    monkeypatch.setattr(bptorch.data, "load_mnist", refuse)


@pytest.mark.parametrize("script, argv, message", [
    ("mnist", ["--epochs", "-1"], "argument --epochs: expected an integer >= 0, got '-1'"),
    ("mnist", ["--eta", "-0.5"], "argument --eta: expected a number > 0, got '-0.5'"),
    ("mnist", ["--batch-size", "0"], "argument --batch-size: expected an integer >= 1, got '0'"),
    ("mnist", ["--train-size", "0"], "argument --train-size: expected an integer >= 1, got '0'"),
    ("mnist", ["--sizes", "700", "30", "10"],
     "error: --sizes: expected 784 inputs first and 10 outputs last (28×28 images, 10 "
     "classes), got [700, 30, 10]"),
    ("mnist", ["--device", "gpu"], "argument --device: expected a device on this machine (cpu"),
    ("mnist", ["--load", "missing.pt"],
     "argument --load: expected an existing file, got 'missing.pt' (no such file)"),
    ("mnist", ["--plot", "curves.txt"],
     "argument --plot: expected a file name ending in a format matplotlib writes"),
    ("feedback", ["--epochs", "-1"], "argument --epochs: expected an integer >= 0, got '-1'"),
    ("sequence", ["--batch-size", "-4"],
     "argument --batch-size: expected an integer >= 1, got '-4'"),
])
def test_the_issues_table(script, argv, message, no_data, capsys):
    module = importlib.import_module(f"experiments.{script}")
    with pytest.raises(SystemExit) as e:
        module.main(argv + ["--no-progress"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err, err
    assert f"python -m experiments.{script}: " in err and message in err, err


@pytest.mark.parametrize("argv, message", [
    (["--sizes", "784"], "--sizes: expected at least two layer sizes (784 inputs ... 10 "
                         "outputs), got [784]"),
    (["--sizes", "784", "30", "5"], "--sizes: expected 784 inputs first and 10 outputs last"),
    (["--preset", "ch3", "--sizes", "100", "10"], "got [100, 10]"),
])
def test_mnist_sizes_against_the_data(argv, message, no_data, capsys):
    from experiments import mnist

    with pytest.raises(SystemExit) as e:
        mnist.main(argv + ["--no-progress"])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_mnist_load_of_what_torch_cannot_read(tmp_path, no_data, capsys):
    from experiments import mnist

    (tmp_path / "notes.pt").write_text("not a checkpoint")
    with pytest.raises(SystemExit) as e:
        mnist.main(["--load", str(tmp_path / "notes.pt"), "--epochs", "0"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    assert f"--load {tmp_path / 'notes.pt'}: not a checkpoint torch.load can read (" in err


def test_mnist_load_against_the_net_it_must_fit_before_the_data(tmp_path, no_data, capsys):
    """A checkpoint whose weights do not fit the sizes its config names: refused before
    the data loads (on the meta device), naming --load."""
    import torch

    from bptorch import Network
    from experiments import mnist

    config = dict(mnist.DEFAULTS, sizes=[784, 30, 10])
    torch.save({"model": Network([784, 100, 10]).state_dict(), "config": config},
               tmp_path / "lying.pt")
    with pytest.raises(SystemExit) as e:
        mnist.main(["--load", str(tmp_path / "lying.pt"), "--epochs", "0"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    assert (f"--load {tmp_path / 'lying.pt'}: the checkpoint's weights do not fit "
            "Network([784, 30, 10]): ") in err


@pytest.mark.parametrize("argv, message", [
    (["--model", "transformer", "--patch", "5"],
     "--patch: expected a divisor of 28, the image side (1, 2, 4, 7, 14 or 28), got 5"),
    (["--model", "transformer", "--dim", "30", "--heads", "4"],
     "--dim: expected a multiple of --heads 4 (each head takes dim/heads features), got 30"),
])
def test_sequence_architecture_checked_before_the_data(argv, message, no_data, capsys):
    from experiments import sequence

    with pytest.raises(SystemExit) as e:
        sequence.main(argv + ["--no-progress"])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_summarize_refuses_a_pattern_matching_nothing(capsys):
    from experiments import summarize

    err = parse_error(summarize.build_parser(), ["/nonexistent/*.json"], capsys)
    assert ("argument paths: expected JSON files or a glob pattern matching some, got "
            "'/nonexistent/*.json' (no such file)") in err


# -- the walk: every flag of every script -----------------------------------------------------
def value_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.nargs != 0 and not isinstance(a, argparse._HelpAction)]


def action_name(action: argparse.Action) -> str:
    return "/".join(action.option_strings) or action.dest


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_flag_of_every_script_is_checked(name, capsys):
    module = importlib.import_module(name)
    assert hasattr(module, "build_parser"), f"{name} has no build_parser()"
    parser = module.build_parser()
    tried = 0
    for action in value_actions(parser):
        flag = action_name(action)
        prefix = list(action.option_strings[:1])
        if action.choices is not None:
            bad = ["no-such-choice"]
        elif hasattr(action.type, "bad_examples"):
            bad = list(action.type.bad_examples)
        else:
            assert flag in FREE_TEXT, f"{name} {flag}: no checked type (bptorch.cli)"
            continue
        for value in bad:
            err = parse_error(parser, prefix + [value], capsys)
            assert f"error: argument {flag}: " in err, (name, flag, value, err)
            tried += 1
    assert tried or not value_actions(parser)


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_script_has_help(name, capsys):
    parser = importlib.import_module(name).build_parser()
    with pytest.raises(SystemExit) as e:
        parser.parse_args(["--help"])
    assert e.value.code == 0 and "usage: " in capsys.readouterr().out


# -- one vocabulary: the same flag, the same type, in every script -----------------------------
SAME = {"--json": cli.json_path, "--plot": cli.plot_path, "--from-json": cli.json_file,
        "--data-dir": cli.folder,
        "--load": cli.existing_file, "--device": cli.device, "--train-size": cli.positive_int,
        "--batch-size": cli.positive_int, "--epochs": cli.non_negative_int,
        "--seed": cli.non_negative_int, "--eta": cli.positive_float}


@pytest.mark.parametrize("name", SCRIPTS)
def test_one_vocabulary(name):
    parser = importlib.import_module(name).build_parser()
    for action in value_actions(parser):
        for flag in action.option_strings:
            if flag in SAME:
                assert action.type is SAME[flag], (name, flag, action.type)
            if flag == "--threads":
                assert action.type in (cli.threads, cli.thread_count), name
            if flag == "--engine":
                assert set(action.choices) <= set(cli.ENGINES), (name, action.choices)
                for engine in action.choices:  # one line each in --help
                    assert f"\n{engine}: {cli.ENGINES[engine]}" in "\n" + action.help, name


def test_engine_help_lists_one_engine_per_line(capsys):
    from experiments import mnist

    with pytest.raises(SystemExit):
        mnist.build_parser().parse_args(["--help"])
    out = capsys.readouterr().out
    lines = [line.strip() for line in out.splitlines()]
    for engine in mnist.ENGINES:
        assert any(line.startswith(f"{engine}: ") for line in lines), (engine, out)


@pytest.mark.parametrize("script", ["mnist", "conv_mnist", "resnet", "sequence"])
def test_old_engine_name_still_accepted(script):
    parser = importlib.import_module(f"experiments.{script}").build_parser()
    assert parser.parse_args(["--engine", "autograd"]).engine == "bptorch"
    assert parser.parse_args(["--engine", "native"]).engine == "native"


def test_summarize_groups_old_and_new_engine_names():
    from experiments.summarize import summarize

    def run(engine, seed):
        return {"config": {"preset": "ch1", "engine": engine, "seed": seed},
                "history": {"test_accuracy": [0.9], "validation_accuracy": [0.9],
                            "training_cost": [1.0], "epoch_seconds": [1.0]}}

    table = summarize([run("autograd", 1), run("bptorch", 2)]).splitlines()
    assert len(table) == 3 and table[2].startswith("| ch1 | bptorch | 2 |")


@pytest.mark.parametrize("tabulates", [True, False])
def test_replay_answers_from_json(tabulates, tmp_path, capsys):
    """cli.replay: None without --from-json; argparse's usage error without --plot (or
    --table, where the script tabulates); the table printed, the runs replotted."""
    run = tmp_path / "run.json"
    run.write_text("{}")
    p = argparse.ArgumentParser(prog="prog")
    cli.add_results_flags(p, "the curves", "a table" if tabulates else None)
    calls = []

    def replot(paths, path):
        calls.append((list(paths), path))
        return {"runs": list(paths)}

    table = (lambda paths: f"| {len(paths)} runs |") if tabulates else None
    assert cli.replay(p, p.parse_args([]), replot, table) is None
    with pytest.raises(SystemExit) as e:
        cli.replay(p, p.parse_args(["--from-json", str(run)]), replot, table)
    assert e.value.code == 2
    need = "--from-json needs --plot or --table" if tabulates else "--from-json needs --plot"
    assert need in capsys.readouterr().err and not calls
    out = tmp_path / "again.png"
    args = p.parse_args(["--from-json", str(run), str(run), "--plot", str(out)]
                        + (["--table"] if tabulates else []))
    assert cli.replay(p, args, replot, table) == {"runs": [str(run), str(run)]}
    assert calls == [([str(run), str(run)], str(out))]
    assert ("| 2 runs |" in capsys.readouterr().out) is tabulates
    if tabulates:  # --table alone: printed, nothing drawn
        args = p.parse_args(["--from-json", str(run), "--table"])
        assert cli.replay(p, args, replot, table) == {} and len(calls) == 1
        assert "| 1 runs |" in capsys.readouterr().out
