"""A full files drill against real restic + rclone S3: restore, verify, command, http, kit."""

from __future__ import annotations

import http.server
import json
import os
import sys
import threading
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.support.drtool_env import assert_no_leftovers, child_pids, data_root, make_env, private_tmp


@pytest.fixture()
def drill_tmp():
    with private_tmp() as base:
        yield base


def make_tree(root: Path) -> Path:
    data = root / "scans"
    (data / "2021" / "11").mkdir(parents=True)
    (data / "2021" / "11" / "ktp-0001.txt").write_text("NIK 1671xxxxxxxx0001\n" * 50)
    (data / "2021" / "11" / "kk-0002.bin").write_bytes(os.urandom(40_000))
    (data / "secret.txt").write_text("only root\n")
    (data / "secret.txt").chmod(0o600)
    (data / "latest").symlink_to("2021/11/ktp-0001.txt")
    return data


@pytest.fixture()
def prod():
    with data_root() as base:
        yield base


@pytest.fixture()
def http_ok():
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            body = b"siak service: ready" if self.path == "/health" else b"nope"
            self.send_response(200 if self.path == "/health" else 503)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):  # noqa: ANN002
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_files_drill_passes_with_every_step_kind(tmp_path, s3_server, bucket, drill_tmp, http_ok, prod):
    env = make_env(tmp_path / "setup", s3_server, bucket)
    data = make_tree(prod)
    env.policy("arsip", [{"name": "scans", "files": {"paths": [str(data)]}}], targets={"rpo": "1h", "rto": "10m"})
    check = ("import os, sys; d = os.environ['DRTOOL_RESTORE_DIR']; "
             f"p = os.path.join(d, {str(data).lstrip('/')!r}, '2021/11/ktp-0001.txt'); "
             "print('found', p); sys.exit(0 if os.path.getsize(p) > 0 else 3)")
    env.playbook("arsip-drill", {"policy": "arsip", "steps": [
        {"name": "recovery credentials open the repository", "kit": {}},
        {"name": "restore scans", "restore": {"source": "scans", "into": "scratch"}},
        {"name": "scans match backup", "verify": {"source": "scans"}},
        {"name": "scan readable", "command": [sys.executable, "-c", check], "timeout": "30s"},
        {"name": "service answers", "http": {"url": f"{http_ok}/health", "body_regex": "ready"}},
    ]})
    env.backup("arsip")
    children = child_pids()
    junit = tmp_path / "out" / "drill.xml"
    code, report, err = env.run_json("drill", "arsip-drill", "--junit", str(junit),
                                     "--report-dir", str(tmp_path / "reports"))
    assert code == 0, json.dumps(report, indent=1) + err
    assert report["passed"] is True and report["policy"] == "arsip" and report["playbook"] == "arsip-drill"
    assert [s["status"] for s in report["steps"]] == ["passed"] * 5
    restore = report["steps"][1]
    assert restore["phases"][0]["bytes"] > 40_000 and restore["phases"][0]["throughput_mb_s"] is not None
    assert "content hashes" in restore["detail"]
    assert "scans: 1 sets" in report["steps"][0]["detail"]
    assert report["rto"]["met"] is True and 0 < report["rto"]["achieved_s"] < 600
    assert report["rpo"]["met"] is True and report["rpo"]["achieved_s"] < 3600
    assert report["snapshot"]["id"] and report["snapshot"]["time"]
    # Reports: JUnit with one case per step plus the targets; a signed JSON file.
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite.get("failures") == "0" and len(suite.findall("testcase")) == 7
    written = sorted(p.name for p in (tmp_path / "reports").iterdir())
    assert written == [f"{report['id']}.html", f"{report['id']}.json", f"{report['id']}.junit.xml"]
    from drtool.crypto.signing import verify_record
    verify_record(json.loads((tmp_path / "reports" / f"{report['id']}.json").read_text()))
    # Scratch directory gone, nothing left running.
    assert_no_leftovers(drill_tmp, children)
    # Recorded: catalog (drills, status) and offsite next to the run records.
    code, history, _ = env.run_json("drills", "--policy", "arsip")
    assert code == 0 and history[0]["id"] == report["id"] and history[0]["passed"] is True
    code, rows, _ = env.run_json("status")
    assert code == 0 and rows[0]["policy"] == "arsip" and rows[0]["verdict"] == "ok"
    assert rows[0]["last_drill"]["rto_achieved_s"] == report["rto"]["achieved_s"]
    offsite = list((s3_server.root / bucket).rglob(f"drills/{report['id']}.json"))
    assert offsite, "drill record not stored offsite"
    verify_record(json.loads(offsite[0].read_text()))


def test_files_drill_table_on_terminal_and_keep(tmp_path, s3_server, bucket, drill_tmp, prod):
    env = make_env(tmp_path / "setup", s3_server, bucket)
    data = make_tree(prod)
    env.policy("arsip", [{"name": "scans", "files": {"paths": [str(data)]}}])
    env.playbook("arsip-drill", {"policy": "arsip", "steps": [
        {"name": "restore scans", "restore": {"source": "scans"}},
        {"name": "scans match backup", "verify": {"source": "scans"}},
    ]})
    env.backup("arsip")
    code, out, err = env.run("drill", "arsip-drill", "--keep")
    assert code == 0, out + err
    assert "restore scans" in out and "PASSED" in out and "RTO: achieved" in out
    assert "download" in out                          # the restore phase row
    kept = [p for p in drill_tmp.iterdir() if p.name.startswith("drtool-drill-scans")]
    assert len(kept) == 1 and "kept scans: restored into" in out
    code, status_out, _ = env.run("status")
    assert code == 0 and "arsip" in status_out and "ok" in status_out
