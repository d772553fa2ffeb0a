"""forget applies retention per source over complete sets; check verifies the repository."""

from __future__ import annotations

import json

import pytest

from tests.support.workspace import make_workspace

pytestmark = pytest.mark.integration


def test_forget_keeps_last_and_prunes(tmp_path, s3_server, bucket):
    data = tmp_path / "data"
    data.mkdir()
    ws = make_workspace(tmp_path / "ws", s3_server, bucket)
    ws.policy("docs", [{"name": "docs", "files": {"paths": [str(data)]}}], retention={"last": 2})
    for i in range(3):
        (data / f"f{i}.txt").write_text(f"version {i}")
        ws.drtool("backup", "docs", check=True)
    assert len(json.loads(ws.drtool("snapshots", "docs", "--json", check=True).stdout)) == 3
    dry = json.loads(ws.drtool("forget", "docs", "--dry-run", "--json", check=True).stdout)
    assert dry["details"]["sources"]["docs"] == {"kept": 2, "forgotten": 1, "debris": 0}
    assert len(json.loads(ws.drtool("snapshots", "docs", "--json", check=True).stdout)) == 3   # dry run changed nothing
    ws.drtool("forget", "docs", check=True)
    left = json.loads(ws.drtool("snapshots", "docs", "--json", check=True).stdout)
    assert len(left) == 2
    check = ws.drtool("check", "docs", "--read-data-subset", "50%")
    assert check.returncode == 0, check.stderr


def test_check_detects_damaged_pack(tmp_path, s3_server, bucket):
    data = tmp_path / "data"
    data.mkdir()
    (data / "big.bin").write_bytes(bytes(range(256)) * 4000)
    ws = make_workspace(tmp_path / "ws", s3_server, bucket)
    ws.policy("docs", [{"name": "docs", "files": {"paths": [str(data)]}}])
    ws.drtool("backup", "docs", check=True)
    packs = sorted((s3_server.root / bucket / "repo" / "data").rglob("*"), key=lambda p: p.stat().st_size)
    victim = [p for p in packs if p.is_file()][-1]
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    victim.write_bytes(bytes(raw))
    proc = ws.drtool("check", "docs", "--read-data-subset", "100%")
    assert proc.returncode == 1
    assert "FAILED" in proc.stdout
