"""`drtool validate` resolves every secret and local path, reports all problems at once, never a value."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from drtool.actions import validate as validate_action
from drtool.actions.validate import validate_setup
from drtool.cli import main

CANARY = "canary-Secret-7f3a91"


def write(root: Path, *, password: str, key: str = "{env: DRV_KEY}", endpoint: str = "127.0.0.1:9",
          files: str = "/etc/hostname", host: str = "") -> Path:
    (root / "policies").mkdir(parents=True, exist_ok=True)
    (root / "drtool.yaml").write_text(
        f"state_dir: {root / 'state'}\nrepositories:\n  offsite:\n    url: s3:http://{endpoint}/bkt/p\n"
        f"    password: {password}\n    s3: {{access_key_id: {key}, secret_access_key: {{env: DRV_SECRET}}}}\n"
        "hosts:\n  far: {address: 127.0.0.1, port: 9}\n")
    (root / "policies" / "p.yaml").write_text(
        f"name: p\nrepository: offsite\n{host}sources:\n  - name: f\n    files: {{paths: [{files}]}}\n")
    return root / "drtool.yaml"


def secret_file(root: Path, mode: int = 0o600, text: str = CANARY) -> Path:
    path = root / "pw"
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRV_KEY", CANARY + "-key")
    monkeypatch.setenv("DRV_SECRET", CANARY + "-s3")


def test_all_secret_problems_at_once_with_positions_and_no_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("DRV_SECRET")
    pw = secret_file(tmp_path, 0o644)
    cfg = write(tmp_path, password=f"{{file: {pw}}}", key="{command: [sh, -c, 'echo $DRV_KEY; exit 3']}",
                files="/nonexistent/scans")
    assert main(["-c", str(cfg), "validate", "--offline"]) == 2
    captured = capsys.readouterr()
    err = captured.err
    assert CANARY not in err + captured.out
    assert f"drtool.yaml:5:5: at 'repositories.offsite.password': secret file {pw} is readable by others (mode 0644)" in err
    assert "drtool.yaml:6:10: at 'repositories.offsite.s3.access_key_id': secret command sh exited with code 3" in err
    assert "at 'repositories.offsite.s3.secret_access_key': secret env:DRV_SECRET is not set" in err
    assert "p.yaml:5:" in err and "/nonexistent/scans does not exist on this machine" in err
    assert "note: --offline" in err


@pytest.mark.parametrize("case, expected", [
    ("missing", "does not exist; create it with `install -m 600 /dev/null"),
    ("empty", "is empty"),
    ("directory", "is not a regular file"),
])
def test_secret_file_problems(tmp_path: Path, case: str, expected: str) -> None:
    path = tmp_path / "pw"
    if case == "empty":
        secret_file(tmp_path, text="\n")
    elif case == "directory":
        path.mkdir(mode=0o700)
    report = validate_setup(str(write(tmp_path, password=f"{{file: {path}}}")), offline=True)
    [problem] = report.problems
    assert problem.startswith(f"{tmp_path / 'drtool.yaml'}:5:5: at 'repositories.offsite.password': "
                              f"secret file {path} {expected}")


def test_secret_command_timeout_and_success(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(validate_action, "SECRET_COMMAND_TIMEOUT", 0.5)
    report = validate_setup(str(write(tmp_path, password="{command: [sleep, '5']}")), offline=True)
    assert any("secret command sleep took longer than 0.5s" in p for p in report.problems)
    report = validate_setup(str(write(tmp_path, password=f"{{command: [echo, {CANARY}]}}")), offline=True)
    assert report.valid, report.problems
    assert report.secrets_checked == 3


def test_a_good_setup_passes_and_says_how_many_secrets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write(tmp_path, password=f"{{file: {secret_file(tmp_path)}}}")
    assert main(["-c", str(cfg), "validate", "--offline"]) == 0
    assert "3 secret reference(s) resolved" in capsys.readouterr().out


def test_json_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write(tmp_path, password=f"{{file: {tmp_path / 'nope'}}}")
    assert main(["-c", str(cfg), "validate", "--offline", "--json"]) == 2
    report = json.loads(capsys.readouterr().out)
    assert report["valid"] is False and len(report["problems"]) == 1 and "does not exist" in report["problems"][0]


def test_remote_policy_paths_are_skipped_with_a_note(tmp_path: Path) -> None:
    report = validate_setup(str(write(tmp_path, password=f"{{file: {secret_file(tmp_path)}}}",
                                      files="/only/on/the/server", host="host: far\n")), offline=True)
    assert report.valid, report.problems
    assert any("paths are on host 'far' and were not checked" in n for n in report.notes)


def test_network_checks_reach_s3_and_hosts_unless_offline(tmp_path: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        cfg = str(write(tmp_path, password=f"{{file: {secret_file(tmp_path)}}}", endpoint=f"127.0.0.1:{port}"))
        report = validate_setup(cfg)
    # S3 answered; the SSH host on port 9 (discard, closed) did not.
    assert report.problems == [f"{tmp_path / 'drtool.yaml'}:8:9: at 'hosts.far.address': "
                               "SSH host 127.0.0.1:9 cannot be reached (Connection refused)"]
    assert validate_setup(cfg, offline=True).valid


def test_static_checks_only_the_files(tmp_path: Path) -> None:
    report = validate_setup(str(write(tmp_path, password=f"{{file: {tmp_path / 'nope'}}}",
                                      files="/nonexistent")), static=True)
    assert report.valid and report.secrets_checked == 0


def test_restore_target_sqlite_url_is_refused_and_nothing_created(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write(tmp_path, password=f"{{file: {secret_file(tmp_path)}}}")
    (tmp_path / "policies" / "q.yaml").write_text(
        "name: q\nrepository: offsite\nsources:\n  - name: db\n    sqlite: {path: /etc/hostname}\n"
        "  - name: f\n    files: {paths: [/etc/hostname]}\n")
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    for source in ("db", "f"):
        assert main(["-c", str(cfg), "restore", "q", "--source", source, "--target", "sqlite:/srv/q.db"]) == 2
        err = capsys.readouterr().err
        assert "is a " in err and "path, not a URL; got 'sqlite:/srv/q.db'" in err and "/srv/q.db" in err
    assert list(work.iterdir()) == [] and not Path("/srv/q.db").exists()


def test_bad_s3_url_is_a_file_problem_even_static(tmp_path: Path) -> None:
    cfg = write(tmp_path, password="{env: DRV_KEY}", endpoint="127.0.0.1:9/B_AD")
    cfg.write_text(cfg.read_text().replace("/B_AD/bkt/p", "/B_AD"))
    [problem] = validate_setup(str(cfg), static=True).problems
    assert "drtool.yaml:4:5: at 'repositories.offsite.url': invalid S3 repository URL" in problem
