"""The commit gate: a stream reaches restic's snapshot list only if its producer succeeded.

Producers here are real processes (python writing bytes and then dying in
various ways) feeding real restic on the real S3 server.
"""

from __future__ import annotations

import sys
import threading

import pytest

from drtool.engine.pipeline import Cancelled, stream_to_restic
from drtool.engine.restic import RepoAccess, Restic
from drtool.errors import ProducerFailed
from drtool.execute import LocalRunner
from drtool.secrets import Secret

pytestmark = pytest.mark.integration

TAGS = ["drtool", "policy=t", "source=db", "run=r1", "stream=x.dump"]


@pytest.fixture()
def restic(s3_server, bucket, tmp_path) -> Restic:
    access = RepoAccess(s3_server.repo_url(bucket, "gate"), Secret("gate-password-1"),
                        {"AWS_ACCESS_KEY_ID": s3_server.access_key, "AWS_SECRET_ACCESS_KEY": s3_server.secret_key})
    r = Restic(access, cache_dir=tmp_path / "cache")
    r.init()
    return r


def producer(code: str):
    return lambda: LocalRunner().start([sys.executable, "-c", code])


WRITE_THEN = "import os,sys; sys.stdout.buffer.write(b'x'*3_000_000); sys.stdout.flush(); "


def _run(restic: Restic, code: str, **kw):
    return stream_to_restic(restic, producer(code), filename="x.dump", tags=TAGS, host="h", what="test dump", **kw)


def test_successful_producer_commits_snapshot(restic):
    result = _run(restic, WRITE_THEN + "sys.exit(0)")
    snaps = restic.snapshots(tags=TAGS)
    assert len(snaps) == 1 and snaps[0].id.startswith(result.snapshot_id)  # restic 0.14 reports the short id
    assert result.bytes_in == 3_000_000


@pytest.mark.parametrize("ending, expect", [
    ("sys.exit(3)", "exited with code 3"),
    ("os.kill(os.getpid(), 9)", "killed by signal 9"),
    ("sys.stderr.write('pg_dump: error: connection lost\\n'); sys.exit(1)", "connection lost"),
])
def test_failed_producer_leaves_no_snapshot(restic, ending, expect):
    with pytest.raises(ProducerFailed) as info:
        _run(restic, WRITE_THEN + ending)
    assert expect in str(info.value)
    assert restic.snapshots(tags=TAGS) == []


def test_empty_output_is_a_failure(restic):
    with pytest.raises(ProducerFailed, match="empty"):
        _run(restic, "import sys; sys.exit(0)")
    assert restic.snapshots(tags=TAGS) == []


def test_cancel_mid_stream_leaves_no_snapshot(restic):
    cancel = threading.Event()
    slow = "import sys,time\nfor i in range(600):\n sys.stdout.buffer.write(b'y'*100000); sys.stdout.flush(); time.sleep(0.05)"
    timer = threading.Timer(1.0, cancel.set)
    timer.start()
    with pytest.raises(Cancelled):
        _run(restic, slow, cancel=cancel)
    assert restic.snapshots(tags=TAGS) == []
    # the repository is left unlocked and usable
    assert restic.snapshots() == []


def test_a_dump_that_stalls_is_stopped_and_never_committed(restic):
    import time

    started = time.monotonic()
    with pytest.raises(ProducerFailed) as info:
        _run(restic, WRITE_THEN + "import time; time.sleep(600)", stall=2)
    assert "stalled" in str(info.value) and "no snapshot was kept" in str(info.value)
    assert time.monotonic() - started < 60
    assert restic.snapshots(tags=TAGS) == []


def test_a_dump_over_its_time_limit_is_stopped_and_never_committed(restic):
    code = "import sys, time\nfor _ in range(600):\n    sys.stdout.buffer.write(b'y' * 1000); sys.stdout.flush(); time.sleep(0.1)"
    with pytest.raises(ProducerFailed) as info:
        _run(restic, code, timeout=3, stall=None)
    assert "time limit" in str(info.value)
    assert restic.snapshots(tags=TAGS) == []


def test_a_files_backup_over_its_time_limit_is_stopped_and_never_committed(restic, tmp_path):
    from drtool.engine.pipeline import backup_paths
    from drtool.errors import SourceError

    big = tmp_path / "data"
    big.mkdir()
    with open(big / "disk.img", "wb") as sparse:      # no disk used; restic needs minutes to read its zeros
        sparse.truncate(64 << 30)
    with pytest.raises(SourceError, match="time limit"):
        backup_paths(restic, [str(big)], excludes=[], one_file_system=False, tags=TAGS, host="h", timeout=3)
    assert restic.snapshots(tags=TAGS) == []


def test_wrong_password_stops_the_dump_within_its_first_bytes(restic, tmp_path):
    # No separate probe runs before a backup: restic opens the repository before it reads its
    # stdin, so the stream itself stops a 300 MB dump at once, with the typed error.
    from drtool.errors import WrongPassword

    wrong = Restic(RepoAccess(restic.access.url, Secret("not-the-password"), restic.access.env),
                   cache_dir=tmp_path / "cache2")
    marker = tmp_path / "written"
    code = (f"import sys\nn = 0\ntry:\n    for _ in range(300):\n        sys.stdout.buffer.write(b'z' * 1_000_000)\n"
            f"        sys.stdout.flush(); n += 1\nfinally:\n    open({str(marker)!r}, 'w').write(str(n))")
    with pytest.raises(WrongPassword):
        stream_to_restic(wrong, producer(code), filename="x.dump", tags=TAGS, host="h", what="test dump")
    assert int(marker.read_text() or 0) < 5, "the producer was not stopped early"
    assert restic.snapshots(tags=TAGS) == []


def test_pending_fingerprint_snapshot_commits_only_when_given_its_data(restic):
    from drtool.engine.pipeline import PendingSnapshot

    aborted = PendingSnapshot(restic, filename="fingerprint.json", tags=TAGS, host="h")
    aborted.abort()
    assert restic.snapshots(tags=TAGS) == []
    pending = PendingSnapshot(restic, filename="fingerprint.json", tags=TAGS, host="h")
    snapshot_id = pending.commit(b'{"databases": {}}')
    [snap] = restic.snapshots(tags=TAGS)
    assert snap.id.startswith(snapshot_id)
