"""The cover letter sits beside the series: never ``git am`` input, always in step with it.

``git am`` stops at a mail without a diff, so ``patches/series`` (the ``git am`` input)
must not list the cover letter, and applying every ``patches/0*.patch`` needs
``--empty=drop``.  The checks keep the ``[PATCH n/N]`` numbering and the cover letter's
list of patches in step with ``patches/series``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from patches import check, series, workspace


@pytest.fixture
def patches_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of patches/ (series, BASE, *.patch) that the series module reads."""
    directory = tmp_path / "patches"
    directory.mkdir()
    for path in [*series.PATCHES_DIR.glob("*.patch"), series.PATCHES_DIR / "series", series.PATCHES_DIR / "BASE"]:
        shutil.copyfile(path, directory / path.name)
    monkeypatch.setattr(series, "PATCHES_DIR", directory)
    return directory


def test_the_cover_letter_is_beside_the_series_not_in_it() -> None:
    assert series.cover_letter() is not None
    assert series.COVER_LETTER not in [path.name for path in series.series_files()]
    assert series.parse_patch(series.cover_letter()) == []


def test_listing_the_cover_letter_in_series_is_an_error(patches_copy: Path) -> None:
    (patches_copy / "series").write_text((patches_copy / "series").read_text() + series.COVER_LETTER + "\n")
    with pytest.raises(series.SeriesError, match="must not list 0000-cover-letter.patch"):
        series.series_files()


def test_git_am_of_every_patch_file_needs_empty_drop(tmp_path: Path) -> None:
    """``git am --empty=drop patches/0*.patch`` applies the series; plain ``git am`` stops at 0/N."""
    files = sorted(str(path) for path in series.PATCHES_DIR.glob("0*.patch"))
    assert files[0].endswith(series.COVER_LETTER)
    directory = tmp_path / "ws"
    missing = workspace.make_workspace(directory, apply=False)
    excludes = [f"--exclude={path}" for path in missing]

    plain = workspace.git(directory, "am", *excludes, *files, check=False)
    assert plain.returncode != 0 and "Patch is empty" in plain.stdout + plain.stderr
    workspace.git(directory, "am", "--abort")

    workspace.git(directory, "am", "--empty=drop", *excludes, *files)
    count = workspace.git(directory, "rev-list", "--count", "series-base..HEAD").stdout.strip()
    assert int(count) == len(series.series_files())


def test_renumber_makes_the_subjects_follow_the_series(patches_copy: Path) -> None:
    files = series.series_files()
    before = {path.name: (series.subject(path)[2], [d.hunks for d in series.parse_patch(path)]) for path in files}
    first = files[0]
    first.write_text(first.read_text().replace("Subject: [PATCH 1/", "Subject: [PATCH 7/", 1))
    with pytest.raises(AssertionError, match=f"{first.name} says \\[PATCH 7/"):
        check.check_numbering()

    series.renumber()
    assert check.check_numbering().startswith(f"[PATCH n/{len(files)}]")
    assert series.subject(series.cover_letter())[:2] == (0, len(files))
    for index, path in enumerate(files, start=1):
        number, total, title = series.subject(path)
        assert (number, total) == (index, len(files))
        # Only the Subject line changed: titles and diffs are as before.
        assert (title, [d.hunks for d in series.parse_patch(path)]) == before[path.name]


def test_cover_letter_check_wants_every_patch_and_no_diff(patches_copy: Path) -> None:
    letter = series.cover_letter()
    assert "introduces all" in check.check_cover_letter()

    title = series.subject(series.series_files()[1])[2]
    original = letter.read_text()
    letter.write_text(original.replace(title, "something else"))
    with pytest.raises(AssertionError, match=series.series_files()[1].name):
        check.check_cover_letter()

    letter.write_text(original.replace("## Why\n", "Why\n---\n"))
    with pytest.raises(AssertionError, match="starts with '---'"):
        check.check_cover_letter()

    diff = next(series.PATCHES_DIR.glob("0002-*.patch")).read_text()
    letter.write_text(original + diff[diff.index("diff --git "):])
    with pytest.raises(AssertionError, match="carries no diff"):
        check.check_cover_letter()


def test_export_keeps_the_cover_letter(patches_copy: Path, tmp_path: Path) -> None:
    directory = tmp_path / "ws"
    workspace.make_workspace(directory)
    text = series.cover_letter().read_text()
    workspace.export(directory)
    assert series.cover_letter() is not None and series.cover_letter().read_text() == text
    assert series.COVER_LETTER not in (patches_copy / "series").read_text()


def test_subject_unfolds_continuation_lines(tmp_path: Path) -> None:
    mail = tmp_path / "mail.patch"
    mail.write_text("From: a <a@b>\nSubject: [PATCH 3/9] [ATen] Add a long\n subject line\n\nbody\n")
    assert series.subject(mail) == (3, 9, "[ATen] Add a long subject line")
    mail.write_text("From: a <a@b>\nSubject: no number\n")
    with pytest.raises(series.SeriesError, match="no 'Subject"):
        series.subject(mail)

