"""Markdown report: one table row per (allocator, threads, case, mode, implementation), then verdicts.

Why markdown: the same text is printed and written into ``docs/benchmarks.md``
(``bench.docgen``).  A (case, thread count, mode) that did not get enough quiet rounds
shows ``not measured`` instead of numbers, so no busy measurement reads as a result.
"""
from __future__ import annotations

from typing import Iterable, Optional

from bench import stats, verdict

MIB = 2**20
GB = 1e9


def _key(record: dict) -> tuple:
    return (record["allocator"], record.get("threads", 0), record["label"], record["mode"])


def gbps(entry: Optional[dict]) -> str:
    """A bandwidth measurement as text; busy ones are not numbers."""
    if not entry or not entry.get("bytes_per_s"):
        return "not measured (busy)"
    busy = entry.get("busy_max")
    flag = f" (others up to {100 * busy:.0f}%: not quiet)" if busy is not None and busy > verdict.QUIET_LIMIT else ""
    return f"{entry['bytes_per_s'] / GB:.1f} GB/s{flag}"


def header(command: str, date: str, when: str, metas: dict[str, dict]) -> str:
    """Command, date, and per allocator: machine, backend, thread counts, copy bandwidth, load."""
    lines = [f"Command: `{command}`  ", f"Date: {date}; {when}"]
    for name, meta in metas.items():
        counts = meta.get("thread_counts", [meta["threads"]])
        lines.append(
            f"- allocator `{name}`: torch {meta['torch']}, {meta['cpu']} ({meta['cpu_capability']}), "
            f"parallel backend {meta.get('parallel_backend', 'unknown')}, default "
            f"{meta['threads']} threads, measured at {', '.join(map(str, counts))} thread(s); "
            f"THP_MEM_ALLOC_ENABLE={meta['THP_MEM_ALLOC_ENABLE']}, kernel THP {meta['kernel_thp']}; "
            f"{meta['memory_method']}; impls {','.join(meta['impls'])}; {meta['seconds']:.0f} s; "
            f"1-min load average {meta['loadavg_start'][0]:.1f} at start, "
            f"{meta['loadavg_end'][0]:.1f} at end; patch series sha256 {meta['patch_series_sha256']}"
            + ("" if meta["complete"] else "; INTERRUPTED, partial results"))
        start, end = meta.get("bandwidth_start", {}), meta.get("bandwidth_end", {})
        for threads in start:
            used = meta.get("bandwidth_used", {}).get(threads)
            lines.append(
                f"  - copy bandwidth at {threads} thread(s) ({start[threads]['size_mib']} MiB float32 "
                f"copy_, read+write counted, median of quiet rounds): {gbps(start[threads])} before "
                f"the cases, {gbps(end.get(threads))} after; roofline uses "
                + (f"{used / GB:.1f} GB/s" if used else "nothing (not measured)"))
        policy = meta.get("quiet_policy")
        if policy:
            lines.append(
                f"  - quiet rounds: others (this process sleeping) sampled for {policy['window_s']} s "
                f"before and after every round; a round is kept only if both are <= "
                f"{100 * policy['busy_limit']:.0f}% of the CPUs; per case, thread count and mode at most "
                f"{policy['max_rounds']} rounds run and {policy.get('max_wait_s', 0):.0f} s of waiting "
                f"for a quiet start")
        for note in meta["impl_notes"]:
            lines.append(f"  - {note}")
    first = next(iter(metas.values()))
    lines.append(
        f"\nReps: {first['reps']} quiet timed rounds after {first['warmup']} warm-up round(s) (plus "
        "one untimed checked forward+backward per implementation and thread count; `compile` is "
        "compiled afresh at each thread count), implementations alternating and their order "
        "flipping each round. Ratio cells: ratio of medians / median of per-round paired ratios. "
        "Peak: max over reps of VmHWM above VmRSS just before the call; grad = input.numel()*itemsize. "
        "Roofline: bytes model (bench.roofline) / copy bandwidth / median time.\n")
    return "\n".join(lines)


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
    """Quiet rounds kept/dropped and the most others used around a kept round."""
    rounds = record.get("rounds")
    if rounds is None:
        machine = record.get("machine")
        return "n/a" if machine is None else f"{100 * machine['others_busy']:.0f}% before"
    seen = rounds["busy_before"] + rounds["busy_after"]
    worst = f", max {100 * max(seen):.0f}%" if seen else ""
    return f"{rounds['kept']} kept / {rounds['dropped']} dropped{worst}"


def _not_measured(record: dict, strict: bool = False) -> bool:
    """Too few quiet rounds; with ``strict`` also any kept round next to others above 10%."""
    return not record.get("quiet", True) or (strict and not verdict.is_quiet(record))


def _roofline_cells(record: dict, strict: bool = False) -> tuple[str, str]:
    """Achieved GB/s of the bytes model and the share of the copy-bandwidth roofline."""
    if _not_measured(record, strict) or not record.get("times_ms") or "bytes_moved" not in record:
        return "—", "—"
    achieved = record["bytes_moved"] / (stats.median(record["times_ms"]) / 1e3) / GB
    share = verdict.roofline_of(record, strict)
    return f"{achieved:.1f}", ("n/a" if share is None else f"{share:.2f}")


def table(records: list[dict], strict: bool = False) -> str:
    """The full results table (times in ms; ratios as 'ratio of medians / median paired ratio').

    'GB/s' is the bytes model (``bench.roofline``) over the median time, 'roofline' that
    over the run's copy bandwidth at the same thread count; 'quiet rounds' says how many
    rounds were kept and dropped and the most other processes used around a kept one.
    ``strict``: rows with a kept round next to others above 10% (a relaxed --busy-limit)
    read ``not measured`` too.
    """
    lines = [
        "| allocator | threads | case | mode | impl | median ms | IQR ms | min–max ms "
        "| × torch | × compile | moved MiB | GB/s | roofline | peak MiB | peak / grad | quiet rounds |",
        "| --- | ---: | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for (allocator, threads, label, mode), by_impl in _index(records).items():
        for impl, record in by_impl.items():
            flag = "" if record["check"]["agrees_with_stock"] else " ⚠"
            prefix = f"| {allocator} | {threads} | {label} | {mode} | {impl}{flag} "
            if _not_measured(record, strict):
                lines.append(prefix + "| not measured |" + " — |" * 9 + f" {_busy_cell(record)} |")
                continue
            times = record["times_ms"]
            q1, q3 = stats.quartiles(times)
            peak_mib, peak_per_grad = _memory_cells(record)
            achieved, share = _roofline_cells(record)
            torch_base = _quiet(by_impl.get("torch"), strict)
            compile_base = _quiet(by_impl.get("compile"), strict)
            lines.append(
                prefix + f"| {stats.median(times):.1f} "
                f"| {q1:.1f}–{q3:.1f} | {min(times):.1f}–{max(times):.1f} "
                f"| {_ratio_cell(record, torch_base)} "
                f"| {_ratio_cell(record, compile_base)} | {_moved_cell(record)} | {achieved} | {share} "
                f"| {peak_mib} "
                f"| {peak_per_grad} | {_busy_cell(record)} |"
            )
    return "\n".join(lines)


def _moved_cell(record: dict) -> str:
    """The bytes model of the call (``bench.roofline.bytes_moved``) in MiB."""
    return f"{record['bytes_moved'] / MIB:.0f}" if "bytes_moved" in record else "n/a"


def _quiet(record: Optional[dict], strict: bool) -> Optional[dict]:
    return None if record is None or _not_measured(record, strict) else record


def target_summary(records: list[dict], seconds: Optional[float] = None, full_matrix: bool = False) -> str:
    """Issue 10's verdicts: counts per target and thread count, then one row per case.

    Only quiet measurements get a verdict; the rest read ``not measured`` (see ``bench.verdict``).
    """
    verdicts = verdict.evaluate(records)
    if not verdicts:
        return "Targets: not evaluated (needs fwdbwd records)."
    lines = [
        f"Targets (issue 10; `patch`, fwd+bwd): time = median paired ratio patch/compile "
        f"<= {verdict.MAX_VS_COMPILE}; roofline = share of the copy-bandwidth roofline >= "
        f"{verdict.MIN_ROOFLINE} (4096x32768 float32 only); memory = max peak above the inputs / "
        f"gradient <= {verdict.MAX_PEAK_PER_GRAD}.",
        "",
        "| target | threads | met | missed | not measured |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for (target, threads), cell in sorted(verdict.counts(verdicts).items(),
                                          key=lambda item: (verdict.TARGETS.index(item[0][0]), item[0][1])):
        lines.append(f"| {target} | {threads} | {cell[verdict.MET]} | {cell[verdict.MISSED]} "
                     f"| {cell[verdict.NOT_MEASURED]} |")
    if seconds is not None:
        wall = verdict.run_time_verdict(seconds, full_matrix)
        state = wall.state if wall.state != verdict.NOT_MEASURED else f"not judged ({wall.reason})"
        lines += ["", f"Run time: {wall.value:.1f} min, target <= {wall.limit:.0f} min: {state}."]
    lines += ["", "| allocator | threads | case | time (<= 0.85) | roofline (>= 0.75) | memory (<= 1.05) |",
              "| --- | ---: | --- | --- | --- | --- |"]
    rows: dict[tuple, dict[str, verdict.Verdict]] = {}
    for item in verdicts:
        rows.setdefault((item.allocator, item.threads, item.label), {})[item.target] = item
    for (allocator, threads, label), by_target in rows.items():
        cells = [by_target[target].cell() if target in by_target else "—" for target in verdict.TARGETS]
        lines.append(f"| {allocator} | {threads} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def disagreements(records: list[dict]) -> str:
    """Cases where an implementation's loss or gradient differs from stock beyond tolerance."""
    seen = set()
    lines = []
    for record in records:
        check = record["check"]
        key = (record["allocator"], record.get("threads", 0), record["label"], record["impl"])
        if check["agrees_with_stock"] or key in seen:
            continue
        seen.add(key)
        lines.append(
            f"- ⚠ {record['allocator']} {record.get('threads', '?')} thread(s) {record['label']} "
            f"{record['impl']}: loss rel. error "
            f"{check['loss_rel_error']:.2e}, grad rel. error {check['grad_rel_error']:.2e}"
        )
    return "\n".join(lines)


def compact_table(records: list[dict], strict: bool = False) -> str:
    """One row per (allocator, threads, case, mode): medians of every implementation side by side.

    Ratio columns are medians of paired ratios against ``torch`` and ``compile``; the
    roofline columns are shares of the copy-bandwidth roofline; memory columns are the
    max peak above the inputs over the gradient's size.  Rows without enough quiet
    rounds (with ``strict``: or with a kept round next to others above 10%) say
    ``not measured``.
    """
    impls = list(dict.fromkeys(record["impl"] for record in records))
    others = [impl for impl in impls if impl != "torch"]
    ratio_pairs = [(impl, base) for impl in others for base in ("torch", "compile")
                   if base != impl and base in impls]
    header = (["allocator", "threads", "case", "mode", "moved MiB"] + [f"{impl} ms" for impl in impls]
              + [f"{impl}/{base}" for impl, base in ratio_pairs]
              + [f"roofline {impl}" for impl in impls]
              + [f"peak/grad {impl}" for impl in impls] + ["quiet rounds"])
    lines = ["| " + " | ".join(header) + " |",
             "| --- | ---: | --- | --- |" + " ---: |" * (len(header) - 5) + " --- |"]
    for (allocator, threads, label, mode), by_impl in _index(records).items():
        any_record = next(iter(by_impl.values()))
        cells = [allocator, str(threads), label, mode, _moved_cell(any_record)]
        if any(_not_measured(record, strict) for record in by_impl.values()):
            cells += ["not measured"] + ["—"] * (len(header) - 7) + [_busy_cell(any_record)]
            lines.append("| " + " | ".join(cells) + " |")
            continue
        for impl in impls:
            record = by_impl.get(impl)
            if record is None:
                cells.append("—")
                continue
            flag = "" if record["check"]["agrees_with_stock"] else " ⚠"
            milliseconds = stats.median(record["times_ms"])
            cells.append(f"{milliseconds:.0f}{flag}" if milliseconds >= 100 else f"{milliseconds:.1f}{flag}")
        for impl, base in ratio_pairs:
            if impl in by_impl and base in by_impl:
                cells.append(f"{stats.median_paired_ratio(by_impl[impl]['times_ms'], by_impl[base]['times_ms']):.2f}")
            else:
                cells.append("—")
        for impl in impls:
            cells.append(_roofline_cells(by_impl[impl], strict)[1] if impl in by_impl else "—")
        for impl in impls:
            cells.append(_memory_cells(by_impl[impl])[1] if impl in by_impl else "—")
        cells.append(_busy_cell(any_record))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
