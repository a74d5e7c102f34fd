"""``python -m bench.threads``: it compares the two thread counts, and refuses a verdict on a busy machine."""
from __future__ import annotations

import re

from bench import threads


def test_reports_both_thread_counts_and_the_speed_up(capsys) -> None:
    status = threads.main(["--impl", "torch", "--shape", "8x16", "--threads", "2", "--reps", "3",
                           "--busy-limit", "1.0"])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "ATen parallel backend" in out
    medians = re.findall(r"(\d) thread\(s\): median +([\d.]+) ms", out)
    assert [count for count, _ in medians] == ["1", "2"] and all(float(ms) > 0 for _, ms in medians), out
    assert re.search(r"speed-up 1 -> 2 threads: ratio of medians [\d.]+, median paired ratio [\d.]+", out), out


def test_a_busy_machine_gives_no_verdict(capsys) -> None:
    # No round can be quieter than "others used less than -1% of the CPUs".
    status = threads.main(["--impl", "torch", "--shape", "8x16", "--reps", "3", "--busy-limit", "-0.01",
                           "--max-rounds", "2"])
    out = capsys.readouterr().out
    assert status == 1
    assert "not measured" in out and "speed-up" not in out
