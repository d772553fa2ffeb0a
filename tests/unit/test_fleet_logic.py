"""Pure parts of the fleet view and the drill pool: record choice, targets, signatures, due drills."""

from __future__ import annotations

import base64
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from drtool.actions.fleet.evaluate import rto_drills, rule_32110, targets_for
from drtool.actions.fleet.read import select_newest
from drtool.actions.pool.enqueue import is_due
from drtool.config.fleet import RecordWindow, Site
from drtool.crypto.signing import public_key_b64, sign_record
from drtool.records import check_signature_by
from drtool.report.fleet_page import letters
from drtool.storage.records_reader import CatalogEntry

KEY = base64.b64encode(b"s" * 32).decode()


def entry(path: str) -> CatalogEntry:
    return CatalogEntry(path, "etag-" + path, 100)


def test_select_newest_takes_the_newest_of_each_kind_plus_pinned_and_ignores_strangers() -> None:
    names = [f"runs/2026110{d}T020000Z-backup-00000{d}.json" for d in range(1, 8)]
    names += ["runs/20261101T030000Z-check-aaaaaa.json", "runs/20261102T030000Z-check-bbbbbb.json",
              "runs/20261101T040000Z-kit-verify-cccccc.json", "drills/20261101T050000Z-drill-dddddd.json",
              "runs/evil.json", "drills/../../x.json"]
    chosen = [e.path for e in select_newest([entry(n) for n in names], RecordWindow(backups=3, checks=1),
                                            pinned={names[0]})]
    assert chosen == sorted([names[0], *names[4:7], "runs/20261102T030000Z-check-bbbbbb.json",
                             "drills/20261101T050000Z-drill-dddddd.json"])


def test_targets_come_from_the_fleet_file_then_the_backup_record_then_the_drill() -> None:
    site = Site(name="s", repository="s3:http://127.0.0.1:9000/bucket/p", signing_key=KEY,
                targets={"siak": {"rto": 7200}})
    backups = [{"details": {"targets": {"rpo_s": 3600.0, "rto_s": 100.0}}}]
    drills = [{"rto": {"target_s": 50.0}, "rpo": {"target_s": 60.0}}]
    assert targets_for(site, "siak", backups, drills) == (3600.0, 7200.0)
    assert targets_for(site, "other", [], drills) == (60.0, 50.0)
    assert targets_for(site, "other", [], []) == (None, None)


def test_rto_drills_count_restores_at_the_policy_target_else_every_drill() -> None:
    full = {"steps": [{"kind": "restore"}], "rto": {"target_s": 3600.0}}
    quick = {"steps": [{"kind": "sql"}], "rto": {"target_s": 60.0}}
    assert rto_drills([full, quick], 3600.0) == [full]
    assert rto_drills([quick], 3600.0) == [quick]


def test_signature_by_a_known_key_only() -> None:
    site, pool, stranger = (Ed25519PrivateKey.generate() for _ in range(3))
    keys = {public_key_b64(site): "the site's key", public_key_b64(pool): "the drill pool's key"}
    record = {"id": "r1", "kind": "backup", "status": "success"}
    assert check_signature_by(sign_record(record, site), keys).signature == "valid"
    assert "drill pool" in check_signature_by(sign_record(record, pool), keys).signature_detail
    other = check_signature_by(sign_record(record, stranger), keys)
    assert other.signature == "invalid" and "neither the site's key" in other.signature_detail
    altered = sign_record(record, site) | {"status": "failed"}
    assert check_signature_by(altered, keys).signature == "invalid"
    assert check_signature_by(record, keys).signature == "unsigned"


def test_a_scheduled_drill_is_due_once_per_slot() -> None:
    tz = ZoneInfo("Asia/Jakarta")
    now = datetime(2026, 12, 2, 1, 0, tzinfo=timezone.utc)            # 08:00 in Jakarta, Dec 2
    assert is_due("0 3 1 * *", None, now, tz)                         # never ran
    assert is_due("0 3 1 * *", datetime(2026, 11, 30, tzinfo=timezone.utc), now, tz)
    assert not is_due("0 3 1 * *", datetime(2026, 11, 30, 21, tzinfo=timezone.utc), now, tz)   # after Dec 1 03:00 WIB
    assert not is_due(None, None, now, tz)


def test_3_2_1_1_0_letters_from_the_newest_record_that_carries_them() -> None:
    rule = {"letters": {"3": True, "2": True, "1o": True, "1i": False, "0": None}, "detail": "falls short on 1i"}
    assert rule_32110([{"details": {"rule_32110": rule}}, {"details": {}}]) == rule
    assert rule_32110([{"details": {}}]) is None
    assert letters(rule) == "3 2 1 - ?" and letters(None) == "not assessed"
