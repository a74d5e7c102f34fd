"""Markdown report: one table row per (allocator, case, mode, implementation), then targets.

Why markdown: the same text is printed and pasted into ``docs/benchmarks.md``.
"""
from __future__ import annotations

from typing import Iterable, Optional

from bench import stats

MIB = 2**20
# Issue 3's targets at 4096 x 32768 float32, forward+backward, both target kinds.
TARGET_CASE = {"shape": "4096x32768", "dtype": "float32", "label_smoothing": 0.0, "weighted": False}
TARGET_MAX_VS_COMPILE = 0.8
TARGET_MAX_VS_TORCH = 0.35
TARGET_MAX_PEAK_PER_GRAD = 1.05


def _key(record: dict) -> tuple:
    return (record["allocator"], record["label"], record["mode"])


def _index(records: Iterable[dict]) -> dict[tuple, dict[str, dict]]:
    groups: dict[tuple, dict[str, dict]] = {}
    for record in records:
        groups.setdefault(_key(record), {})[record["impl"]] = record
    return groups


def _ratio_cell(record: dict, baseline: Optional[dict]) -> str:
    if baseline is None or baseline is record:
        return "—"
    of_medians = stats.ratio_of_medians(record["times_ms"], baseline["times_ms"])
    paired = stats.median_paired_ratio(record["times_ms"], baseline["times_ms"])
    return f"{of_medians:.2f} / {paired:.2f}"


def _memory_cells(record: dict) -> tuple[str, str]:
    summary = stats.peak_summary(record["peak_bytes"])
    if summary is None:
        return "n/a", "n/a"
    _, peak_max = summary
    return f"{peak_max / MIB:.0f}", f"{peak_max / record['grad_bytes']:.2f}"


def _busy_cell(record: dict) -> str:
    machine = record.get("machine")
    if machine is None:
        return "n/a"
    return f"{100 * machine['others_busy']:.0f}%"


def table(records: list[dict]) -> str:
    """The full results table (times in ms; ratios as 'ratio of medians / median paired ratio').

    'others busy' is the CPU share other processes used just before the case was measured.
    """
    lines = [
        "| allocator | case | mode | impl | median ms | IQR ms | min–max ms "
        "| × torch | × compile | peak MiB | peak / grad | others busy |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for (allocator, label, mode), by_impl in _index(records).items():
        for impl, record in by_impl.items():
            times = record["times_ms"]
            q1, q3 = stats.quartiles(times)
            peak_mib, peak_per_grad = _memory_cells(record)
            flag = "" if record["check"]["agrees_with_stock"] else " ⚠"
            lines.append(
                f"| {allocator} | {label} | {mode} | {impl}{flag} | {stats.median(times):.1f} "
                f"| {q1:.1f}–{q3:.1f} | {min(times):.1f}–{max(times):.1f} "
                f"| {_ratio_cell(record, by_impl.get('torch'))} "
                f"| {_ratio_cell(record, by_impl.get('compile'))} | {peak_mib} | {peak_per_grad} "
                f"| {_busy_cell(record)} |"
            )
    return "\n".join(lines)


def _verdict(value: float, limit: float) -> str:
    if value <= limit:
        return f"met ({value:.3f} <= {limit})"
    return f"MISSED by {100 * (value / limit - 1):.0f}% ({value:.3f} > {limit})"


def target_summary(records: list[dict]) -> str:
    """Issue 3's targets for ``patch`` (paired-ratio medians; peak is the max over reps)."""
    lines = []
    for (allocator, label, mode), by_impl in _index(records).items():
        patch = by_impl.get("patch")
        if patch is None or mode != "fwdbwd":
            continue
        case = patch["case"]
        if any(case[field] != value for field, value in TARGET_CASE.items()):
            continue
        parts = [f"{allocator}, {label}, fwd+bwd:"]
        if "compile" in by_impl:
            ratio = stats.median_paired_ratio(patch["times_ms"], by_impl["compile"]["times_ms"])
            parts.append(f"time vs compile {_verdict(ratio, TARGET_MAX_VS_COMPILE)};")
        if "torch" in by_impl:
            ratio = stats.median_paired_ratio(patch["times_ms"], by_impl["torch"]["times_ms"])
            parts.append(f"time vs torch {_verdict(ratio, TARGET_MAX_VS_TORCH)};")
        summary = stats.peak_summary(patch["peak_bytes"])
        if summary is not None:
            parts.append(
                f"peak/grad {_verdict(summary[1] / patch['grad_bytes'], TARGET_MAX_PEAK_PER_GRAD)}"
            )
        lines.append("- " + " ".join(parts))
    if not lines:
        return "Targets: not evaluated (needs `patch` at 4096x32768 float32 fwdbwd without options)."
    return "Targets (issue 3):\n" + "\n".join(lines)


def disagreements(records: list[dict]) -> str:
    """Cases where an implementation's loss or gradient differs from stock beyond tolerance."""
    seen = set()
    lines = []
    for record in records:
        check = record["check"]
        key = (record["allocator"], record["label"], record["impl"])
        if check["agrees_with_stock"] or key in seen:
            continue
        seen.add(key)
        lines.append(
            f"- ⚠ {record['allocator']} {record['label']} {record['impl']}: loss rel. error "
            f"{check['loss_rel_error']:.2e}, grad rel. error {check['grad_rel_error']:.2e}"
        )
    return "\n".join(lines)


def compact_table(records: list[dict]) -> str:
    """One row per (allocator, case, mode): medians of every implementation side by side.

    Ratio columns are medians of paired ratios against ``torch`` and ``compile``; memory
    columns are the max peak above the inputs over the gradient's size.
    """
    impls = list(dict.fromkeys(record["impl"] for record in records))
    others = [impl for impl in impls if impl != "torch"]
    ratio_pairs = [(impl, base) for impl in others for base in ("torch", "compile")
                   if base != impl and base in impls]
    header = (["allocator", "case", "mode"] + [f"{impl} ms" for impl in impls]
              + [f"{impl}/{base}" for impl, base in ratio_pairs]
              + [f"peak/grad {impl}" for impl in impls] + ["others busy"])
    lines = ["| " + " | ".join(header) + " |",
             "| --- | --- | --- |" + " ---: |" * (len(header) - 3)]
    for (allocator, label, mode), by_impl in _index(records).items():
        cells = [allocator, label, mode]
        for impl in impls:
            record = by_impl.get(impl)
            flag = "" if record is None or record["check"]["agrees_with_stock"] else " ⚠"
            if record is None:
                cells.append("—")
                continue
            milliseconds = stats.median(record["times_ms"])
            cells.append(f"{milliseconds:.0f}{flag}" if milliseconds >= 100 else f"{milliseconds:.1f}{flag}")
        for impl, base in ratio_pairs:
            if impl in by_impl and base in by_impl:
                cells.append(f"{stats.median_paired_ratio(by_impl[impl]['times_ms'], by_impl[base]['times_ms']):.2f}")
            else:
                cells.append("—")
        for impl in impls:
            cells.append(_memory_cells(by_impl[impl])[1] if impl in by_impl else "—")
        any_record = next(iter(by_impl.values()))
        cells.append(_busy_cell(any_record))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
