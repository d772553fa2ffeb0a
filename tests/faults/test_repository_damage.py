"""A damaged repository: one byte flipped in a pack, a pack deleted. `check --read-data`, a
restore and a drill each fail with a clear error (recorded and alerted where they are runs),
and all pass again once the pack is back as it was."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.faults.conftest import (
    Site,
    assert_no_leak,
    assert_no_orphans,
    assert_one_clear_error,
    assert_recorded,
    files_site,
    next_run_succeeds,
)

pytestmark = pytest.mark.integration


def _biggest_pack(site: Site) -> Path:
    packs = [p for p in (site.repo_dir / "data").rglob("*") if p.is_file()]
    return max(packs, key=lambda p: p.stat().st_size)


def _flip(pack: Path) -> None:
    raw = bytearray(pack.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    pack.write_bytes(bytes(raw))


def _delete(pack: Path) -> None:
    pack.unlink()


@pytest.mark.parametrize("damage, cause", [
    (_flip, r"Pack ID does not match|ciphertext verification failed|hash mismatch|Blob ID does not match"),
    (_delete, r"not found|does not exist|is missing"),
], ids=["flipped-byte", "deleted-pack"])
def test_damaged_pack_fails_check_restore_and_drill(make_site, receiver, tmp_path, damage, cause) -> None:  # noqa: ANN001
    site = files_site(make_site, receiver, size=2 << 20)
    next_run_succeeds(site, "docs", files_sources=["scans"])
    site.playbook("docs-drill", {"policy": "docs", "targets": {"rto": "1h"}, "steps": [
        {"name": "restore", "restore": {"source": "scans"}}, {"name": "verify", "verify": {"source": "scans"}}]})
    pack = _biggest_pack(site)
    saved = tmp_path / "pack.orig"
    shutil.copy2(pack, saved)
    damage(pack)

    check = site.drtool("check", "docs", "--read-data-subset", "100%")
    assert_one_clear_error(check, cause)
    assert_recorded(site, site.last_run("docs", "check"), "failed")

    restore = site.drtool("restore", "docs", "--source", "scans", "--target", str(tmp_path / "restore"))
    assert_one_clear_error(restore, cause)
    assert "restore into" in restore.stderr and "left in" in restore.stderr       # and what it left there

    drill = site.drtool("drill", "docs-drill")
    assert drill.returncode == 1 and "Traceback" not in drill.stdout + drill.stderr, drill.stderr[-2000:]
    run = site.last_run("docs", "drill")
    assert_recorded(site, run, "failed", offsite=False)
    report = site.offsite(run["id"], "drills")
    assert report is not None and report["passed"] is False and "signature" in report
    assert any(s["status"] == "failed" and s["kind"] == "restore" for s in report["steps"]), report["steps"]
    assert_no_orphans(site)

    shutil.copy2(saved, pack)                                     # the pack is back as it was
    assert site.drtool("check", "docs", "--read-data-subset", "100%").returncode == 0
    again = site.drtool("restore", "docs", "--source", "scans", "--target", str(tmp_path / "again"))
    assert again.returncode == 0, again.stderr
    assert site.drtool("drill", "docs-drill").returncode == 0
    next_run_succeeds(site, "docs", files_sources=["scans"])
    assert_no_leak(site)
