"""benchmarks.extensions on one net, one round, bptorch only: the JSON row's layout, the
RESULTS.md section written between its markers (and kept by benchmarks.run), and a
quantity collect does not know yet skipped."""
from __future__ import annotations

import json

import pytest

from benchmarks import extensions as bench


def test_one_round_rows_section_and_skip(tmp_path, monkeypatch):
    monkeypatch.setitem(bench.QUANTITIES, "no_such_quantity",
                        dict(bptorch=None, target=2.0, memory=False, peers={}))
    out, md = tmp_path / "ext.json", tmp_path / "RESULTS.md"
    md.write_text("# bench\n\nabove\n")
    result = bench.main(["--nets", "mlp", "--repeats", "1", "--no-peers", "--quantities",
                         "batch_l2", "private", "no_such_quantity", "--json", str(out),
                         "--markdown", str(md)])
    assert result["skipped"] == ["no_such_quantity"]
    saved = json.loads(out.read_text())
    (row,) = saved["rows"]
    assert row["net"] == "mlp" and row["batch"] == 128 and row["plain_ms"] > 0
    assert set(row["quantities"]) == {"batch_l2", "private"}
    for q in row["quantities"].values():
        assert q["ratio"] > 0 and q["peak_bytes"] > 0 and q["peak_ratio"] > 0
    assert len(row["load_before"]["loadavg_1_5_15"]) == 3
    text = md.read_text()
    assert text.startswith("# bench\n\nabove\n") and text.count(bench.BEGIN) == 1
    assert "| mlp | 128 |" in text and "| batch_l2 |" in text
    bench.write_section(bench.markdown(saved), md)  # rewritten in place, not appended
    assert md.read_text().count(bench.BEGIN) == 1
    from benchmarks.run import _kept_sections
    assert _kept_sections(str(md)).strip().startswith(bench.BEGIN)


def test_known_names():
    assert bench.known("batch_l2") and bench.known("private")
    assert not bench.known("no_such_quantity")


def test_peak_bytes_sees_a_temporary():
    import torch

    big = bench.peak_bytes(lambda: torch.ones(1000, 1000).sum())
    assert big >= 4_000_000
