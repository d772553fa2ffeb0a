"""PITR pure logic: argv builders, the base backup tar check, configuration sanitising, the
recovery block, history files, pg_waldump's answer, WAL coverage, WAL retention."""

from __future__ import annotations

import io
import json
import struct
import tarfile
from datetime import datetime, timedelta, timezone

import pytest

from drtool.actions.pitr_retention import doomed_batches
from drtool.errors import SourceError
from drtool.scratch.pg_recovery import parse_history, recovery_block, sanitize_conf, strip_recovery
from drtool.sources.pg_basebackup import BaseBackupCheck, pg_basebackup_argv
from drtool.sources.wal_chain import BaseBackup
from drtool.sources.wal_dump import valid_end, waldump_argv
from drtool.sources.wal_names import Batch, Segment, ranges
from drtool.sources.wal_receiver import ReceiverExit, receivewal_argv, slot_name
from drtool.sources.wal_spool import nonzero_length, wal_covered

SEG = 16 * 1024 * 1024
T0 = datetime(2026, 12, 1, 2, 0, tzinfo=timezone.utc)


def test_argv_builders_are_exact():
    conn = ["-h", "db", "-p", "5432", "-U", "postgres", "-w"]
    assert pg_basebackup_argv("/usr/lib/postgresql/15/bin", conn, "drtool base backup") == [
        "/usr/lib/postgresql/15/bin/pg_basebackup", *conn, "-D", "-", "-F", "t", "-X", "fetch", "--checkpoint=fast",
        "--label=drtool base backup"]
    assert receivewal_argv(None, conn, "/spool/wal", "drtool_siak_db") == [
        "pg_receivewal", *conn, "-D", "/spool/wal", "--no-loop", "-s", "10", "--slot", "drtool_siak_db"]
    assert receivewal_argv(None, conn, "/spool/wal", None)[-1] == "10"
    assert waldump_argv("/bin/pg_waldump", "/c", Segment(1, 3), SEG) == [
        "/bin/pg_waldump", "-q", "-p", "/c", "-s", "0/3000000", "000000010000000000000003"]


def test_slot_names():
    assert slot_name("Siak", "db-1", True) == "drtool_siak_db_1"
    assert slot_name("p", "s", "mine") == "mine" and slot_name("p", "s", False) is None
    assert len(slot_name("p" * 60, "s" * 60, True)) == 63


def test_receiver_exit_names_the_servers_cause():
    ended = ReceiverExit(1, "pg_receivewal: starting log streaming at 0/3000000 (timeline 1)\n"
                            "pg_receivewal: error: unexpected termination of replication stream: ERROR:  requested WAL "
                            "segment 000000010000000000000003 has already been removed\n"
                            "pg_receivewal: error: disconnected", True)
    assert "has already been removed" in ended.cause


# ---------------------------------------------------------------- the base backup check

MB = 1 << 20          # the smallest wal_segment_size: 0/2000028 lies in segment 0x20


def fake_base_tar(*, wal=("000000010000000000000020",), manifest_extra=None, cut: int | None = None,
                  label_start="0/2000028") -> bytes:
    files = {"backup_label": f"START WAL LOCATION: {label_start} (file 000000010000000000000002)\n"
                             "START TIMELINE: 1\nSTART TIME: 2026-12-01 02:00:00 WIB\n".encode(),
             "PG_VERSION": b"15\n", "global/pg_control": struct.pack("<Q", 7312) + bytes(8184),
             "base/1/1259": b"x" * 1000}
    files.update({f"pg_wal/{name}": b"\1" * MB for name in wal})
    manifest = {"Files": [{"Path": p, "Size": len(d)} for p, d in files.items()] + (manifest_extra or []),
                "WAL-Ranges": [{"Timeline": 1, "Start-LSN": label_start, "End-LSN": "0/2000100"}]}
    files["backup_manifest"] = json.dumps(manifest).encode()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    data = out.getvalue()
    return data[:cut] if cut is not None else data


def check(data: bytes, chunk: int = 777) -> BaseBackupCheck:
    c = BaseBackupCheck()
    for i in range(0, len(data), chunk):
        c.feed(data[i:i + chunk])
    c.finish()
    return c


def test_base_backup_check_reads_what_recovery_needs():
    info = check(fake_base_tar(), chunk=1 << 20).info() | {}
    assert info["start_lsn"] == "0/2000028" and info["stop_lsn"] == "0/2000100" and info["timeline"] == 1
    assert info["sysid"] == "7312" and info["major"] == 15 and info["segsize"] == MB
    assert info["start_time"] == "2026-12-01 02:00:00 WIB"
    assert check(fake_base_tar(), chunk=7).info()["stop_lsn"] == "0/2000100"      # any chunking


@pytest.mark.parametrize("damage, message", [
    ({"cut": 3000}, "end-of-archive marker"),
    ({"manifest_extra": [{"Path": "base/1/2619", "Size": 8192}]}, "does not match its manifest"),
    ({"wal": ()}, "holds no WAL"),
    ({"wal": ("000000010000000000000021",)}, "lacks 1 WAL segment"),
])
def test_base_backup_check_refuses_a_damaged_stream(damage, message):
    with pytest.raises(SourceError, match=message):
        check(fake_base_tar(**damage))


def test_base_backup_check_refuses_a_flipped_header_byte():
    data = bytearray(fake_base_tar())
    data[100] ^= 0x01                                  # the mode field of the first header
    with pytest.raises(SourceError, match="wrong checksum"):
        check(bytes(data))


# ---------------------------------------------------------------- recovery configuration

def test_sanitize_conf_disables_what_points_at_the_old_server():
    text = ("shared_buffers = 2GB\nport = 5432\narchive_command = 'cp %p /mnt/archive/%f'\n"
            "data_directory = '/var/lib/postgresql/15/main'\ninclude = '/etc/postgresql/extra.conf'\n"
            "include_if_exists = 'gone.conf'\n  listen_addresses='*'  # all\nfsync = off\n")
    out, dropped = sanitize_conf(text, exists=lambda path: False, also=frozenset({"fsync"}))
    assert "shared_buffers = 2GB" in out.splitlines() and "include_if_exists = 'gone.conf'" in out.splitlines()
    assert dropped == ["archive_command", "data_directory", "fsync", "include", "listen_addresses", "port"]
    assert all(line.startswith("#drtool# ") for line in out.splitlines()
               if any(k in line for k in ("port", "archive", "data_directory", "include =", "listen", "fsync")))


def test_recovery_block_and_strip():
    block = recovery_block("python3 -I -S '/x/walfetch.py' '/x/s.sock' %f %p", T0 + timedelta(microseconds=5))
    assert "restore_command = 'python3 -I -S ''/x/walfetch.py'' ''/x/s.sock'' %f %p'" in block
    assert "recovery_target_time = '2026-12-01 02:00:00.000005+00'" in block
    assert "recovery_target_action = 'promote'" in block and "recovery_target_timeline = 'latest'" in block
    latest = recovery_block("cmd", None)
    assert "recovery_target_time =" not in latest
    assert strip_recovery("work_mem = 64MB\n" + block) == "work_mem = 64MB\n"


def test_parse_history():
    text = "1\t0/5002758\tno recovery target specified\n\n2\t0/7000000\tbefore 2026-12-01 02:00:00+00\n"
    assert parse_history(text) == [(1, 0x5002758, "no recovery target specified"),
                                   (2, 0x7000000, "before 2026-12-01 02:00:00+00")]


# ---------------------------------------------------------------- how much of a copy is valid WAL

def test_valid_end_from_pg_waldump():
    assert valid_end("pg_waldump: error: error in WAL record at 0/3002720: invalid record length at 0/3002758: "
                     "wanted 24, got 0") == 0x3002758
    # no position in the message: the start of the last valid record is a safe lower bound
    assert valid_end("pg_waldump: error: error in WAL record at 0/3001FA0: invalid magic number 0000 in log "
                     "segment 000000010000000000000003, offset 8192") == 0x3001FA0
    assert valid_end("pg_waldump: error: could not read file") is None


def test_wal_covered():
    seg3 = Segment(1, 3)
    assert wal_covered(3 * SEG + 500, SEG, (seg3, 500), 2)
    assert not wal_covered(3 * SEG + 501, SEG, (seg3, 500), 2)
    assert wal_covered(2 * SEG + 9, SEG, (seg3, 0), 2)                 # in a complete segment
    assert wal_covered(4 * SEG + 40, SEG, None, 3)                     # just past a fresh segment's header
    assert not wal_covered(4 * SEG + 41, SEG, None, 3)
    assert not wal_covered(5 * SEG, SEG, None, 3)
    assert nonzero_length(b"ab\0c\0\0\0") == 4


# ---------------------------------------------------------------- WAL retention

def batch(sid: str, minute: float, complete=(), partial=None, histories=()) -> Batch:
    when = T0 + timedelta(minutes=minute)
    return Batch(sid, when, sid, tuple(ranges(Segment(1, n) for n in complete)),
                 (Segment(1, partial[0]), partial[1]) if partial else None, tuple(histories), when, "42", SEG)


def base(minute: float, start: int) -> BaseBackup:
    at = T0 + timedelta(minutes=minute)
    return BaseBackup("r", "b", start * SEG, start * SEG + 100, 1, at, at, "42", SEG, 15)


def test_doomed_batches():
    batches = [batch("old", 1, complete=[2, 3], partial=(4, 10)),
               batch("p4a", 2, partial=(4, 500)), batch("h", 2.5, histories=[2]),
               batch("c4", 3, complete=[4], partial=(5, 10)),          # the kept base starts in segment 5
               batch("c5", 3.2, complete=[5, 6], partial=(7, 10)), batch("p7", 3.3, partial=(7, 20)),
               batch("p8a", 4, partial=(8, 100)), batch("p8b", 5, partial=(8, 900)),
               batch("new", 6, partial=(8, 900))]
    doomed = {b.snapshot_id for b in doomed_batches(batches, [base(3.5, 5)])}
    # Gone: before the oldest kept base backup (old, p4a, c4: its copy of 5 is superseded), superseded
    # copies (p8a, p8b). Kept: needed segments (c5), the longest copy of 7 (p7), a history file, the newest.
    assert doomed == {"old", "p4a", "c4", "p8a", "p8b"}
    assert doomed_batches(batches, []) == []                              # no base kept: nothing goes


# ---------------------------------------------------------------- configuration and usage errors

def test_pitr_settings_are_checked_with_file_positions(tmp_path):
    from drtool.config import load_settings
    from drtool.errors import ConfigError

    (tmp_path / "policies").mkdir()
    (tmp_path / "drtool.yaml").write_text(f"state_dir: {tmp_path / 'state'}\nrepositories:\n"
                                          "  offsite: {url: /srv/offsite, password: {env: DRTOOL_TEST_PW}}\n"
                                          "hosts:\n  db1: {address: 127.0.0.1}\n")
    (tmp_path / "policies" / "siak.yaml").write_text(
        "name: siak\nrepository: offsite\nhost: db1\nsources:\n  - name: db\n"
        "    postgres: {database: siak, pitr: {wal_ship: 0.5s, spool_max: lots, slot: Bad-Name}}\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(str(tmp_path / "drtool.yaml"))
    text = str(caught.value)
    assert "wal_ship must be between 1s and 1h" in text and "expected a size like 512M" in text
    assert "replication slot name" in text and "siak.yaml:6" in text
    (tmp_path / "policies" / "siak.yaml").write_text(
        "name: siak\nrepository: offsite\nhost: db1\nsources:\n  - name: db\n    postgres: {database: siak, pitr: {}}\n")
    with pytest.raises(ConfigError, match="not supported for a policy with host:"):
        load_settings(str(tmp_path / "drtool.yaml"))


def test_restore_at_needs_a_pitr_source_and_a_time(tmp_path):
    from drtool.actions.pitr import parse_at, restore_source_at
    from drtool.config import load_settings
    from drtool.errors import UsageError

    (tmp_path / "policies").mkdir()
    (tmp_path / "drtool.yaml").write_text(f"state_dir: {tmp_path / 'state'}\nrepositories:\n"
                                          "  offsite: {url: /srv/offsite, password: {env: DRTOOL_TEST_PW}}\n")
    (tmp_path / "policies" / "siak.yaml").write_text(
        "name: siak\nrepository: offsite\nsources:\n  - name: db\n    postgres: {database: siak}\n")
    settings = load_settings(str(tmp_path / "drtool.yaml"))
    with pytest.raises(UsageError, match="needs a PostgreSQL source with pitr"):
        restore_source_at(settings, settings.policy("siak"), "db", "latest", str(tmp_path / "t"))
    assert not (tmp_path / "t").exists()
    assert parse_at("latest") is None and parse_at("2026-12-01T14:05:00").tzinfo is not None
    assert parse_at("2026-12-01T14:05:00+07:00").utcoffset() == timedelta(hours=7)
    with pytest.raises(UsageError, match="neither `latest` nor a time"):
        parse_at("yesterday")
