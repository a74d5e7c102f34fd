"""Issue 10's protocol: bytes model, bandwidth, roofline, quiet rounds, verdicts, the generated doc section.

Why fakes: these rules decide whether a verdict is printed at all; they must hold
whatever the machine is doing, so the busy share, the timings and the records are
made up here and the arithmetic is checked against hand-computed values.
"""
from __future__ import annotations

import itertools
import json
from typing import Iterator, Optional

import pytest
import torch

from bench import docgen, report, roofline, verdict
from bench.cases import Case
from bench.cli import thread_counts
from bench.impls import ImplSet
from bench.load import collect_quiet_rounds
from bench.runner import QuietPolicy, run_case

MIB = 2**20


def test_bytes_moved_counts_one_read_per_pass_and_one_gradient_write() -> None:
    n, c = 4096, 32768
    logits = n * c * 4
    lse = n * 4
    prob = roofline.bytes_moved((n, c), 4, "prob", False, "fwdbwd")
    assert prob == (logits + logits + lse) + (logits + logits + lse + logits)  # fwd, then bwd + grad
    index = roofline.bytes_moved((n, c), 4, "index", False, "fwdbwd")
    assert index == (logits + n * 8 + lse) + (logits + n * 8 + lse + logits)
    weighted = roofline.bytes_moved((n, c), 4, "index", True, "fwdbwd")
    assert weighted - index == 2 * c * 4  # the weight once per pass
    assert roofline.bytes_moved((n, c), 4, "prob", False, "fwd") == logits + logits + lse
    # K-dim: positions are N * d1 * d2, classes are dim 1; bfloat16 halves the tensors, not the indices
    kdim = roofline.bytes_moved((16, 21, 256, 256), 2, "index", False, "fwdbwd")
    numel, positions = 16 * 21 * 256 * 256, 16 * 256 * 256
    assert kdim == 3 * numel * 2 + 2 * positions * 8 + 2 * positions * 4
    with pytest.raises(ValueError):
        roofline.bytes_moved((n, c), 4, "prob", False, "bwd")


def test_roofline_share_is_ideal_time_over_measured_time() -> None:
    # 2 GB at 10 GB/s is 200 ms; measured 250 ms -> 80 % of the roofline
    assert roofline.roofline_share(2 * 10**9, 10 * 10**9, 250.0) == pytest.approx(0.8)
    assert roofline.copy_bytes(256) == 512 * MIB
    with pytest.raises(ValueError):
        roofline.roofline_share(1, 0.0, 1.0)


def test_copy_bandwidth_from_quiet_rounds_only() -> None:
    quiet = roofline.copy_bandwidth(1, size_mib=8, reps=3, busy=lambda _: 0.0)
    assert len(quiet["seconds"]) == 3 and quiet["dropped"] == 0
    median = sorted(quiet["seconds"])[1]
    assert quiet["bytes_per_s"] == pytest.approx(roofline.copy_bytes(8) / median)
    busy = roofline.copy_bandwidth(1, size_mib=8, reps=3, max_rounds=4, busy=lambda _: 0.5)
    assert busy["bytes_per_s"] is None and busy["seconds"] == [] and busy["dropped"] == 4
    assert torch.get_num_threads() >= 1  # the thread count was restored (no exception escaped)


def _busy_sequence(values: list[float]):
    it: Iterator[float] = iter(values)
    return lambda _window: next(it)


def test_a_round_busy_after_it_is_discarded_and_retried() -> None:
    calls = []

    def measure() -> float:
        calls.append(1)
        return float(len(calls))

    # samples: before r1 0.0, after r1 0.5 (r1 dropped; also r2's before -> r2 skipped unmeasured),
    # then 0.0 before r3, 0.05 after r3 (kept), 0.02 after r4 (kept)
    busy = _busy_sequence([0.0, 0.5, 0.0, 0.05, 0.02])
    rounds = collect_quiet_rounds({"a": measure}, reps=2, max_rounds=10, busy_limit=0.10,
                                  check_after=True, busy=busy)
    assert rounds.kept() == 2 and rounds.dropped == 2
    assert rounds.samples["a"] == [2.0, 3.0]  # round 1's sample (1.0) was measured but not kept
    assert rounds.busy_seen == [0.0, 0.05] and rounds.busy_after == [0.05, 0.02]


def test_waiting_for_quiet_is_bounded_in_time_not_rounds() -> None:
    # busy for 4 samples, then quiet: waiting costs no round, and 2 rounds are kept
    busy = _busy_sequence([0.5, 0.5, 0.5, 0.5, 0.0, 0.0, 0.0])
    rounds = collect_quiet_rounds({"a": lambda: 1.0}, reps=2, max_rounds=2, busy_limit=0.10,
                                  check_after=True, busy=busy, window_s=0.25, max_wait_s=1.0)
    assert rounds.kept() == 2 and rounds.dropped == 0 and rounds.waited_s == pytest.approx(1.0)
    # never quiet: gives up once the wait budget is spent, having run no round
    ran = []
    never = collect_quiet_rounds({"a": lambda: ran.append(1)}, reps=2, max_rounds=2, busy_limit=0.10,
                                 check_after=True, busy=lambda _: 0.5, window_s=0.25, max_wait_s=1.0)
    assert never.kept() == 0 and ran == [] and never.waited_s == pytest.approx(1.25)


def test_quiet_rounds_are_bounded() -> None:
    rounds = collect_quiet_rounds({"a": lambda: 1.0}, reps=3, max_rounds=5, busy_limit=0.10,
                                  check_after=True, busy=lambda _: 0.2)
    assert rounds.kept() == 0 and rounds.dropped == 5


def _record(impl: str, times: list[float], *, threads: int = 2, quiet: bool = True,
            shape: str = "4096x32768", dtype: str = "float32", target: str = "prob",
            peak: Optional[int] = 100, grad: int = 100, nbytes: int = 10**9,
            bandwidth: Optional[float] = 10**10, agrees: bool = True,
            smoothing: float = 0.0, weighted: bool = False, busy: float = 0.02,
            bandwidth_busy: Optional[float] = 0.01) -> dict:
    case = Case(shape, dtype, target, smoothing, weighted)
    return {
        "case": {"shape": shape, "dtype": dtype, "target": target, "label_smoothing": smoothing,
                 "weighted": weighted},
        "label": case.label, "mode": "fwdbwd", "impl": impl, "threads": threads,
        "allocator": "default", "times_ms": times if quiet else times[:1],
        "peak_bytes": [peak] * (len(times) if quiet else 1), "grad_bytes": grad,
        "bytes_moved": nbytes, "bandwidth_bytes_per_s": bandwidth, "quiet": quiet,
        "bandwidth_busy_max": bandwidth_busy,
        "check": {"agrees_with_stock": agrees, "first_call_s": 0.1, "grad_fn": "X",
                  "loss_rel_error": 0.0, "grad_rel_error": 0.0},
        "rounds": {"kept": len(times) if quiet else 1, "dropped": 0 if quiet else 9,
                   "busy_before": [0.01], "busy_after": [busy], "busy_limit": 0.1},
    }


def _by_target(verdicts: list[verdict.Verdict]) -> dict[str, verdict.Verdict]:
    return {item.target: item for item in verdicts}


def test_verdicts_met_and_missed_from_paired_ratios_roofline_and_peak() -> None:
    # paired ratios 0.8, 0.8, 0.9 -> median 0.8 <= 0.85; roofline: 1e9 B at 1e10 B/s = 100 ms
    # ideal over a 125 ms median -> 0.8 >= 0.75; peak 104/100 <= 1.05
    patch = _record("patch", [80.0, 125.0, 180.0], peak=104)
    compile_ = _record("compile", [100.0, 156.25, 200.0])
    got = _by_target(verdict.evaluate([patch, compile_]))
    assert got["time"].state == verdict.MET and got["time"].value == pytest.approx(0.8)
    assert got["roofline"].state == verdict.MET and got["roofline"].value == pytest.approx(0.8)
    assert got["memory"].state == verdict.MET and got["memory"].value == pytest.approx(1.04)
    slow = _record("patch", [90.0, 200.0, 300.0], peak=110)
    got = _by_target(verdict.evaluate([slow, compile_]))
    assert got["time"].state == verdict.MISSED and got["time"].value == pytest.approx(1.28)
    assert got["roofline"].state == verdict.MISSED and got["roofline"].value == pytest.approx(0.5)
    assert got["memory"].state == verdict.MISSED
    assert "**" in got["time"].cell() and "missed" in got["time"].cell()


def test_no_verdict_for_a_case_measured_while_busy() -> None:
    patch = _record("patch", [80.0, 125.0, 180.0], quiet=False)
    compile_ = _record("compile", [100.0, 156.25, 200.0])
    verdicts = verdict.evaluate([patch, compile_])
    assert {item.state for item in verdicts} == {verdict.NOT_MEASURED}
    assert all("busy" in item.reason for item in verdicts)
    # the other implementation being busy is enough to withhold the time verdict
    got = _by_target(verdict.evaluate([_record("patch", [80.0, 125.0, 180.0]),
                                       _record("compile", [1.0, 1.0, 1.0], quiet=False)]))
    assert got["time"].state == verdict.NOT_MEASURED and got["memory"].state == verdict.MET


def test_a_relaxed_busy_limit_never_yields_a_verdict() -> None:
    # complete rounds (quiet under --busy-limit 1.0) but others used 50% after one of them
    patch = _record("patch", [80.0, 125.0, 180.0], busy=0.5)
    compile_ = _record("compile", [100.0, 156.25, 200.0], busy=0.5)
    verdicts = verdict.evaluate([patch, compile_])
    assert {item.state for item in verdicts} == {verdict.NOT_MEASURED}
    assert all("others up to 50%" in item.reason for item in verdicts)
    # the lenient printed table still shows the numbers; the strict (published) one does not
    assert "80.0" in report.table([patch, compile_]) and "80.0" not in report.table([patch, compile_], True)
    busy_bandwidth = _by_target(verdict.evaluate([_record("patch", [80.0, 125.0, 180.0], bandwidth_busy=0.3),
                                                  _record("compile", [100.0, 156.25, 200.0])]))
    assert busy_bandwidth["roofline"].state == verdict.NOT_MEASURED
    assert busy_bandwidth["time"].state == verdict.MET


def test_roofline_only_at_the_target_shape_and_needs_a_bandwidth() -> None:
    other = verdict.evaluate([_record("patch", [1.0] * 3, shape="32768x1024"),
                              _record("compile", [2.0] * 3, shape="32768x1024")])
    assert "roofline" not in _by_target(other)
    no_bw = _by_target(verdict.evaluate([_record("patch", [1.0] * 3, bandwidth=None),
                                         _record("compile", [2.0] * 3, bandwidth=None)]))
    assert no_bw["roofline"].state == verdict.NOT_MEASURED and "bandwidth" in no_bw["roofline"].reason
    disagree = _by_target(verdict.evaluate([_record("patch", [1.0] * 3, agrees=False),
                                            _record("compile", [2.0] * 3)]))
    assert disagree["time"].state == verdict.NOT_MEASURED


def test_run_time_and_full_matrix_coverage() -> None:
    assert verdict.run_time_verdict(24 * 60, True).state == verdict.MET
    assert verdict.run_time_verdict(26 * 60, True).state == verdict.MISSED
    assert verdict.run_time_verdict(60, False).state == verdict.NOT_MEASURED
    records = [
        _record(impl, [1.0], threads=threads, shape=shape, dtype=dtype, target=target,
                smoothing=smoothing, weighted=weighted)
        for impl in ("compile", "patch") for threads in (1, 2)
        for shape, dtype, target, smoothing, weighted in itertools.product(*verdict.FULL_MATRIX.values())
    ]
    assert len(records) == 2 * 2 * 48 and verdict.covers_full_matrix(records)
    assert not verdict.covers_full_matrix([r for r in records if r["threads"] == 2])
    assert not verdict.covers_full_matrix(records[1:])


def test_thread_counts_resolve_default_and_deduplicate() -> None:
    assert thread_counts("1,default", 2) == [1, 2]
    assert thread_counts("1,default", 1) == [1]
    assert thread_counts("default,4", 2) == [2, 4]


def test_tables_print_no_numbers_for_busy_rows() -> None:
    records = [_record("patch", [80.0, 125.0, 180.0], quiet=False, threads=1),
               _record("compile", [100.0, 156.25, 200.0], quiet=False, threads=1),
               _record("patch", [80.0, 125.0, 180.0]), _record("compile", [100.0, 156.25, 200.0])]
    full = report.table(records).splitlines()
    compact = report.compact_table(records).splitlines()
    busy_rows = [line for line in full + compact if line.startswith("| default | 1 |")]
    assert len(busy_rows) == 3 and all("not measured" in line and "80.0" not in line for line in busy_rows)
    for lines in (full, compact):
        widths = {line.count("|") for line in lines}
        assert len(widths) == 1, lines  # every row has the header's number of cells
    quiet_row = next(line for line in compact if line.startswith("| default | 2 |"))
    assert "0.80" in quiet_row  # roofline share of patch, from the fake bandwidth
    summary = report.target_summary(records, 30 * 60, False)
    assert "| time | 1 | 0 | 0 | 1 |" in summary and "| time | 2 | 1 | 0 | 0 |" in summary


def _run(records: list[dict]) -> dict:
    meta = {"torch": "2.13.0", "cpu": "fake", "cpu_capability": "AVX2", "threads": 2,
            "thread_counts": [1, 2], "parallel_backend": "OpenMP", "THP_MEM_ALLOC_ENABLE": None,
            "kernel_thp": "madvise", "memory_method": "fake", "impls": ["compile", "patch"],
            "seconds": 60.0, "loadavg_start": [0.1], "loadavg_end": [0.2],
            "patch_series_sha256": "abc", "complete": True, "impl_notes": [], "reps": 3, "warmup": 1,
            "bandwidth_start": {"1": {"size_mib": 256, "bytes_per_s": 9e9},
                                "2": {"size_mib": 256, "bytes_per_s": None}},
            "bandwidth_end": {"1": {"size_mib": 256, "bytes_per_s": 1e10},
                              "2": {"size_mib": 256, "bytes_per_s": 1.2e10}},
            "bandwidth_used": {"1": 1e10, "2": 1.2e10},
            "quiet_policy": {"busy_limit": 0.1, "max_rounds": 11, "window_s": 0.25, "wait_idle_s": 0.0}}
    return {"command": "python -m bench", "date": "2026-11-29 20:00 UTC", "seconds": 60.0,
            "meta": {"default": meta}, "records": records}


DOC = """# Title

## Usage
keep me

## Full matrix (old)
old numbers 1234

## Closing note
keep me too
"""


def test_doc_rewrite_replaces_only_the_matrix_section() -> None:
    records = [_record("patch", [80.0, 125.0, 180.0], quiet=False, threads=1),
               _record("compile", [100.0, 156.25, 200.0], quiet=False, threads=1),
               _record("patch", [80.0, 125.0, 180.0]), _record("compile", [100.0, 156.25, 200.0])]
    block = docgen.render(_run(records))
    assert block.startswith(docgen.BEGIN) and block.endswith(docgen.END)
    assert "1 of 2" in block and "not measured" in block
    assert "not measured (busy)" in block  # the busy bandwidth sample is not printed as a number
    once = docgen.rewrite(DOC, block)
    assert "old numbers" not in once and "keep me\n" in once and once.endswith("## Closing note\nkeep me too\n")
    assert once.startswith("# Title\n\n## Usage\nkeep me\n\n" + docgen.HEADING + "\n" + docgen.BEGIN)
    # a second rewrite goes between the markers and changes nothing else
    again = docgen.rewrite(once, block.replace("fake", "other"))
    assert again == once.replace("fake", "other")
    appended = docgen.rewrite("# Only a title\n", block)
    assert appended == "# Only a title\n\n" + docgen.HEADING + "\n" + block + "\n"


def test_doc_generation_refuses_old_or_all_busy_runs(tmp_path) -> None:
    old = _record("patch", [1.0])
    del old["quiet"]
    with pytest.raises(docgen.RefusedRun):
        docgen.render(_run([old]))
    busy = [_record("patch", [1.0, 2.0], quiet=False), _record("compile", [1.0, 2.0], quiet=False)]
    with pytest.raises(docgen.RefusedRun):
        docgen.render(_run(busy))
    run_json, doc = tmp_path / "run.json", tmp_path / "doc.md"
    run_json.write_text(json.dumps(_run(busy)))
    doc.write_text(DOC)
    assert docgen.main([str(run_json), "--doc", str(doc)]) == 1
    assert doc.read_text() == DOC  # refused: the document is untouched


def test_run_case_measures_each_thread_count_and_marks_busy_cases() -> None:
    case = Case("8x16", "float32", "index", 0.0, False)
    impls = ImplSet(["torch"])
    quiet = run_case(case, impls, [1, 2], ["fwdbwd"], reps=2, warmup=0, measure_memory=False,
                     policy=QuietPolicy(busy_limit=1.0, max_rounds=4, window_s=0.01))
    assert [(r["threads"], r["quiet"], len(r["times_ms"])) for r in quiet] == [(1, True, 2), (2, True, 2)]
    assert quiet[0]["bytes_moved"] == roofline.bytes_moved((8, 16), 4, "index", False, "fwdbwd")
    busy = run_case(case, impls, [1], ["fwdbwd"], reps=2, warmup=0, measure_memory=False,
                    policy=QuietPolicy(busy_limit=-0.01, max_rounds=3, window_s=0.01, max_wait_s=0.05))
    assert busy[0]["quiet"] is False and busy[0]["times_ms"] == []
    assert busy[0]["rounds"]["kept"] == 0 and busy[0]["rounds"]["waited_s"] > 0.05


def test_relative_error_in_slices_matches_float64_and_keeps_nan() -> None:
    from bench import runner

    expected = torch.randn(3, 5_000_000)
    value = expected + 1e-5 * torch.randn_like(expected)
    exact = float((value.double() - expected.double()).abs().max() / expected.double().abs().max())
    assert runner._relative_error(value, expected) == pytest.approx(exact, rel=1e-3)
    value[2, 4_999_999] = float("nan")  # in the last slice
    assert runner._relative_error(value, expected) != runner._relative_error(value, expected)  # NaN
    halves = expected.bfloat16()
    assert runner._relative_error(halves, halves) == 0.0
