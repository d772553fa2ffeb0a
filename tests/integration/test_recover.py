"""Recovery from nothing: real restic, rclone S3 and PostgreSQL, through the CLI.

One backup (PostgreSQL + files) and one kit are made per module. Failure paths
run first (wrong passphrase, truncated kit, tampered kit, revoked escrow key:
each a clear error, exit non-zero, nothing written); the fire scenario runs
last because it destroys the state dir, config, database cluster and files.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from drtool.execute import LocalRunner
from tests.support.postgres import pg_server
from tests.support.workspace import CANARY_PASSWORD, make_workspace

pytestmark = pytest.mark.integration

PASSPHRASE = "correct horse battery staple 42"


def psql(port: int, bin_dir: str, sql: str, db: str = "postgres", env: dict | None = None) -> str:
    argv = [f"{bin_dir}/psql", "-X", "-q", "-A", "-t", "-h", "127.0.0.1", "-p", str(port),
            "-U", "postgres", "-d", db, "-v", "ON_ERROR_STOP=1", "-c", sql]
    return LocalRunner().run(argv, timeout=120, env=env).text.strip()


CHECKSUM_SQL = ("select count(*), md5(string_agg(nik || nama || encode(foto, 'hex'), ',' order by nik)) "
                "from penduduk")


def tree_digest(root: Path) -> dict[str, str]:
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = "-> " + os.readlink(path)
        elif path.is_file():
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def run_cli(args: list[str], *, env: dict, cwd: Path, passphrase: str | None = PASSPHRASE,
            timeout: float = 300) -> subprocess.CompletedProcess:
    """drtool with the passphrase on an inherited pipe, never in argv or the environment."""
    fds: tuple[int, ...] = ()
    read_fd = None
    if passphrase is not None:
        read_fd, write_fd = os.pipe()
        os.write(write_fd, passphrase.encode() + b"\n")
        os.close(write_fd)
        fds = (read_fd,)
        args = [*args, "--passphrase-fd", str(read_fd)]
    try:
        return subprocess.run([sys.executable, "-m", "drtool", *args], check=False, capture_output=True, text=True,
                              env=env, cwd=cwd, timeout=timeout, pass_fds=fds)
    finally:
        if read_fd is not None:
            os.close(read_fd)


def fresh_env(home: Path, *, aws: tuple[str, str] | None = None, tmp: Path | None = None) -> dict[str, str]:
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "LANG": "C.UTF-8",
           "TMPDIR": str(tmp or "/tmp"), "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    if aws:
        env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"] = aws
    return env


@pytest.fixture()
def private_tmp():
    """TMPDIR for one drtool process: scratch servers land here, so "nothing written" is checkable
    even while other test runs share /tmp. 0711 so the postgres OS user can enter it."""
    path = Path(tempfile.mkdtemp(prefix="drt-recover-", dir="/tmp"))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture()
def srv_dir():
    """A persistent place for recovered servers, outside any temp directory (as an admin would
    choose), that the postgres OS user can enter."""
    base = Path("/var/lib/drtool-tests")
    base.mkdir(mode=0o711, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="recovered-", dir=base))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def prod_pg():
    yield from pg_server()


@pytest.fixture(scope="module")
def site(tmp_path_factory, s3_server, prod_pg):
    """A backed-up server: PostgreSQL database `siak` and a files tree, one backup, one kit."""
    root = tmp_path_factory.mktemp("site")
    bucket = "recover-" + uuid.uuid4().hex[:10]
    s3_server.make_bucket(bucket)
    pg = prod_pg
    psql(pg.port, pg.bin_dir, "create database siak")
    psql(pg.port, pg.bin_dir,
         "create table penduduk (nik text primary key, nama text, foto bytea);"
         "insert into penduduk select 'NIK' || g, 'Warga ' || g || ' Ṡ', decode(md5(g::text), 'hex') "
         "from generate_series(1, 3000) g;"
         "create table kartu (id int primary key, nik text references penduduk(nik));"
         "insert into kartu select g, 'NIK' || g from generate_series(1, 500) g;", db="siak")
    docs = root / "srv" / "scans"
    (docs / "2021" / "nov").mkdir(parents=True)
    for i in range(12):
        (docs / "2021" / "nov" / f"ktp-{i}.bin").write_bytes(os.urandom(3000 + i * 517))
    (docs / "readme.txt").write_text("scans of family cards\n")
    os.symlink("2021/nov/ktp-0.bin", docs / "latest")
    ws = make_workspace(root / "etc-drtool", s3_server, bucket)
    ws.policy("siak", [
        {"name": "siak-db", "postgres": {"database": "siak", "port": pg.port, "bin_dir": pg.bin_dir}},
        {"name": "scans", "files": {"paths": [str(docs)]}},
    ], targets={"rpo": "24h", "rto": "1h"})
    (ws.root / "policies" / "notes.txt").write_text("not YAML: must not go into the bundle\n")
    run = json.loads(ws.drtool("backup", "siak", "--json", check=True).stdout.strip().splitlines()[-1])
    assert run["status"] == "success", run
    assert run["details"]["config_bundle"]["snapshot"]
    assert "policies/notes.txt" in run["details"]["config_bundle"]["skipped"]
    kit = root / "siak.drkit"
    made = run_cli(["-c", str(ws.config), "kit", "create", "siak", "--out", str(kit), "--with-credentials"],
                   env=ws.env, cwd=root)
    assert made.returncode == 0, made.stderr
    return {"ws": ws, "pg": pg, "docs": docs, "kit": kit, "root": root, "bucket": bucket, "s3": s3_server,
            "checksum": psql(pg.port, pg.bin_dir, CHECKSUM_SQL, db="siak"),
            "kartu": psql(pg.port, pg.bin_dir, "select count(*) from kartu", db="siak"),
            "tree": tree_digest(docs)}


def test_kit_file_is_private_and_holds_no_plaintext_secret(site):
    kit = site["kit"]
    assert (kit.stat().st_mode & 0o777) == 0o600
    data = kit.read_bytes()
    for secret in (PASSPHRASE, CANARY_PASSWORD, site["s3"].secret_key, "s3:http"):
        assert secret.encode() not in data
    keys = json.loads(site["ws"].restic("key", "list", "--json").stdout)
    assert len(keys) == 3          # the daily key, this machine's key (drtool@host) and the escrow key
    assert sum(k["userName"] == "drtool" and k["hostName"] == "drtool-test" for k in keys) == 1


def test_kit_verify_lists_what_can_be_recovered(site, tmp_path):
    proc = run_cli(["kit", "verify", str(site["kit"]), "--json"], env=fresh_env(tmp_path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    repo = report["repositories"][0]
    assert repo["opens"] and repo["config_bundle"]["signature"] == "valid"
    assert repo["policies"]["siak"]["siak-db"]["sets"] == 1
    assert repo["policies"]["siak"]["scans"]["sets"] == 1
    assert CANARY_PASSWORD not in proc.stdout + proc.stderr


@pytest.mark.parametrize("damage", ["wrong-passphrase", "truncated", "tampered", "armored-typo"])
def test_bad_kit_is_a_clear_error_and_writes_nothing(site, tmp_path, damage, private_tmp):
    kit = tmp_path / "kit"
    data = site["kit"].read_bytes()
    passphrase = PASSPHRASE
    expected = {"wrong-passphrase": "wrong passphrase", "truncated": "truncated",
                "tampered": "wrong passphrase, or the kit was altered", "armored-typo": "line"}[damage]
    if damage == "wrong-passphrase":
        passphrase = "correct horse battery staple 43"
    elif damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "tampered":
        data = data[:-40] + bytes([data[-40] ^ 1]) + data[-39:]
    else:
        from drtool.crypto.kit import armor
        lines = armor(data).splitlines()
        lines[6] = lines[6][:10] + ("A" if lines[6][10] != "A" else "B") + lines[6][11:]
        data = "\n".join(lines).encode()
    kit.write_bytes(data)
    home, target = tmp_path / "home", tmp_path / "restore"
    home.mkdir()
    proc = run_cli(["recover", "--kit", str(kit), "--target-root", str(target)],
                   env=fresh_env(home, tmp=private_tmp), cwd=home, passphrase=passphrase)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert expected in proc.stderr and "Traceback" not in proc.stderr
    assert not target.exists() and list(home.iterdir()) == [] and list(private_tmp.iterdir()) == []


def test_revoked_escrow_key_fails_verify_and_recover(site, tmp_path, private_tmp):
    ws = site["ws"]
    kit = tmp_path / "second.drkit.txt"
    made = run_cli(["-c", str(ws.config), "kit", "create", "siak", "--out", str(kit), "--armor"],
                   env=ws.env, cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    assert kit.read_text().startswith("# drtool recovery kit (age)") and "BEGIN AGE ENCRYPTED FILE" in kit.read_text()
    aws = (site["s3"].access_key, site["s3"].secret_key)     # this kit holds no S3 credentials
    home = tmp_path / "home"
    home.mkdir()
    no_creds = run_cli(["kit", "verify", str(kit)], env=fresh_env(home), cwd=home)
    assert no_creds.returncode == 1 and "no S3 credentials" in no_creds.stderr

    revoked = run_cli(["-c", str(ws.config), "kit", "revoke", str(kit)], env=ws.env, cwd=tmp_path, passphrase=None)
    assert revoked.returncode == 0 and "revoked escrow key" in revoked.stdout, revoked.stderr
    target = tmp_path / "restore"
    proc = run_cli(["recover", "--kit", str(kit), "--target-root", str(target)],
                   env=fresh_env(home, aws=aws, tmp=private_tmp), cwd=home)
    assert proc.returncode == 1 and "does not open repository offsite" in proc.stderr
    assert "may have been revoked" in proc.stderr and "Traceback" not in proc.stderr
    assert not target.exists() and list(private_tmp.iterdir()) == []
    # The first kit's escrow key and the daily password are untouched (the fire test uses them).
    keys = json.loads(ws.restic("key", "list", "--json").stdout)
    assert len([k for k in keys if k["userName"] != "drtool"]) == 2      # besides machine keys (drtool@host)


def test_recover_refuses_non_empty_target_and_writes_nothing(site, tmp_path, private_tmp):
    target = tmp_path / "restore"
    busy = target / str(site["docs"]).lstrip("/")
    busy.mkdir(parents=True)
    (busy / "someone-elses.txt").write_text("keep me")
    proc = run_cli(["recover", "--kit", str(site["kit"]), "--target-root", str(target)],
                   env=fresh_env(tmp_path, tmp=private_tmp), cwd=tmp_path)
    assert proc.returncode == 2 and "not empty; nothing was written" in proc.stderr
    assert [p.name for p in busy.iterdir()] == ["someone-elses.txt"] and list(private_tmp.iterdir()) == []


def test_recover_refuses_a_data_dir_inside_tmpdir(site, tmp_path, private_tmp):
    inside = private_tmp / "db"
    target = tmp_path / "restore"
    proc = run_cli(["recover", "--kit", str(site["kit"]), "--target-root", str(target), "--data-dir", str(inside)],
                   env=fresh_env(tmp_path, tmp=private_tmp), cwd=tmp_path)
    assert proc.returncode == 2 and "tmp cleaner" in proc.stderr and "Traceback" not in proc.stderr
    assert not target.exists() and list(private_tmp.iterdir()) == []


def pg_ctl(argv: list[str]) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=120)


def test_recover_dry_run_says_what_and_starts_nothing(site, tmp_path, private_tmp):
    from tests.support.drtool_env import servers_under

    target = tmp_path / "restore"
    proc = run_cli(["recover", "--kit", str(site["kit"]), "--target-root", str(target), "--dry-run", "--json"],
                   env=fresh_env(tmp_path, tmp=private_tmp), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["dry_run"] is True and report["policy"] == "siak" and report["ok"] is True
    db, files = (next(s for s in report["sources"] if s["source"] == name) for name in ("siak-db", "scans"))
    assert db["target"].startswith("a new postgres server") and db["bytes"] == sum(db["streams"].values()) > 0
    assert any(c.startswith("content hashes of 2 tables") for c in db["checks"])
    assert files["targets"] == {str(target / str(site["docs"]).lstrip("/")): "does not exist: would be created"}
    assert files["entries"] >= 16 and files["bytes"] >= sum(3000 + i * 517 for i in range(12))
    assert not target.exists() and list(private_tmp.iterdir()) == [] and not servers_under(private_tmp)


def test_fire_scenario_recover_from_nothing(site, tmp_path, srv_dir, private_tmp):
    ws, pg = site["ws"], site["pg"]
    # The fire: state dir, configuration, password file, database cluster and files are gone.
    shutil.rmtree(ws.root)
    pg.stop()
    shutil.rmtree(site["docs"])
    assert not Path(ws.root).exists() and not site["docs"].exists()

    home = tmp_path / "new-machine-home"
    home.mkdir()
    kit = home / "siak.drkit"
    shutil.copy(site["kit"], kit)
    target = tmp_path / "restore-root"
    proc = run_cli(["recover", "--kit", str(kit), "--target-root", str(target), "--data-dir", str(srv_dir),
                    "--json"], env=fresh_env(home, tmp=private_tmp), cwd=home)
    report = json.loads(proc.stdout) if proc.stdout.strip() else {}
    server = next((s.get("server") for s in report.get("sources", []) if s.get("server")), None)
    try:
        assert proc.returncode == 0, proc.stderr
        assert report["ok"] and report["policy"] == "siak" and report["rto_met"] is True
        assert report["credentials"] == {"offsite": "the recovery kit"}
        listed = report["recoverable"]["siak"]["sources"]
        assert len(listed["siak-db"]["sets"]) == 1 and len(listed["scans"]["sets"]) == 1
        assert report["recovery_time_s"] > 0 and {s["step"] for s in report["steps"]} >= {
            "open kit", "open repositories", "read configuration bundle", "restore siak-db", "restore scans"}
        db = next(s for s in report["sources"] if s["source"] == "siak-db")
        assert db["verified"] is True and db["rows"] == 3500
        # The recovered machine keeps a restic key of its own (0600 in its state dir): this
        # recovery's later restic processes and its next backups skip the escrow key's derivation.
        assert "make this machine's key" in {s["step"] for s in report["steps"]}
        (key_file,) = (Path(ws.root) / "state" / "repos").glob("*.machinekey")
        assert (key_file.stat().st_mode & 0o777) == 0o600
        # It belongs to the escrow password it was made with; the server's backups, which use the
        # repository password, make their own (a separate entry) instead of taking this one.
        escrow = report["kit"]["repositories"][0]["escrow_key_id"]
        assert list(json.loads(key_file.read_text())) == [f"escrow:{escrow}"]
        # A production server: where asked, owned by postgres, durable, nothing in TMPDIR.
        data_dir = Path(server["data_dir"])
        assert data_dir == srv_dir / "siak" / "siak-db" / "server" / "data"
        assert data_dir.stat().st_uid == pwd.getpwnam("postgres").pw_uid
        assert list(private_tmp.iterdir()) == []
        env = {"PGPASSFILE": server["passfile"]}
        assert (Path(server["passfile"]).stat().st_mode & 0o777) == 0o600
        assert (Path(server["password_file"]).stat().st_mode & 0o777) == 0o600
        for setting in ("fsync", "full_page_writes", "synchronous_commit", "autovacuum"):
            assert psql(server["port"], server["bin_dir"], f"SHOW {setting}", env=env) == "on", setting
        assert psql(server["port"], server["bin_dir"], CHECKSUM_SQL, db="siak", env=env) == site["checksum"]
        # A restart with the printed commands keeps the data (and the durable settings).
        pg_ctl(server["service"]["stop"])
        pg_ctl(server["service"]["start"])
        assert psql(server["port"], server["bin_dir"], "select count(*) from kartu", db="siak", env=env) == site["kartu"]
        assert psql(server["port"], server["bin_dir"], "SHOW fsync", env=env) == "on"
        unit = Path(server["service"]["unit_file"]).read_text()
        assert f"ExecStart={server['bin_dir']}/postgres -D {data_dir}" in unit and "User=postgres" in unit
        if shutil.which("systemd-analyze"):
            check = subprocess.run(["systemd-analyze", "verify", "--man=no", server["service"]["unit_file"]],
                                   capture_output=True, text=True, timeout=60, check=False)
            assert check.returncode == 0, check.stderr
        restored = target / str(site["docs"]).lstrip("/")
        assert tree_digest(restored) == site["tree"]
        # Nothing was put in the new HOME but the kit (no restic cache, no state dir).
        assert sorted(p.name for p in home.iterdir()) == ["siak.drkit"]
        assert PASSPHRASE not in proc.stdout + proc.stderr
    finally:
        if server:
            subprocess.run(server["service"]["stop"], capture_output=True, timeout=120, check=False)
