"""``python -m bench.docgen RUN.json``: write a run's matrix section into ``docs/benchmarks.md``.

Why generated: the matrix section is a few hundred numbers; copied by hand they drift
from the run they came from, and a busy run's numbers slip in.  This command renders
the section from the JSON that ``python -m bench --json RUN.json`` wrote -- header
(machine, parallel backend, thread counts, copy bandwidth), issue 10's verdicts and
the per-case table -- with every (case, thread count) measured without enough quiet
rounds shown as ``not measured`` (here any kept round next to others above 10% of the
CPUs counts as busy, even from a run with a relaxed ``--busy-limit``).  It refuses a
JSON from before quiet rounds were recorded and a run with no quiet case at all.

Only the text between the two marker comments is replaced; the rest of the document
is kept byte for byte.  Without markers, the section headed ``## Full matrix`` (up
to the next ``## `` heading) is replaced by a marked one; without that, the marked
section is appended.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import List, Optional

from bench import report, verdict

BEGIN = "<!-- BEGIN GENERATED: python -m bench.docgen (do not edit by hand) -->"
END = "<!-- END GENERATED: python -m bench.docgen -->"
HEADING = "## Full matrix (all shapes, dtypes, target kinds, label smoothing 0/0.1, weight off/on)"
DEFAULT_DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


class RefusedRun(ValueError):
    """The run's JSON cannot back a generated section (old format, or nothing quiet)."""


def render(run: dict) -> str:
    """The marked block (markers included) for one run's combined JSON."""
    records = run["records"]
    if not records or any("quiet" not in record for record in records):
        raise RefusedRun("the JSON has records without quiet-round data (a run from before issue 10's "
                         "protocol); rerun `python -m bench --json ...`")
    if not any(verdict.is_quiet(record) for record in records):
        raise RefusedRun("no case of this run got enough quiet rounds: nothing to publish")
    quiet_rows = {(r["allocator"], r["threads"], r["label"], r["mode"]) for r in records
                  if verdict.is_quiet(r)}
    all_rows = {(r["allocator"], r["threads"], r["label"], r["mode"]) for r in records}
    parts = [
        BEGIN,
        report.header(run["command"], run["date"], f"wall time {run['seconds'] / 60:.1f} min", run["meta"]),
        f"{len(quiet_rows)} of {len(all_rows)} (allocator, threads, case, mode) rows were measured "
        f"in enough quiet rounds (others at most {100 * verdict.QUIET_LIMIT:.0f}% of the CPUs before "
        "and after each); the others read `not measured` and carry no verdict.",
        "",
        report.target_summary(records, run["seconds"], verdict.covers_full_matrix(records)),
        "",
        report.compact_table(records, strict=True),
    ]
    mismatches = report.disagreements(records)
    if mismatches:
        parts += ["", "Disagreements with stock (⚠ rows):", mismatches]
    parts.append(END)
    return "\n".join(parts)


def rewrite(doc: str, block: str) -> str:
    """``doc`` with its generated section replaced by ``block`` (see the module docstring)."""
    if BEGIN in doc and END in doc:
        start = doc.index(BEGIN)
        end = doc.index(END, start) + len(END)
        return doc[:start] + block + doc[end:]
    match = re.search(r"^## Full matrix.*$", doc, flags=re.MULTILINE)
    if match is not None:
        following = re.search(r"^## ", doc[match.end():], flags=re.MULTILINE)
        end = match.end() + following.start() if following else len(doc)
        tail = doc[end:]
        return doc[:match.start()] + HEADING + "\n" + block + "\n" + ("\n" + tail if tail else "")
    return doc.rstrip("\n") + "\n\n" + HEADING + "\n" + block + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.docgen", description=__doc__.splitlines()[0])
    parser.add_argument("run", help="the JSON written by `python -m bench --json RUN.json`")
    parser.add_argument("--doc", default=str(DEFAULT_DOC), help="markdown file to rewrite")
    parser.add_argument("--stdout", action="store_true", help="print the block instead of writing")
    args = parser.parse_args(argv)
    try:
        block = render(json.loads(Path(args.run).read_text()))
    except RefusedRun as error:
        print(f"refused: {error}", file=sys.stderr)
        return 1
    if args.stdout:
        print(block)
        return 0
    doc = Path(args.doc)
    doc.write_text(rewrite(doc.read_text(), block))
    print(f"{args.doc}: generated section rewritten from {args.run}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
