"""experiments.private on a few steps: the JSON's layout, ε equal to Opacus's RDP accountant
for the same schedule, and --resume equal to the run never stopped."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("opacus")
pytest.importorskip("matplotlib")

from experiments import private  # noqa: E402

TINY = ["--train-size", "192", "--test-size", "500", "--batch-size", "64", "--no-progress", "--threads", "1"]


def test_tiny_run_json_and_epsilon(tmp_path):
    from opacus.accountants import RDPAccountant

    out = tmp_path / "run.json"
    private.main([*TINY, "--epochs", "2", "--activation", "relu", "--noise-multiplier", "1.1",
                  "--json", str(out), "--plot", str(tmp_path / "run.png")])
    run = json.loads(out.read_text())
    assert set(run) == {"config", "history", "final", "complete"} and run["complete"]
    c, h = run["config"], run["history"]
    for key in ("dataset", "activation", "noise_multiplier", "max_grad_norm", "delta",
                "sample_rate", "accountant", "epochs", "batch_size", "eta", "momentum",
                "seed", "train_size", "threads", "accountant_library"):
        assert key in c, key
    assert (c["dataset"], c["activation"], c["noise_multiplier"]) == ("mnist", "relu", 1.1)
    assert c["sample_rate"] == pytest.approx(1 / 3) and c["steps_per_epoch"] == 3
    assert set(h) >= {"test_accuracy", "epsilon", "steps", "epoch_seconds"}
    assert len(h["test_accuracy"]) == len(h["epsilon"]) == 2 and h["steps"] == [3, 6]
    for steps, eps in zip(h["steps"], h["epsilon"]):  # ε: Opacus's RDP, same (σ, q, steps)
        reference = RDPAccountant()
        reference.history = [(1.1, 1 / 3, steps)]
        assert eps == pytest.approx(reference.get_epsilon(1e-5), rel=1e-12)
    assert h["epsilon"][0] < h["epsilon"][1]
    assert run["final"]["test_accuracy"] == h["test_accuracy"][-1]
    assert run["final"]["epsilon"] == h["epsilon"][-1]
    assert run["final"]["meets_issue_target"] is None  # the target is tanh's
    assert (tmp_path / "run.png").stat().st_size > 0
    assert "| mnist | relu |" in private.table([str(out)])
    private.SCHEDULE, schedule = 1, private.SCHEDULE  # a run past the schedule: its epoch too
    try:
        row = private.table([str(out)]).splitlines()[2]
    finally:
        private.SCHEDULE = schedule
    assert f"| {h['test_accuracy'][0]:.2%} ({h['epsilon'][0]:.3f}) |" in row


def test_resume_continues_the_same_run(tmp_path):
    whole, split = tmp_path / "whole.json", tmp_path / "split.json"
    private.main([*TINY, "--epochs", "2", "--json", str(whole)])
    private.main([*TINY, "--epochs", "1", "--json", str(split)])
    private.main([*TINY, "--epochs", "2", "--json", str(split), "--resume"])
    a, b = json.loads(whole.read_text()), json.loads(split.read_text())
    assert b["config"]["resumed_at"] == [1]
    for key in ("test_accuracy", "epsilon", "train_loss", "steps"):
        assert a["history"][key] == b["history"][key], key
    with pytest.raises(SystemExit):  # another σ is another run
        private.main([*TINY, "--epochs", "3", "--json", str(split), "--resume",
                      "--noise-multiplier", "2"])
