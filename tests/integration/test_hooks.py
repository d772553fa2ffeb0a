"""Policy hooks run with the run's context; a failing before-hook fails the run and triggers on_failure."""

from __future__ import annotations

import json
import sys

import pytest

from tests.support.workspace import make_workspace

pytestmark = pytest.mark.integration


def _script(path, body: str) -> list[str]:
    path.write_text(body)
    return [sys.executable, str(path)]


def test_hooks_order_and_failure(tmp_path, s3_server, bucket):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a").write_text("a")
    log = tmp_path / "hooks.log"
    rec = "import os,sys; open(sys.argv[1] if len(sys.argv)>1 else %r,'a').write(os.environ['DRTOOL_POLICY']+':'+'%s'+'\\n')"
    ws = make_workspace(tmp_path / "ws", s3_server, bucket)
    hooks = {
        "before": [_script(tmp_path / "b.py", rec % (str(log), "before"))],
        "after": [_script(tmp_path / "a.py", rec % (str(log), "after"))],
        "on_failure": [_script(tmp_path / "f.py", rec % (str(log), "failed"))],
        "timeout": "30s",
    }
    ws.policy("docs", [{"name": "docs", "files": {"paths": [str(data)]}}], hooks=hooks)
    ws.drtool("backup", "docs", check=True)
    assert log.read_text().splitlines() == ["docs:before", "docs:after"]

    hooks["before"] = [[sys.executable, "-c", "import sys; sys.exit(4)"]]
    ws.policy("docs", [{"name": "docs", "files": {"paths": [str(data)]}}], hooks=hooks)
    proc = ws.drtool("backup", "docs", "--json")
    assert proc.returncode == 1
    run = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "before hook" in run["error"] and run["snapshots"] == []
    assert log.read_text().splitlines()[-1] == "docs:failed"
