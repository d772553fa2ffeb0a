"""Restore path checks (drtool/safe_paths.py) on archives written by Python's tarfile in every
format GNU tar and Go's archive/tar (restic dump) use, and on real GNU tar output."""

from __future__ import annotations

import random
import subprocess
import tarfile
from pathlib import Path

import pytest

from drtool.safe_paths import (
    TarMemberGuard,
    local_symlinks,
    name_problem,
    safe_stream_name,
    symlink_crossings,
)

from tests.support.tars import crafted_tar

FORMATS = [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT]


def _guard(data: bytes, chunk: int | None = None) -> TarMemberGuard:
    guard = TarMemberGuard()
    if chunk is None:
        guard.feed(data)
    else:
        rng = random.Random(chunk)
        pos = 0
        while pos < len(data):
            n = rng.randint(1, chunk)
            guard.feed(data[pos:pos + n])
            pos += n
    return guard


GOOD = [("srv", "dir", ""), ("srv/scans", "dir", ""), ("srv/scans/a.pdf", "file", b"%PDF" * 3000),
        ("srv/latest.pdf", "symlink", "scans/a.pdf"), ("srv/etc-link", "symlink", "/etc"),
        ("srv/again.pdf", "hardlink", "srv/scans/a.pdf"),
        ("srv/" + "/".join(["a-long-directory-name"] * 7) + "/f.txt", "file", b"long name (ustar prefix, GNU L)"),
        ("srv/nama-ṡurat.txt", "file", b"utf-8 name")]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("chunk", [None, 1, 511, 513, 100_000])
def test_a_normal_archive_passes(fmt: int, chunk: int | None) -> None:
    guard = _guard(crafted_tar(GOOD, fmt), chunk)
    assert guard.problem is None and guard.members == len(GOOD)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("bad, why", [
    (("../escape.txt", "file", b"x"), "has a '..' component"),
    (("srv/../../escape.txt", "file", b"x"), "has a '..' component"),
    (("/etc/cron.d/evil", "file", b"x"), "is absolute"),
    (("srv/etc-link/cron.d/evil", "file", b"x"), "lies below the symlink srv/etc-link of the same archive"),
    (("srv/h", "hardlink", "/etc/shadow"), "is a hard link to '/etc/shadow', which is absolute"),
    (("srv/" + "deep-" * 30 + "/../../../../../../../../../../../../../../../../../../../../../../../../../../../../"
      "../../x", "file", b"x"), "has a '..' component"),
])
def test_a_member_that_leaves_the_target_is_caught(fmt: int, bad: tuple, why: str) -> None:
    if fmt == tarfile.USTAR_FORMAT and len(bad[0]) > 255:
        pytest.skip("ustar cannot hold that name")
    data = crafted_tar(GOOD + [bad] + [("srv/after.txt", "file", b"after")], fmt)
    for chunk in (None, 7, 600):
        guard = _guard(data, chunk)
        assert guard.problem == f"archive member {bad[0]!r} {why}", guard.problem


def test_real_gnu_tar_output_passes(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    (root / "docs" / "sub").mkdir(parents=True)
    (root / "docs" / "sub" / "a.txt").write_text("a" * 10_000)
    (root / "docs" / ("n" * 150)).write_text("long")
    (root / "docs" / "link").symlink_to("/etc/hostname")
    data = subprocess.run(["tar", "-C", str(root), "-cf", "-", "docs"], check=True, capture_output=True).stdout
    guard = _guard(data, 999)
    assert guard.problem is None and guard.members == 5


def test_name_problem_and_stream_names() -> None:
    assert name_problem("srv/a") is None and name_problem("srv/..a/b") is None
    assert name_problem("a/../b") == "has a '..' component"
    assert name_problem("/a") == "is absolute"
    assert [n for n in ("siak.pgdump", "globals.sql", "../x.pgdump", "a/b", "..", "", ".") if safe_stream_name(n)] \
        == ["siak.pgdump", "globals.sql"]


def test_symlink_crossings_in_an_existing_target(tmp_path: Path) -> None:
    (tmp_path / "srv").mkdir()
    (tmp_path / "srv" / "link_out").symlink_to("/outside")
    (tmp_path / "srv" / "fine").symlink_to("data.txt")
    links = local_symlinks(tmp_path)
    assert links == {"srv/link_out": "/outside", "srv/fine": "data.txt"}
    paths = ["srv", "srv/link_out", "srv/link_out/PWNED", "/srv/fine", "srv/other/x"]
    assert symlink_crossings(paths, links) == ["srv/link_out/PWNED (through srv/link_out -> /outside)"]
