"""Snapshots that try to make a restore write outside its target, made with real restic: a tree
whose `link_out` is a symlink and then a directory (restored with --force over the first), tar
streams with `../`, absolute and below-a-symlink members (`restic backup --stdin`, tagged as
drtool tags a remote tar backup), a database stream named `../x`, an SQLite target that is a
symlink, and the same tar restored onto a host over SSH. Each restore is refused, nothing lands
outside, and a normal restore still works."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.faults.conftest import HOST, Site, assert_no_leak, assert_one_clear_error, files_site, next_run_succeeds
from tests.support.tars import crafted_tar

pytestmark = pytest.mark.integration




def _crafted(site: Site, policy: str, source: str, stream: str, data: bytes, run: str = "20991231T000000Z-crafted") -> None:
    """A snapshot tagged as drtool tags one stream of a run (what a compromised host could upload)."""
    tags = f"drtool,policy={policy},source={source},run={run},stream={stream}"
    site.restic("backup", "--host", HOST, "--tag", tags, "--stdin", "--stdin-filename", stream, input=data)


@pytest.fixture()
def outside(tmp_path: Path) -> Path:
    """The place no restore may write to ("/outside" of the issue)."""
    place = tmp_path / "outside"
    place.mkdir()
    return place


def _untouched(outside: Path) -> None:
    assert list(outside.iterdir()) == [], f"a restore wrote outside its target: {list(outside.iterdir())}"


def test_force_restore_over_a_symlink_that_became_a_directory(make_site, outside, tmp_path) -> None:  # noqa: ANN001
    site = files_site(make_site)
    tree = site.data / "akta"
    (tree / "link_out").symlink_to(outside)
    next_run_succeeds(site, "docs", files_sources=["scans"])
    target = tmp_path / "restore"
    assert site.drtool("restore", "docs", "--source", "scans", "--target", str(target)).returncode == 0
    link = target / str(tree).lstrip("/") / "link_out"
    assert link.is_symlink() and os.readlink(link) == str(outside)

    (tree / "link_out").unlink()
    (tree / "link_out").mkdir()
    (tree / "link_out" / "PWNED").write_text("written through the link\n")
    next_run_succeeds(site, "docs", files_sources=["scans"])
    proc = site.drtool("restore", "docs", "--source", "scans", "--target", str(target), "--force")
    assert_one_clear_error(proc, r"would write outside it: .*link_out/PWNED \(through .*link_out -> ", code=2)
    assert "nothing was written" in proc.stderr
    _untouched(outside)
    assert link.is_symlink()                                    # the target was not touched either

    fresh = tmp_path / "fresh"                                  # into an empty target it restores as it was
    assert site.drtool("restore", "docs", "--source", "scans", "--target", str(fresh)).returncode == 0
    assert (fresh / str(tree).lstrip("/") / "link_out" / "PWNED").read_text() == "written through the link\n"
    assert_no_leak(site)


ESCAPES = [("../escape.txt", "has a '..' component"),
           ("srv/../../escape.txt", "has a '..' component"),
           ("/escape.txt", "is absolute"),
           ("srv/link/escape.txt", "lies below the symlink srv/link of the same archive")]


def test_tar_stream_with_a_member_outside_the_target(make_site, outside, tmp_path) -> None:  # noqa: ANN001
    """One crafted archive per way out, each restored into its own empty target."""
    site = files_site(make_site)
    assert site.drtool("init-repo", "offsite").returncode == 0
    for n, (member, why) in enumerate(ESCAPES):
        data = crafted_tar([("srv", "dir", ""), ("srv/ok.txt", "file", b"fine\n"), ("srv/link", "symlink", str(outside)),
                     (member, "file", b"escaped\n")])
        run = f"20991231T00000{n}Z-crafted"
        _crafted(site, "docs", "scans", "scans.tar", data, run=run)
        target = tmp_path / f"restore{n}"
        proc = site.drtool("restore", "docs", "--source", "scans", "--target", str(target), "--snapshot", run)
        assert_one_clear_error(proc, rf"stopped: archive member '{member}' {why}; it was not written")
        _untouched(outside)
        assert not (tmp_path / "escape.txt").exists() and not Path("/escape.txt").exists()
        landed = [str(p.relative_to(target)) for p in target.rglob("*")] if target.exists() else []
        assert all(not p.endswith("escape.txt") for p in landed), landed


def test_tar_restore_with_force_over_an_existing_symlink(make_site, outside, tmp_path) -> None:  # noqa: ANN001
    site = files_site(make_site)
    assert site.drtool("init-repo", "offsite").returncode == 0
    target = tmp_path / "restore"
    (target / "srv").mkdir(parents=True)
    (target / "srv" / "link_out").symlink_to(outside)          # left by an earlier restore
    _crafted(site, "docs", "scans", "scans.tar",
             crafted_tar([("srv", "dir", ""), ("srv/link_out", "dir", ""), ("srv/link_out/PWNED", "file", b"x\n")]))
    proc = site.drtool("restore", "docs", "--source", "scans", "--target", str(target), "--force")
    assert_one_clear_error(proc, r"would write outside it: srv/link_out/PWNED \(through srv/link_out -> ", code=2)
    _untouched(outside)


def test_database_stream_named_outside_its_directory(make_site, tmp_path) -> None:  # noqa: ANN001
    site = make_site()
    db = site.data / "queue.sqlite"
    import sqlite3
    with sqlite3.connect(db) as conn:
        conn.execute("create table q (id integer)")
    site.policy("queue", [{"name": "queue", "sqlite": {"path": str(db)}}])
    assert site.drtool("init-repo", "offsite").returncode == 0
    fingerprint = {"kind": "sqlite", "databases": {"../../queue.sqlite": {}}, "streams": ["../../queue.sqlite"]}
    _crafted(site, "queue", "queue", "../../queue.sqlite", db.read_bytes())
    _crafted(site, "queue", "queue", "fingerprint.json", json.dumps(fingerprint).encode())
    target = tmp_path / "restored" / "queue.sqlite"
    proc = site.drtool("restore", "queue", "--source", "queue", "--target", str(target))
    assert_one_clear_error(proc, r"stream\(s\) named '\.\./\.\./queue\.sqlite', which are not plain file names", code=2)
    assert not target.exists() and not (tmp_path / "queue.sqlite").exists()


def test_sqlite_target_that_is_a_symlink(make_site, tmp_path) -> None:  # noqa: ANN001
    site = make_site()
    db = site.data / "queue.sqlite"
    import sqlite3
    with sqlite3.connect(db) as conn:
        conn.execute("create table q (id integer)")
        conn.execute("insert into q values (1)")
    site.policy("queue", [{"name": "queue", "sqlite": {"path": str(db)}}])
    next_run_succeeds(site, "queue", ["queue"])
    victim = tmp_path / "production.sqlite"
    victim.write_bytes(b"precious")
    link = tmp_path / "restore.sqlite"
    link.symlink_to(victim)
    proc = site.drtool("restore", "queue", "--source", "queue", "--target", str(link), "--force")
    assert_one_clear_error(proc, r"is a symlink \(to .*production.sqlite\); nothing was changed", code=2)
    assert victim.read_bytes() == b"precious" and link.is_symlink()
    ok = site.drtool("restore", "queue", "--source", "queue", "--target", str(tmp_path / "real.sqlite"))
    assert ok.returncode == 0, ok.stderr
