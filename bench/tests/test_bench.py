"""Checks of the benchmark's own machinery: statistics, the peak-memory meter, inputs, CLI.

Why: a benchmark whose meter or ratios are wrong produces confident wrong numbers;
these tests pin the parts that would fail silently.
"""
from __future__ import annotations

import json

import pytest
import torch

from bench import stats
from bench.cases import Case, make_inputs, parse_shape
from bench.cli import main
from bench.memory import PeakMeter, hwm_reset_works


def test_paired_ratio_differs_from_ratio_of_medians() -> None:
    slow = [10.0, 20.0, 40.0]
    fast = [5.0, 5.0, 40.0]
    assert stats.ratio_of_medians(fast, slow) == pytest.approx(0.25)
    assert stats.median_paired_ratio(fast, slow) == pytest.approx(0.5)


def test_quartiles_and_mismatched_pairs() -> None:
    assert stats.quartiles([1.0, 2.0, 3.0, 4.0, 5.0]) == (2.0, 4.0)
    with pytest.raises(ValueError):
        stats.median_paired_ratio([1.0], [1.0, 2.0])


@pytest.mark.skipif(not hwm_reset_works()[0], reason="needs Linux VmHWM reset")
def test_peak_meter_counts_touched_pages_only() -> None:
    with PeakMeter(True) as touched:
        block = torch.ones(16 * 2**20)  # 64 MiB, written
        del block
    with PeakMeter(True) as untouched:
        block = torch.empty(16 * 2**20)  # reserved, never written
        del block
    assert 60 * 2**20 <= touched.peak_bytes <= 80 * 2**20
    assert untouched.peak_bytes < 8 * 2**20


def test_inputs_match_the_case() -> None:
    assert parse_shape("16x21x256x256") == (16, 21, 256, 256)
    assert parse_shape("3x5x2") == (3, 5, 2)
    with pytest.raises(ValueError):
        parse_shape("7")
    probs = make_inputs(Case("3x5x2", "bfloat16", "prob", 0.1, True))
    assert probs.target.dtype == torch.bfloat16 and probs.target.shape == (3, 5, 2)
    torch.testing.assert_close(probs.target.float().sum(1), torch.ones(3, 2), atol=2e-2, rtol=0)
    assert probs.weight is not None and probs.weight.shape == (5,)
    assert probs.grad_bytes == 3 * 5 * 2 * 2
    indices = make_inputs(Case("3x5x2", "float32", "index", 0.0, False))
    assert indices.target.dtype == torch.int64 and indices.target.shape == (3, 2)
    assert int(indices.target.max()) < 5 and indices.weight is None


def test_cli_end_to_end_both_allocators(tmp_path) -> None:
    # --busy-limit 1.0: this checks the plumbing on a shared machine; quiet gating has its own tests
    out = tmp_path / "bench.json"
    code = main(["--impls", "torch", "--shapes", "8x16", "--dtypes", "float32", "--targets", "prob",
                 "--smoothing", "0", "--weight", "off", "--modes", "fwdbwd", "--reps", "2",
                 "--threads", "1,2", "--busy-limit", "1.0", "--busy-window", "0.01",
                 "--bandwidth-mib", "8", "--json", str(out), "--plot", ""])
    assert code == 0
    run = json.loads(out.read_text())
    records = run["records"]
    assert {r["allocator"] for r in records} == {"default", "thp"}
    assert sorted((r["allocator"], r["threads"]) for r in records) == [
        ("default", 1), ("default", 2), ("thp", 1), ("thp", 2)]
    for record in records:
        assert len(record["times_ms"]) == 2 and all(t > 0 for t in record["times_ms"])
        assert record["check"]["agrees_with_stock"] and record["quiet"]
        assert record["bandwidth_bytes_per_s"] > 0
    for meta in run["meta"].values():
        assert meta["thread_counts"] == [1, 2] and meta["parallel_backend"] != "unknown"
        assert set(meta["bandwidth_start"]) == {"1", "2"} and set(meta["bandwidth_end"]) == {"1", "2"}
