"""PNG of time ratios (median of paired ratios) vs stock eager, or vs ``compile`` when eager was not run.

One panel per (allocator, thread count) and mode; cases without enough quiet rounds are left out.

matplotlib is imported only here and only when a plot is asked for, so the bench
itself runs without it; ``save_plot`` then returns a line saying it skipped.
"""
from __future__ import annotations

from bench import stats


def save_plot(records: list[dict], path: str) -> str:
    """Write the plot to ``path``; returns a one-line status for the console."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return f"plot skipped: matplotlib is not installed (pip install matplotlib) -> no {path}"

    rows = list(dict.fromkeys((r["allocator"], r.get("threads", 0)) for r in records))
    modes = list(dict.fromkeys(record["mode"] for record in records))
    labels = list(dict.fromkeys(record["label"] for record in records))
    present = set(r["impl"] for r in records)
    base_impl = "torch" if "torch" in present else "compile"
    impls = [impl for impl in dict.fromkeys(r["impl"] for r in records) if impl != base_impl]
    if not impls or base_impl not in present:
        return "plot skipped: needs `torch` or `compile` and at least one other implementation"

    lookup = {(r["allocator"], r.get("threads", 0), r["mode"], r["label"], r["impl"]): r
              for r in records if r.get("quiet", True)}
    height = max(2.5, 0.2 * len(labels) * max(1, len(impls)) + 1.0)
    figure, axes = plt.subplots(
        len(rows), len(modes), figsize=(6.5 * len(modes), height * len(rows)),
        squeeze=False, sharex=True,
    )
    bar = 0.8 / len(impls)
    for row, (allocator, threads) in enumerate(rows):
        for column, mode in enumerate(modes):
            axis = axes[row][column]
            for offset, impl in enumerate(impls):
                positions, ratios = [], []
                for position, label in enumerate(labels):
                    record = lookup.get((allocator, threads, mode, label, impl))
                    baseline = lookup.get((allocator, threads, mode, label, base_impl))
                    if record is None or baseline is None:
                        continue
                    positions.append(position + offset * bar)
                    ratios.append(stats.median_paired_ratio(record["times_ms"], baseline["times_ms"]))
                axis.barh(positions, ratios, height=bar, label=impl)
            axis.axvline(1.0, color="black", linewidth=0.8)
            if mode == "fwdbwd" and base_impl == "compile":
                axis.axvline(0.85, color="red", linestyle="--", linewidth=0.8, label="target 0.85")
            axis.set_yticks([p + bar * (len(impls) - 1) / 2 for p in range(len(labels))])
            axis.set_yticklabels(labels, fontsize=7)
            axis.invert_yaxis()
            axis.set_title(f"{mode}, allocator={allocator}, {threads} thread(s)", fontsize=9)
            axis.set_xlabel(f"time / {base_impl} (median of paired ratios)", fontsize=8)
            axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return f"plot saved to {path}"
