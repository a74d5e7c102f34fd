"""Read the patch series: its files, and the text each patch adds.

The out-of-tree build and the static checks both need what the series adds
(new C++ files, new yaml entries, new Python lines) without a PyTorch
checkout.  A unified diff carries that text in its ``+`` lines, so this module
parses the series into per-file hunks and reassembles new files and added
blocks from them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from pathlib import Path

PATCHES_DIR = Path(__file__).resolve().parent
CACHE_DIR = PATCHES_DIR / ".cache"

_HUNK_HEADER = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


class SeriesError(Exception):
    """The series (BASE, series file or a patch) is malformed."""


@dataclasses.dataclass
class Hunk:
    """One ``@@`` hunk: its header numbers and body lines (with their prefix)."""

    old_start: int
    new_start: int
    lines: list[str]

    def added_blocks(self) -> list[str]:
        """Runs of consecutive ``+`` lines, each joined into one text block."""
        blocks: list[str] = []
        current: list[str] = []
        for line in self.lines:
            if line.startswith("+"):
                current.append(line[1:])
            elif current:
                blocks.append("\n".join(current) + "\n")
                current = []
        if current:
            blocks.append("\n".join(current) + "\n")
        return blocks


@dataclasses.dataclass
class FileDiff:
    """The diff of one file inside one patch."""

    patch: str
    path: str
    is_new: bool
    hunks: list[Hunk]

    def new_text(self) -> str:
        """Full text of a file the diff creates."""
        if not self.is_new:
            raise SeriesError(f"{self.patch}: {self.path} is not a new file")
        lines = [line[1:] for hunk in self.hunks for line in hunk.lines if line.startswith("+")]
        return "\n".join(lines) + "\n" if lines else ""

    def added_blocks(self) -> list[str]:
        return [block for hunk in self.hunks for block in hunk.added_blocks()]


def base_commit() -> str:
    """The upstream commit the series applies to (``patches/BASE``)."""
    text = (PATCHES_DIR / "BASE").read_text().split()
    if len(text) != 1 or not re.fullmatch(r"[0-9a-f]{40}", text[0]):
        raise SeriesError("patches/BASE must hold exactly one 40-hex commit id")
    return text[0]


# The ``git format-patch --cover-letter`` mail ("[PATCH 0/N]"): it sits beside the
# patches and is never listed in ``patches/series``, because ``series`` is exactly the
# ``git am`` input and ``git am`` stops at a mail without a diff ("Patch is empty").
COVER_LETTER = "0000-cover-letter.patch"

_SUBJECT = re.compile(r"^Subject: \[PATCH (\d+)/(\d+)\] (.*)$")


def series_files() -> list[Path]:
    """The patch files, in the order of ``patches/series`` (never the cover letter)."""
    series = PATCHES_DIR / "series"
    if not series.exists():
        raise SeriesError("patches/series is missing")
    names = [
        line.strip()
        for line in series.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if COVER_LETTER in names:
        raise SeriesError(
            f"patches/series must not list {COVER_LETTER}: git am stops at a mail without a diff"
        )
    paths = [PATCHES_DIR / name for name in names]
    missing = [p.name for p in paths if not p.exists()]
    if missing:
        raise SeriesError(f"patches/series lists missing files: {', '.join(missing)}")
    unlisted = sorted(
        p.name for p in PATCHES_DIR.glob("*.patch") if p.name not in {*names, COVER_LETTER}
    )
    if unlisted:
        raise SeriesError(f"patch files not listed in patches/series: {', '.join(unlisted)}")
    return paths


def cover_letter() -> Path | None:
    """The series' cover letter (``patches/0000-cover-letter.patch``), if there is one."""
    path = PATCHES_DIR / COVER_LETTER
    return path if path.exists() else None


def subject(path: Path) -> tuple[int, int, str]:
    """A format-patch mail's ``[PATCH n/m] title``: (n, m, title with folded lines joined)."""
    lines = path.read_text().split("\n")
    for index, line in enumerate(lines):
        match = _SUBJECT.match(line)
        if match:
            title = [match.group(3)]
            # RFC 2822 folding: continuation lines of a header start with whitespace.
            for continuation in lines[index + 1 :]:
                if not continuation[:1].isspace() or not continuation.strip():
                    break
                title.append(continuation.strip())
            return int(match.group(1)), int(match.group(2)), " ".join(title)
    raise SeriesError(f"{path.name}: no 'Subject: [PATCH n/m] ...' header")


def renumber() -> list[Path]:
    """Rewrite every ``[PATCH n/m]`` to the series order: patch i of N, cover letter 0 of N.

    Why: the series is assembled from patches written separately (and ``git format-patch``
    numbers only what one run produced), so after adding or reordering patches the subjects
    disagree with ``patches/series``; ``python -m patches check`` reports that, this fixes it.
    Only the ``Subject:`` line changes, so diffs and blob ids stay valid.
    Returns the files that changed.
    """
    files = series_files()
    numbered = [(path, index) for index, path in enumerate(files, start=1)]
    letter = cover_letter()
    if letter is not None:
        numbered.insert(0, (letter, 0))
    changed = []
    for path, number in numbered:
        text = path.read_text()
        new_text = re.sub(r"(?m)^Subject: \[PATCH \d+/\d+\]",
                          f"Subject: [PATCH {number}/{len(files)}]", text, count=1)
        if new_text != text:
            path.write_text(new_text)
            changed.append(path)
    return changed


def _strip_email_footer(lines: list[str]) -> list[str]:
    """Drop the ``-- `` signature that format-patch appends after the diff."""
    for index in range(len(lines) - 1, -1, -1):
        if lines[index] == "-- ":
            return lines[:index]
    return lines


def parse_patch(path: Path) -> list[FileDiff]:
    """Split one format-patch file into per-file diffs."""
    lines = _strip_email_footer(path.read_text().split("\n"))
    diffs: list[FileDiff] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        if not line.startswith("diff --git "):
            index += 1
            continue
        match = re.match(r"^diff --git a/(\S+) b/(\S+)$", line)
        if not match:
            raise SeriesError(f"{path.name}: cannot read '{line}'")
        file_path = match.group(2)
        is_new = False
        index += 1
        while index < len(lines) and not lines[index].startswith("@@"):
            if lines[index].startswith("new file mode"):
                is_new = True
            if lines[index].startswith("diff --git "):
                break
            index += 1
        hunks: list[Hunk] = []
        while index < len(lines) and lines[index].startswith("@@"):
            header = _HUNK_HEADER.match(lines[index])
            if not header:
                raise SeriesError(f"{path.name}: bad hunk header '{lines[index]}'")
            old_len = int(header.group(2) or 1)
            new_len = int(header.group(4) or 1)
            body: list[str] = []
            index += 1
            seen_old = seen_new = 0
            while index < len(lines) and (seen_old < old_len or seen_new < new_len):
                body_line = lines[index]
                if body_line.startswith("\\"):
                    index += 1
                    continue
                tag = body_line[:1]
                if tag == " " or body_line == "":
                    seen_old += 1
                    seen_new += 1
                elif tag == "-":
                    seen_old += 1
                elif tag == "+":
                    seen_new += 1
                else:
                    raise SeriesError(f"{path.name}: unexpected line in hunk of {file_path}: '{body_line}'")
                body.append(body_line if body_line else " ")
                index += 1
            if seen_old != old_len or seen_new != new_len:
                raise SeriesError(f"{path.name}: truncated hunk in {file_path}")
            while index < len(lines) and lines[index].startswith("\\"):
                index += 1
            hunks.append(Hunk(int(header.group(1)), int(header.group(3)), body))
        diffs.append(FileDiff(path.name, file_path, is_new, hunks))
    return diffs


def all_diffs() -> list[FileDiff]:
    """Every file diff of the series, in series order."""
    return [diff for path in series_files() for diff in parse_patch(path)]


def apply_hunks(text: str, diff: FileDiff) -> str:
    """Apply a diff's hunks to text in memory (exact context match, any offset)."""
    lines = text.split("\n")
    offset = 0
    for hunk in diff.hunks:
        old = [line[1:] for line in hunk.lines if line[:1] in (" ", "-")]
        new = [line[1:] for line in hunk.lines if line[:1] in (" ", "+")]
        start = hunk.old_start - 1 + offset if old else hunk.old_start + offset
        candidates = sorted(range(len(lines) - len(old) + 1), key=lambda i: abs(i - start))
        for candidate in candidates:
            if lines[candidate : candidate + len(old)] == old:
                lines[candidate : candidate + len(old)] = new
                offset += len(new) - len(old)
                break
        else:
            raise SeriesError(f"{diff.patch}: hunk at line {hunk.old_start} of {diff.path} does not apply")
    return "\n".join(lines)


def new_files() -> dict[str, str]:
    """Files the series creates, with any later patch's edits: path -> text."""
    result: dict[str, str] = {}
    for diff in all_diffs():
        if diff.is_new:
            result[diff.path] = diff.new_text()
        elif diff.path in result:
            result[diff.path] = apply_hunks(result[diff.path], diff)
    return result


def added_blocks(path: str) -> list[str]:
    """Blocks of lines the series adds to an existing upstream file."""
    return [block for diff in all_diffs() if diff.path == path and not diff.is_new for block in diff.added_blocks()]


def touched_paths() -> list[str]:
    """Upstream files the series modifies (not creates), in first-touch order."""
    diffs = all_diffs()
    created = {diff.path for diff in diffs if diff.is_new}
    seen: list[str] = []
    for diff in diffs:
        if not diff.is_new and diff.path not in created and diff.path not in seen:
            seen.append(diff.path)
    return seen


def content_hash() -> str:
    """Hash of BASE, series and every patch: the out-of-tree build cache key."""
    digest = hashlib.sha256()
    digest.update(base_commit().encode())
    for path in series_files():
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def build_inputs_hash(compiled_paths: tuple[str, ...], compiled_suffixes: tuple[str, ...]) -> str:
    """Hash of what the out-of-tree build compiles: BASE, the new files with one of
    ``compiled_suffixes`` and every diff of ``compiled_paths`` (files codegen reads).

    Why: a docs, test or Python-only patch must not invalidate a build that takes
    minutes; Python additions are loaded at import time, not compiled.
    """
    digest = hashlib.sha256()
    digest.update(base_commit().encode())
    for diff in all_diffs():
        if diff.path in compiled_paths or (diff.is_new and diff.path.endswith(compiled_suffixes)):
            digest.update(diff.path.encode())
            for hunk in diff.hunks:
                digest.update("\n".join(hunk.lines).encode())
    return digest.hexdigest()[:16]


def _git_blob_id(text: str) -> str:
    """The id git gives a file with this text (``git hash-object``), for the ``index`` line."""
    data = text.encode()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _read_patch(patch: Path) -> tuple[list[str], list[str]]:
    """A patch file's lines up to the format-patch signature, and the signature lines."""
    text = patch.read_text().split("\n")
    lines = _strip_email_footer(text)
    return lines, text[len(lines):]


def _diff_span(patch: Path, lines: list[str], path: str) -> tuple[int, int]:
    """[start, end) of the diff of ``path`` among a patch's lines."""
    try:
        start = lines.index(f"diff --git a/{path} b/{path}")
    except ValueError:
        raise SeriesError(f"{patch.name} has no diff of {path}") from None
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("diff --git ")), len(lines))
    return start, end


def replace_new_file(patch: Path, path: str, text: str) -> None:
    """Give a file that ``patch`` creates the new content ``text``, in place.

    Why: editing a new file through ``python -m patches workspace`` needs a base copy of
    every upstream file the series touches, and ``LossNLL.cpp`` is not in the wheel; a
    new file's diff is one ``@@ -0,0 +1,N @@`` hunk, so it can be rewritten directly.
    The hunk header and the ``index`` line's blob id are recomputed, so the patch stays
    valid ``git am`` input.
    """
    if not text.endswith("\n"):
        raise SeriesError(f"{path}: the new text must end with a newline")
    lines, footer = _read_patch(patch)
    start, end = _diff_span(patch, lines, path)
    header = lines[start:end]
    hunk_at = next((i for i, line in enumerate(header) if line.startswith("@@")), None)
    if "new file mode 100644" not in header or hunk_at is None or not header[hunk_at].startswith("@@ -0,0 "):
        raise SeriesError(f"{patch.name}: {path} is not a file the patch creates")
    body = text[:-1].split("\n")
    new_header = [re.sub(r"^index 0+\.\.[0-9a-f]+", f"index {'0' * 40}..{_git_blob_id(text)}", line)
                  for line in header[:hunk_at]]
    new_header.append(f"@@ -0,0 +1,{len(body)} @@")
    rewritten = lines[:start] + new_header + ["+" + line for line in body] + lines[end:]
    patch.write_text("\n".join(rewritten + footer))


def file_diff(path: str, before: str | None, after: str) -> str:
    """``git diff --full-index`` of one file from ``before`` to ``after``, as a patch carries it.

    Why: a hunk on an upstream file that several patches touch (native_functions.yaml,
    derivatives.yaml) changes its line numbers, context and blob ids in every later
    patch; computing each patch's diff from the file's full text before and after that
    patch keeps them all consistent without a workspace (which needs every base file).
    """
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        target = repo / path
        target.parent.mkdir(parents=True, exist_ok=True)

        def git(*args: str) -> str:
            return subprocess.run(["git", "-c", "core.autocrlf=false", *args], cwd=repo, check=True,
                                  capture_output=True, text=True).stdout

        git("init", "-q")
        if before is not None:
            target.write_text(before)
            git("add", path)
        git("-c", "user.name=x", "-c", "user.email=x@invalid", "commit", "-q", "--allow-empty", "-m", "before")
        target.write_text(after)
        if before is None:
            git("add", "--intent-to-add", path)
        diff = git("diff", "--full-index", "--", path)
    if not diff:
        raise SeriesError(f"{path}: the new text equals the old one")
    return diff


def replace_file_diff(patch: Path, path: str, diff: str) -> None:
    """Replace the diff of ``path`` inside ``patch`` with ``diff`` (from :func:`file_diff`)."""
    lines, footer = _read_patch(patch)
    start, end = _diff_span(patch, lines, path)
    trailing = []
    if end == len(lines) and lines[end - 1] == "":
        # keep the blank line that ends the last diff before the signature
        trailing.append("")
        end -= 1
    new = diff.rstrip("\n").split("\n")
    patch.write_text("\n".join(lines[:start] + new + lines[end:] + trailing + footer))


def add_file_diff(patch: Path, diff: str) -> None:
    """Insert a file's diff into ``patch``, in git's path order among its diffs."""
    path = re.match(r"^diff --git a/(\S+) ", diff).group(1)
    text = patch.read_text()
    starts = [m.start() for m in re.finditer(r"^diff --git a/(\S+) ", text, flags=re.M)]
    paths = [re.match(r"diff --git a/(\S+) ", text[i:]).group(1) for i in starts]
    if path in paths:
        raise SeriesError(f"{patch.name} already has a diff of {path}")
    later = [i for i, other in zip(starts, paths) if other > path]
    at = later[0] if later else len(_strip_email_footer(text.split("\n")))
    if not later:
        raise SeriesError("appending after the last diff is not supported")
    patch.write_text(text[:at] + diff.rstrip("\n") + "\n" + text[at:])
