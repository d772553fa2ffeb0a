"""The restore_command broker against a real restic repository: a file of the plan is served (a
partial copy padded to the segment size), a name outside the plan is "absent" (exit 1: the normal
end of recovery), and a batch whose content does not match its manifest is exit 150, which makes
PostgreSQL abort instead of ending recovery early. The password never reaches the client."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from drtool.engine.restic import RepoAccess, Restic
from drtool.secrets import Secret
from drtool.sources.wal_chain import FileRef
from drtool.sources.wal_fetch import ABORT_CODE, WalBroker, client_python

pytestmark = pytest.mark.integration

SEG = 1 << 20
PASSWORD = "broker-Repo-Pw-91c2"


def batch(restic: Restic, root: Path, name: str, files: dict[str, bytes], lie: str | None = None) -> str:
    """A WAL batch snapshot like the shipper makes (files + manifest.json at the root)."""
    outbox = root / name
    outbox.mkdir()
    manifest = {"segment_size": SEG, "files": {}}
    for fname, data in files.items():
        (outbox / fname).write_bytes(data)
        digest = hashlib.sha256(b"something else" if fname == lie else data).hexdigest()
        manifest["files"][fname] = {"size": len(data), "sha256": digest}
    (outbox / "manifest.json").write_text(json.dumps(manifest))
    result = restic.run(["backup", "--json", "--host", "h", "--tag", f"wal=db,batch={name}", "."], cwd=str(outbox))
    return next(json.loads(line)["snapshot_id"] for line in result.text.splitlines()
                if '"summary"' in line)


def ask(broker: WalBroker, name: str, dest: Path) -> int:
    command = broker.restore_command(client_python()).replace("%f", name).replace("%p", str(dest))
    return subprocess.run(["sh", "-c", command], capture_output=True, timeout=60).returncode


def test_broker_serves_the_plan_refuses_the_rest_and_stops_recovery_on_a_damaged_batch(tmp_path):
    repo = tmp_path / "repo"
    restic = Restic(RepoAccess(str(repo), Secret(PASSWORD)), cache_dir=tmp_path / "cache")
    restic.init()
    seg = b"\x07" * SEG
    good = batch(restic, tmp_path, "b1", {"000000010000000000000003": seg, "000000010000000000000004.partial": b"wal"})
    bad = batch(restic, tmp_path, "b2", {"000000010000000000000005": seg}, lie="000000010000000000000005")
    files = {"000000010000000000000003": FileRef(good, "000000010000000000000003"),
             "000000010000000000000004": FileRef(good, "000000010000000000000004.partial", 3),
             "000000010000000000000005": FileRef(bad, "000000010000000000000005")}
    home = tmp_path / "cluster"
    home.mkdir()
    with WalBroker(restic, files, SEG, home, owner=None) as broker:
        command = broker.restore_command(client_python())
        assert PASSWORD not in command and "%f %p" in command
        assert ask(broker, "000000010000000000000003", tmp_path / "RECOVERYXLOG") == 0
        assert (tmp_path / "RECOVERYXLOG").read_bytes() == seg
        assert ask(broker, "000000010000000000000004", tmp_path / "partial") == 0
        assert (tmp_path / "partial").read_bytes() == b"wal" + bytes(SEG - 3)      # padded to the segment size
        assert ask(broker, "000000010000000000000006", tmp_path / "absent") == 1     # the normal end of the WAL
        assert ask(broker, "00000002.history", tmp_path / "absent") == 1
        assert not (tmp_path / "absent").exists()
        assert ask(broker, "000000010000000000000005", tmp_path / "damaged") == ABORT_CODE
        assert not (tmp_path / "damaged").exists()
        assert [r.result for r in broker.requests] == ["served", "served", "absent", "absent", "error"]
        assert "does not match its manifest" in broker.errors()[0].detail
        assert broker.batches_fetched == 2                                          # one restic restore per batch
    assert not broker.socket_path.exists() and not broker.client_path.exists()
    # The broker gone (drtool died): the client cannot ask, and says so with the abort code.
    assert ask(broker, "000000010000000000000003", tmp_path / "late") == ABORT_CODE


def test_prefetch_fetches_the_batches_before_they_are_asked_for(tmp_path):
    import time

    restic = Restic(RepoAccess(str(tmp_path / "repo"), Secret(PASSWORD)), cache_dir=tmp_path / "cache")
    restic.init()
    seg = b"\x03" * SEG
    first = batch(restic, tmp_path, "b1", {"000000010000000000000003": seg})
    second = batch(restic, tmp_path, "b2", {"000000010000000000000004": seg})
    files = {"000000010000000000000003": FileRef(first, "000000010000000000000003"),
             "000000010000000000000004": FileRef(second, "000000010000000000000004")}
    home = tmp_path / "cluster"
    home.mkdir()
    with WalBroker(restic, files, SEG, home, owner=None) as broker:
        broker.prefetch()
        deadline = time.monotonic() + 60
        while broker.batches_fetched < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert broker.batches_fetched == 2 and broker.requests == []            # nobody asked yet
        assert ask(broker, "000000010000000000000003", tmp_path / "a") == 0
        assert ask(broker, "000000010000000000000004", tmp_path / "b") == 0
        assert broker.batches_fetched == 2                                      # served from the cache
        assert (tmp_path / "b").read_bytes() == seg
