"""Backing up another server over SSH through the CLI: real sshd, PostgreSQL, restic, S3.

The "remote host" is this machine seen through a real OpenSSH sshd that runs in
its own mount namespace: its `srv/` directory is a tmpfs only sshd's sessions
see, so the file tree can only reach the backup through SSH. The same sshd
listens on a second port whose sessions have no restic on their PATH (host
`db2`), which forces the tar-stream mode; host `db1` has restic.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from drtool.config.models import FilesSource, Host
from drtool.execute import LocalRunner
from drtool.remote.ssh import SshRunner
from drtool.sources.remote_files import (
    parse_restic_version,
    pick_mode,
    remote_backup_argv,
    restore_tar,
    tar_argv,
    verify_tar_tree,
)
from tests.support.postgres import pg_server
from tests.support.sshd import SshServer, start_sshd
from tests.support.workspace import CANARY_PASSWORD, Workspace, make_workspace

pytestmark = pytest.mark.integration

# Builds the remote tree (deterministic content) and lists a tree as {path: [kind, mode, size, sha256|target]}.
MAKE_TREE = r"""
import os, random, sys
base = sys.argv[1]
rnd = random.Random(7)
for d in range(6):
    sub = os.path.join(base, "docs", f"kk-{d:02d}", "scans")
    os.makedirs(sub, exist_ok=True)
    for f in range(8):
        with open(os.path.join(sub, f"akta {d}-{f}.pdf"), "wb") as fh:
            fh.write(rnd.randbytes(rnd.randint(0, 40000)))
os.makedirs(os.path.join(base, "docs", "empty"), exist_ok=True)
with open(os.path.join(base, "docs", "notes.txt"), "w") as fh:
    fh.write("Ṡurat keterangan\n" * 50)
os.chmod(os.path.join(base, "docs", "notes.txt"), 0o640)
with open(os.path.join(base, "docs", "scratch.tmp"), "w") as fh:
    fh.write("excluded\n")
os.symlink("kk-00/scans/akta 0-0.pdf", os.path.join(base, "docs", "latest.pdf"))
"""
LIST_TREE = r"""
import hashlib, json, os, stat, sys
top = sys.argv[1]
out = {}
for root, dirs, files in os.walk(top):
    for name in dirs + files:
        p = os.path.join(root, name)
        st = os.lstat(p)
        rel = os.path.relpath(p, top)
        if stat.S_ISLNK(st.st_mode):
            out[rel] = ["link", 0, 0, os.readlink(p)]
        elif stat.S_ISDIR(st.st_mode):
            out[rel] = ["dir", stat.S_IMODE(st.st_mode), 0, ""]
        else:
            out[rel] = ["file", stat.S_IMODE(st.st_mode), st.st_size, hashlib.sha256(open(p, "rb").read()).hexdigest()]
print(json.dumps(out, sort_keys=True))
"""
CHECKSUM_SQL = ("select count(*), md5(string_agg(nik || nama || encode(foto, 'hex'), ',' order by nik)) "
                "from penduduk")


# ------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SshServer, Path]]:
    if not Path("/usr/sbin/sshd").exists() and not os.environ.get("CI"):
        pytest.skip("openssh-server is not installed")
    root = tmp_path_factory.mktemp("remote")
    srv = root / "srv"          # empty here; a tmpfs inside sshd's mount namespace
    server = start_sshd(root / "sshd", private_dirs=(srv,), hide_programs=("restic",))
    try:
        with _runner(server, server.port) as r:
            r.run(["python3", "-c", MAKE_TREE, str(srv)], timeout=60)
        yield server, srv
    finally:
        server.stop()


def _runner(server: SshServer, port: int) -> SshRunner:
    known = server.root / f"known_{port}"
    kind, blob = server.host_key.with_suffix(".pub").read_text().split()[:2]
    known.write_text(f"[127.0.0.1]:{port} {kind} {blob}\n")
    host = Host(address="127.0.0.1", port=port, key_file=str(server.client_key), connect_timeout=5)
    return SshRunner(host, known_hosts=known, host_name="test", retries=1)


def remote_tree(server: SshServer, top: Path) -> dict:
    with _runner(server, server.port) as r:
        return json.loads(r.run(["python3", "-c", LIST_TREE, str(top)], timeout=60).text)


def local_tree(top: Path) -> dict:
    return json.loads(LocalRunner().run(["python3", "-c", LIST_TREE, str(top)], timeout=60).text)


@pytest.fixture(scope="module")
def pg():
    yield from pg_server()


def psql(pg, sql: str, db: str = "postgres") -> str:
    argv = [f"{pg.bin_dir}/psql", "-X", "-q", "-A", "-t", "-h", "127.0.0.1", "-p", str(pg.port),
            "-U", "postgres", "-d", db, "-v", "ON_ERROR_STOP=1", "-c", sql]
    return LocalRunner().run(argv, timeout=120).text.strip()


@pytest.fixture(scope="module")
def siak(pg) -> str:
    psql(pg, "create database siak")
    psql(pg, "create table penduduk (nik text primary key, nama text, foto bytea);"
             "insert into penduduk select 'NIK' || g, 'Warga ' || g || ' Ṡ', decode(md5(g::text), 'hex') "
             "from generate_series(1, 3000) g;"
             "create table keluarga (kk text, nik text);"
             "insert into keluarga select 'KK' || (g / 4), 'NIK' || g from generate_series(1, 3000) g;", db="siak")
    return "siak"


def workspace(tmp_path: Path, s3_server, bucket: str, server: SshServer, srv: Path, pg,
              *, database: str = "siak", files: bool = True) -> Workspace:
    ws = make_workspace(tmp_path / "ws", s3_server, bucket)
    config = yaml.safe_load(ws.config.read_text())
    common = {"address": "127.0.0.1", "key_file": str(server.client_key), "connect_timeout": "5s"}
    config["hosts"] = {"db1": {**common, "port": server.port}, "db2": {**common, "port": server.alt_port}}
    ws.config.write_text(yaml.safe_dump(config, sort_keys=False))
    sources = [{"name": "siak", "postgres": {"database": database, "host": "127.0.0.1", "port": pg.port,
                                             "user": "postgres", "bin_dir": pg.bin_dir}}]
    if files:
        sources.append({"name": "docs", "files": {"paths": [str(srv / "docs")], "exclude": ["*.tmp"]}})
    for policy, host in (("records", "db1"), ("archive", "db2")):
        ws.policy(policy, sources, host=host)
    return ws


def last_json(proc) -> dict:
    return json.loads(proc.stdout.strip().splitlines()[-1])


def tagged(ws: Workspace, *tags: str) -> list[dict]:
    out = ws.restic("snapshots", "--json", "--tag", ",".join(tags))
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout) or []


class ArgvWatch:
    """Scans every process's argv while a backup runs: no secret may appear in any of them."""

    def __init__(self, *secrets: str) -> None:
        self.secrets = [s.encode() for s in secrets]
        self.leaks: list[str] = []
        self.scans = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._scan, daemon=True)

    def __enter__(self) -> ArgvWatch:  # noqa: PYI034
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _scan(self) -> None:
        while not self._stop.is_set():
            for entry in os.listdir("/proc"):
                if not entry.isdigit():
                    continue
                try:
                    cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
                except OSError:
                    continue
                if cmdline.split(b"\0")[0].endswith(b"/rclone"):
                    continue   # S3 servers of the tests take their key in argv (fixtures, not drtool)
                self.leaks += [f"pid {entry}" for s in self.secrets if s in cmdline]
            self.scans += 1
            time.sleep(0.01)


# ------------------------------------------------------------------ pure logic

def test_pick_mode_needs_restic_0_14_and_a_network_repository() -> None:
    s3 = "s3:http://127.0.0.1:9000/bucket/repo"
    assert pick_mode(s3, (0, 14, 0))[0] == "restic"
    assert pick_mode(s3, (0, 16, 4))[0] == "restic"
    assert pick_mode(s3, None) == ("tar", "restic is not installed on the host")
    assert pick_mode(s3, (0, 13, 1))[0] == "tar"
    mode, why = pick_mode("/var/backups/repo", (0, 14, 0))
    assert mode == "tar" and "path on this machine" in why
    assert pick_mode(s3, (0, 16, 4), "tar") == ("tar", "files_mode: tar for this host")
    assert pick_mode(s3, (0, 14, 0), "restic")[0] == "restic"
    from drtool.errors import RemoteError, UsageError
    with pytest.raises(RemoteError, match="files_mode: restic was asked for, but restic is not installed"):
        pick_mode(s3, None, "restic")
    with pytest.raises(UsageError):
        pick_mode(s3, None, "rsync")
    assert parse_restic_version("restic 0.14.0 compiled with go1.19.8 on linux/amd64") == (0, 14, 0)
    assert parse_restic_version("bash: restic: command not found") is None


def test_tar_argv_relative_members_and_translated_excludes() -> None:
    spec = FilesSource(paths=["/srv/docs/", "/etc/app conf"], exclude=["*.tmp", "/srv/docs/cache"],
                       one_file_system=True)
    assert tar_argv(spec) == ["tar", "-C", "/", "-cf", "-", "--one-file-system", "--exclude=*.tmp",
                              "--anchored", "--exclude=srv/docs/cache", "--no-anchored",
                              "--", "srv/docs", "etc/app conf"]
    assert tar_argv(FilesSource(paths=["/"]))[-2:] == ["--", "."]


def test_remote_backup_argv_has_no_secret_and_names_the_parent() -> None:
    spec = FilesSource(paths=["/srv/docs"], exclude=["*.tmp"])
    argv = remote_backup_argv(spec, cache_dir="/tmp/c", tags=["drtool", "policy=p"], host="h", parent="abc")
    assert argv == ["restic", "--cache-dir", "/tmp/c", "backup", "--json", "--host", "h", "--tag", "drtool",
                    "--tag", "policy=p", "--exclude", "*.tmp", "--parent", "abc", "--", "/srv/docs"]


# ------------------------------------------------------------------ through the CLI

def test_remote_backup_with_restic_on_the_host_then_restore(tmp_path, s3_server, bucket, remote, pg, siak) -> None:
    server, srv = remote
    assert not any(srv.iterdir()), "the remote tree must not be visible to the test process"
    ws = workspace(tmp_path, s3_server, bucket, server, srv, pg)
    known = ws.root / "state" / "known_hosts"
    assert ws.drtool("hosts", "trust", "db1", "--yes").returncode == 0
    assert known.exists()

    with ArgvWatch(CANARY_PASSWORD, s3_server.secret_key) as watch:
        proc = ws.drtool("backup", "records", "--json")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert watch.scans > 5 and watch.leaks == []
    run = last_json(proc)
    docs = run["details"]["sources"]["docs"]
    assert docs["mode"] == "restic" and docs["status"] == "success" and docs["parent"] is None
    assert docs["files"] == 49 and "cache_dir_left" not in docs        # 48 scans + notes.txt; *.tmp excluded
    [snap] = tagged(ws, "policy=records", "source=docs", f"run={run['id']}")
    assert not any(t.startswith("stream=") for t in snap["tags"]) and snap["hostname"] == "drtool-test"
    assert snap["short_id"] in run["snapshots"]
    assert not list(Path("/tmp").glob("drtool-restic-cache.*")), "the remote restic cache was left behind"
    assert CANARY_PASSWORD not in server.log.read_text()

    # Files: the CLI restores the tree; it matches the remote one byte for byte (minus the excluded file).
    target = tmp_path / "restored-docs"
    ws.drtool("restore", "records", "--source", "docs", "--target", str(target), check=True)
    expected = remote_tree(server, srv / "docs")
    assert expected.pop("scratch.tmp")[0] == "file"
    assert local_tree(target / str(srv / "docs").lstrip("/")) == expected

    # PostgreSQL dumped on the host: verified restore, identical rows and checksums.
    url = f"postgresql://postgres@127.0.0.1:{pg.port}/siak_from_db1"
    out = json.loads(ws.drtool("restore", "records", "--source", "siak", "--target", url, "--json",
                               check=True).stdout)
    assert out["verified"] is True and out["problems"] == []
    assert psql(pg, CHECKSUM_SQL, db="siak_from_db1") == psql(pg, CHECKSUM_SQL, db="siak")
    assert psql(pg, "select count(*) from keluarga", db="siak_from_db1") == "3000"

    # A second, unchanged run: restic on the host skips every file against the named parent.
    again = last_json(ws.drtool("backup", "records", "--json", check=True))["details"]["sources"]["docs"]
    assert again["parent"] == snap["id"]
    assert again["bytes_added"] < 20_000, again


def test_remote_backup_without_restic_streams_tar(tmp_path, s3_server, bucket, remote, pg, siak,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    server, srv = remote
    ws = workspace(tmp_path, s3_server, bucket, server, srv, pg)
    assert ws.drtool("hosts", "trust", "db2", "--yes").returncode == 0
    with _runner(server, server.alt_port) as r:     # the premise: db2 really has no restic
        assert r.which("restic") is None and r.which("tar")

    run = last_json(ws.drtool("backup", "archive", "--json", check=True))
    docs = run["details"]["sources"]["docs"]
    assert docs["mode"] == "tar" and "not installed" in docs["mode_reason"] and docs["stream"] == "docs.tar"
    [snap] = tagged(ws, "policy=archive", "source=docs", f"run={run['id']}", "stream=docs.tar")
    assert snap["paths"] == ["/docs.tar"]

    from drtool.actions.common import open_repo
    from drtool.config import load_settings

    for name in ("DRT_S3_KEY", "DRT_S3_SECRET"):
        monkeypatch.setenv(name, ws.env[name])
    handle = open_repo(load_settings(ws.config), "offsite")
    target = tmp_path / "restored-tar"
    restore_tar(handle.restic, snap["id"], "docs.tar", target)
    diff = verify_tar_tree(handle.restic, snap["id"], "docs.tar", target)
    assert diff.problems == [] and diff.checked == 64 and diff.bytes > 500_000
    expected = remote_tree(server, srv / "docs")
    del expected["scratch.tmp"]
    assert local_tree(target / str(srv / "docs").lstrip("/")) == expected

    # The verifier notices a damaged restore, and restore_tar refuses a non-empty target.
    victim = target / str(srv / "docs").lstrip("/") / "notes.txt"
    victim.write_text("Ṡurat keterangan\n" * 49 + "Ṫurat keterangan\n")   # same size, one letter changed
    assert verify_tar_tree(handle.restic, snap["id"], "docs.tar", target).problems \
        == [f"/{str(srv / 'docs').lstrip('/')}/notes.txt: content differs from the archive"]
    from drtool.errors import RestoreRefused
    with pytest.raises(RestoreRefused):
        restore_tar(handle.restic, snap["id"], "docs.tar", target)

    # `drtool restore` picks the tar set as the files source's latest and unpacks it.
    via_cli = tmp_path / "restored-tar-cli"
    ws.drtool("restore", "archive", "--source", "docs", "--target", str(via_cli), check=True)
    assert local_tree(via_cli / str(srv / "docs").lstrip("/")) == expected

    # Unchanged tree, byte-identical tar: nothing but metadata is added.
    again = last_json(ws.drtool("backup", "archive", "--json", check=True))["details"]["sources"]["docs"]
    assert again["bytes_added"] < 20_000, again

    # The PostgreSQL source works on a host without restic just the same.
    url = f"postgresql://postgres@127.0.0.1:{pg.port}/siak_from_db2"
    out = json.loads(ws.drtool("restore", "archive", "--source", "siak", "--target", url, "--json",
                               check=True).stdout)
    assert out["verified"] is True
    assert psql(pg, CHECKSUM_SQL, db="siak_from_db2") == psql(pg, CHECKSUM_SQL, db="siak")


def test_tar_failure_on_the_host_leaves_no_snapshot(tmp_path, s3_server, bucket, remote, pg, siak) -> None:
    server, srv = remote
    ws = make_workspace(tmp_path / "ws", s3_server, bucket)
    config = yaml.safe_load(ws.config.read_text())
    config["hosts"] = {"db2": {"address": "127.0.0.1", "port": server.alt_port, "key_file": str(server.client_key)}}
    ws.config.write_text(yaml.safe_dump(config))
    ws.policy("archive", [{"name": "docs", "files": {"paths": [str(srv / "docs"), str(srv / "no-such-dir")]}}],
              host="db2")
    ws.drtool("hosts", "trust", "db2", "--yes", check=True)
    proc = ws.drtool("backup", "archive", "--json")
    assert proc.returncode == 1
    run = last_json(proc)
    assert run["status"] == "failed"
    assert "tar of docs on ssh:db2 exited with code 2" in run["error"]
    detail = run["details"]["sources"]["docs"]["error"]
    assert "no-such-dir" in detail and "Cannot stat" in detail and "no snapshot was kept" in detail
    assert tagged(ws, "policy=archive", "source=docs") == []


def test_connection_killed_mid_dump_fails_the_run_and_keeps_no_snapshot(tmp_path, s3_server, bucket, remote,
                                                                         pg) -> None:
    server, srv = remote
    psql(pg, "create database bulk")
    psql(pg, "create table penduduk (nik text primary key, nama text, foto bytea);"
             "insert into penduduk select 'NIK' || g, repeat(md5(g::text), 8), decode(md5(g::text), 'hex') "
             "from generate_series(1, 100000) g;", db="bulk")
    ws = workspace(tmp_path, s3_server, bucket, server, srv, pg, database="bulk", files=False)
    ws.drtool("hosts", "trust", "db1", "--yes", check=True)

    stopped: list[int] = []
    done = threading.Event()

    def stall_then_drop() -> None:
        # The remote pg_dump is frozen once it has written 256 KiB, then every SSH connection is killed.
        while not done.is_set() and not stopped:
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                    io = Path(f"/proc/{pid}/io").read_text()
                except OSError:
                    continue
                if argv[0].endswith(b"pg_dump") and b"dbname='bulk'" in b" ".join(argv):
                    wchar = int(io.split("wchar:")[1].split()[0])
                    if wchar > 256 * 1024:
                        os.kill(int(pid), signal.SIGSTOP)
                        stopped.append(int(pid))
                        server.drop_connections()
                        return
            time.sleep(0.002)

    watcher = threading.Thread(target=stall_then_drop)
    watcher.start()
    try:
        proc = ws.drtool("backup", "records", "--json", timeout=180)
    finally:
        done.set()
        watcher.join(10)
        for pid in stopped:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert stopped, "pg_dump finished before the connection could be cut"
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    run = last_json(proc)
    assert run["status"] == "failed"
    assert "exited with code 255" in run["error"]
    detail = run["details"]["sources"]["siak"]["error"]
    assert "SSH connection" in detail and "was lost" in detail, detail
    assert tagged(ws, "policy=records", "source=siak") == []
    # The failed run is on record, here and offsite.
    runs = json.loads(ws.drtool("runs", "--policy", "records", "--json", check=True).stdout)
    assert [(r["id"], r["status"]) for r in runs] == [(run["id"], "failed")]
    offsite = list((s3_server.root / bucket).rglob(f"runs/{run['id']}.json"))
    assert len(offsite) == 1 and json.loads(offsite[0].read_text())["status"] == "failed"


def test_unknown_host_key_is_refused_before_anything_runs_there(tmp_path, s3_server, bucket, remote, pg) -> None:
    server, srv = remote
    ws = workspace(tmp_path, s3_server, bucket, server, srv, pg)
    known = ws.root / "state" / "known_hosts"
    proc = ws.drtool("backup", "records", "--json")
    assert proc.returncode == 1
    fp = LocalRunner().run(["ssh-keygen", "-lf", str(server.host_key.with_suffix(".pub"))], timeout=10).text.split()[1]
    run = last_json(proc)
    assert run["status"] == "failed" and "not known" in run["error"] and fp in run["error"]
    # Refused once, before any source ran or the repository was touched.
    assert "sources" not in run["details"] and "preflight" not in run["details"]
    assert "host key of host db1" in run["error"] and "drtool hosts trust db1" in run["error"]
    assert not known.exists(), "an unknown key must never be recorded by a backup"
    # The repository was not even initialised: nothing was written anywhere.
    assert "Is there a repository" in ws.restic("snapshots").stderr
    assert not list(Path("/tmp").glob("drtool-restic-cache.*"))
