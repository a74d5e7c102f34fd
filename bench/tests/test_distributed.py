"""Checks of ``python -m bench.distributed``: the byte counter and the launcher.

Why: the issue's target is a byte count (<= 16 bytes per position per rank per
step), so the counter must be shown to see the collectives DTensor issues from
inside its dispatch, exactly once each, with the stated convention; and the
launcher's per-rank bytes must equal formulas derived from what each variant
communicates.  Each group of ranks is a few seconds of process start-up, so the
tiny benchmark runs once per module.
"""
from __future__ import annotations

import math

import pytest

from bench import comm_count
from bench.distributed import launch, merge_shape, parse_args, run_world, table

WORLD = 2
N, C = 16, 7  # C = 7 on 2 ranks: 4 + 3 classes, so the all-gather pads rank 1's shard to 4
C_SHARD = math.ceil(C / WORLD)
F32 = 4


def _phase(records, phase):
    return [r for r in records if r["phase"] == phase]


def test_ring_estimates() -> None:
    assert comm_count._ring_all_reduce(100, 4) == 150  # 2(W-1)/W x nbytes
    assert comm_count._ring_all_gather(100, 4) == 300  # (W-1) x shard nbytes
    assert comm_count._ring_scatter(100, 4) == 75


@pytest.fixture(scope="module")
def selftest():
    return launch(WORLD, ["--selftest"], 1, 300)


@pytest.mark.parametrize("rank", range(WORLD))
def test_counter_sees_known_collectives_once(selftest, rank) -> None:
    records = selftest[rank]["collectives"]
    # funcol.all_reduce of 5 float32: 20 bytes; ring 2(2-1)/2 x 20 = 20.
    (ar,) = _phase(records, "funcol_all_reduce")
    assert (ar["kind"], ar["payload_bytes"], ar["wire_bytes"], ar["group_size"]) == ("all_reduce", 20, 20.0, WORLD)
    # Eager dist.all_reduce of 3 float64 goes through c10d.allreduce_: 24 bytes.
    (eager,) = _phase(records, "eager_all_reduce")
    assert (eager["kind"], eager["payload_bytes"], eager["dtype"]) == ("all_reduce", 24, "torch.float64")
    # DTensor (3, 4) Shard(1) -> Replicate: all-gather of the (3, 2) local shard, 24 bytes, issued
    # inside DTensor's dispatch (the counter returns NotImplemented for ops on DTensors).
    (gather1,) = _phase(records, "shard1_to_replicate")
    assert (gather1["kind"], gather1["payload_bytes"], gather1["wire_bytes"]) == ("all_gather", 24, 24.0)
    # (3, 4) Shard(0): rows 2 + 1; the all-gather sends the padded (2, 4) shard from both ranks: 32 bytes.
    (gather0,) = _phase(records, "shard0_to_replicate")
    assert gather0["payload_bytes"] == 32
    (full,) = _phase(records, "full_tensor_forward")
    assert full["payload_bytes"] == 24
    # full_tensor's backward keeps the local slice of the gradient: no communication.
    assert _phase(records, "full_tensor_backward") == []
    assert selftest[rank]["grad_local"] == [[1.0, 1.0]] * 3
    assert len(records) == 5


@pytest.fixture(scope="module")
def tiny():
    args = parse_args(["--worlds", str(WORLD), "--positions", str(N), "--classes", str(C), "--reps", "1",
                       "--warmup", "0", "--keep-busy", "--probe-classes", "4",
                       "--variants", "patch/index,stock/index,gather/index,patch/index/ls=0.1,patch/prob,gather/prob"])
    run = run_world(args, WORLD)
    assert len(run["ranks"][0]["shapes"]) == 1  # the memory guard kept the requested shape
    return args, run, merge_shape(run["ranks"], 0)


def test_tiny_run_values_match_the_reference(tiny) -> None:
    _, _, merged = tiny
    for label, m in merged.items():
        assert m["reference_loss"] is not None, label
        assert m["loss"] == pytest.approx(m["reference_loss"], rel=1e-5), label
        assert m["losses_equal_on_ranks"] and m["bytes_equal_on_ranks"], label
        assert len(m["times"]) == 1 and m["times"][0] > 0, label


def test_gather_bytes(tiny) -> None:
    _, _, merged = tiny
    # gather: x.full_tensor() all-gathers the (N, ceil(C/W)) float32 shard (padded when uneven);
    # a probability target sharded like the input is gathered the same way; backward slices
    # the full gradient locally.
    assert merged["gather/index"]["fwd_payload"] == N * C_SHARD * F32
    assert merged["gather/prob"]["fwd_payload"] == 2 * N * C_SHARD * F32
    assert merged["gather/index"]["bwd_payload"] == merged["gather/prob"]["bwd_payload"] == 0
    assert set(merged["gather/index"]["collectives"]["forward"]) == {"all_gather"}


def test_stock_bytes_and_ops(tiny) -> None:
    _, _, merged = tiny
    stock = merged["stock/index"]
    # Stock loss_parallel (torch/distributed/tensor/parallel/loss.py): _log_softmax all-reduces the
    # per-position max (MAX) and sum of exponentials (SUM), nll_loss_forward all-reduces the
    # per-position picked log-probability (_MaskPartial's reduce): 3 x N float32; its backward
    # handlers communicate nothing.
    assert stock["fwd_payload"] == 3 * N * F32
    assert stock["bwd_payload"] == 0
    assert stock["collectives"]["forward"]["all_reduce"]["count"] == 3
    # Stock F.cross_entropy never reaches the series' fused op, even with the series loaded.
    assert not any("fused_cross_entropy" in op for op in stock["dtensor_ops"])
    assert "aten.nll_loss_forward.default" in stock["dtensor_ops"]
    assert "aten._fused_cross_entropy.default" in merged["patch/index"]["dtensor_ops"]


def test_patch_bytes_vocabulary_parallel(tiny) -> None:
    _, _, merged = tiny
    # The series' loss_parallel handlers (patch 0007): forward = MAX all-reduce of the N local
    # maxima + SUM all-reduce of the N sums of exponentials (float32 for float32 input) + ONE
    # float64 scalar all-reduce of the partial loss ("mean" on a (W,) mesh: no denominator
    # all-reduce); backward = nothing for class indices, one SUM all-reduce of the N target
    # masses for probabilities.
    for label in ("patch/index", "patch/index/ls=0.1", "patch/prob"):
        m = merged[label]
        forward = sorted(_phase(m["records"], "forward"), key=lambda r: r["payload_bytes"])
        assert [r["kind"] for r in forward] == ["all_reduce"] * 3, (label, forward)
        scalar, *per_position = forward
        assert (scalar["dtype"], scalar["payload_bytes"]) == ("torch.float64", 8), label
        assert [(r["dtype"], r["payload_bytes"]) for r in per_position] == [("torch.float32", N * F32)] * 2, label
        backward = _phase(m["records"], "backward")
        expected = [("all_reduce", "torch.float32", N * F32)] if label == "patch/prob" else []
        assert [(r["kind"], r["dtype"], r["payload_bytes"]) for r in backward] == expected, label
        assert (m["fwd_payload"] + m["bwd_payload"]) / N <= 16, label


def _row(payload: int, times: list, reference=None) -> dict:
    return {"fwd_payload": payload, "bwd_payload": 0, "fwd_wire": payload, "bwd_wire": 0, "times": times,
            "bytes_equal_on_ranks": True, "losses_equal_on_ranks": True, "peak_rss_bytes": None,
            "peak_bytes": None, "loss": 1.0, "reference_loss": reference}


def test_table_ratios_and_byte_verdict() -> None:
    merged = {"patch/index": _row(8 * 10, [1.0, 2.0, 3.0], reference=1.0),
              "stock/index": _row(12 * 10, [4.0, 4.0, 4.0]),
              "gather/index": _row(400, [8.0])}
    rows = table(merged, 2, 10, 100, 50)[2:]
    patch = rows[0].split(" | ")
    assert "8.0 (yes)" in patch and "0.50" in patch and "0.25" in patch  # 2/4 vs stock, 2/8 vs gather
    assert "40.0 (no)" in rows[2]
