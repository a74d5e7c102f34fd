"""PNG of time ratios vs stock eager (median of paired ratios), one panel per allocator and mode.

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

    allocators = list(dict.fromkeys(record["allocator"] for record in records))
    modes = list(dict.fromkeys(record["mode"] for record in records))
    labels = list(dict.fromkeys(record["label"] for record in records))
    impls = [impl for impl in dict.fromkeys(r["impl"] for r in records) if impl != "torch"]
    if not impls or not any(r["impl"] == "torch" for r in records):
        return "plot skipped: needs `torch` and at least one other implementation"

    lookup = {(r["allocator"], r["mode"], r["label"], r["impl"]): r for r in records}
    height = max(2.5, 0.2 * len(labels) * max(1, len(impls)) + 1.0)
    figure, axes = plt.subplots(
        len(allocators), len(modes), figsize=(6.5 * len(modes), height * len(allocators)),
        squeeze=False, sharex=True,
    )
    bar = 0.8 / len(impls)
    for row, allocator in enumerate(allocators):
        for column, mode in enumerate(modes):
            axis = axes[row][column]
            for offset, impl in enumerate(impls):
                positions, ratios = [], []
                for position, label in enumerate(labels):
                    record = lookup.get((allocator, mode, label, impl))
                    baseline = lookup.get((allocator, mode, label, "torch"))
                    if record is None or baseline is None:
                        continue
                    positions.append(position + offset * bar)
                    ratios.append(stats.median_paired_ratio(record["times_ms"], baseline["times_ms"]))
                axis.barh(positions, ratios, height=bar, label=impl)
            axis.axvline(1.0, color="black", linewidth=0.8)
            if mode == "fwdbwd":
                axis.axvline(0.35, color="red", linestyle="--", linewidth=0.8, label="target 0.35")
            axis.set_yticks([p + bar * (len(impls) - 1) / 2 for p in range(len(labels))])
            axis.set_yticklabels(labels, fontsize=7)
            axis.invert_yaxis()
            axis.set_title(f"{mode}, allocator={allocator}", fontsize=9)
            axis.set_xlabel("time / stock eager (median of paired ratios)", fontsize=8)
            axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return f"plot saved to {path}"
