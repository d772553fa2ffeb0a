"""The fault-injection suite's shared parts: a drtool site on real services, and what "clean" means.

Every fault test breaks one thing on purpose (a dump killed at 50 %, the S3 server gone, a
catalog locked...), then checks that the failure was *clean*:

1. one clear error (the cause named on an `error:` line), no Python traceback or Go stack
   dump on stderr, a non-zero exit code;
2. no usable partial snapshot: bare restic (not drtool) finds nothing tagged with the
   failed run, `restic dump ... latest` of every stream still returns the last good bytes,
   and the set the README's runbook pins is the last good run;
3. the run recorded as failed (or interrupted) in the local catalog AND in the signed
   record offsite, and an alert delivered;
4. nothing leaked: the canary secrets (a unique repository password, S3 secret key and
   a secret read from the environment) are in no output, state file, log or bucket object;
5. no process left behind, no stale restic lock, and the next run succeeding once the
   cause is gone.

A `Site` is a drtool configuration in a temp dir on its own bucket of a session-wide
`rclone serve s3` (whose secret key is a canary), reached through its own FaultProxy
(tests/support/faultproxy.py) so a test can make S3 misbehave; bare restic goes to the
server directly. PostgreSQL is one session-wide scratch server; each site gets its own
database copied from a template holding 16 MB of incompressible rows.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.faultproxy import FaultProxy
from tests.support.hung import hung_process_report
from tests.support.receivers import Receiver, http_receiver

pytestmark = pytest.mark.integration

CANARY_PASSWORD = f"canary-repo-pw-{uuid.uuid4().hex[:12]}"
CANARY_S3_SECRET = f"canary-s3-secret-{uuid.uuid4().hex[:12]}"
CANARY_ENV_SECRET = f"canary-env-secret-{uuid.uuid4().hex[:12]}"     # a {env: NAME} secret (webhook header)
CANARIES = (CANARY_PASSWORD, CANARY_S3_SECRET, CANARY_ENV_SECRET)
HOST = "fault-host"
PG_TEMPLATE = "faults_template"
PG_ROWS = 8000                       # x 1 KiB of random bytes -> a 16 MB dump (bytea as hex)
TRACE_MARKERS = ("Traceback (most recent call last)", "goroutine ", "panic:", "\n  File \"")
_ENV_DROP = ("AWS_", "RESTIC_", "DRTOOL_", "PGPASSWORD", "MYSQL_PWD")


# ------------------------------------------------------------------ session services

@pytest.fixture(scope="session")
def fault_s3(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201 - LocalS3
    if shutil.which("rclone") is None or shutil.which("restic") is None:
        pytest.skip("rclone and restic are needed")
    from drtool.storage.local_s3 import start_local_s3

    server = start_local_s3(tmp_path_factory.mktemp("fault-s3") / "data", secret_key=CANARY_S3_SECRET,
                            access_key="faults-" + uuid.uuid4().hex[:6])
    yield server
    server.stop()


@pytest.fixture(scope="session")
def pg_server():  # noqa: ANN201 - ScratchPostgres with the template database
    from tests.support.postgres import pg_server as start

    for server in start():
        server.sql(f"create database {PG_TEMPLATE}")
        server.sql("create table penduduk (nik text primary key, nama text);"
                   "insert into penduduk select 'NIK' || g, 'Warga ' || g from generate_series(1, 500) g;"
                   "create table scans (id int primary key, img bytea);"
                   f"insert into scans select g, (select string_agg(decode(md5(random()::text || s || g), 'hex'),"
                   f" ''::bytea) from generate_series(1, 64) s) from generate_series(1, {PG_ROWS}) g;",
                   PG_TEMPLATE)
        yield server


@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    with http_receiver() as rec:
        yield rec


# ------------------------------------------------------------------ the site

@dataclass
class Site:
    root: Path
    s3: Any                               # LocalS3
    proxy: FaultProxy
    bucket: str
    receiver: Receiver | None
    data: Path                            # production files live here (outside /tmp)
    prefix: str = "repo"
    config: dict[str, Any] = field(default_factory=dict)
    good: dict[str, str] = field(default_factory=dict)    # "source/stream" -> sha256 of the last good bytes
    good_run: str | None = None
    pg_db: str | None = None                              # the site's own PostgreSQL database
    pg_bin: str | None = None                             # its PostgreSQL bin dir (pg_dump pausable)
    pause_flag: Path | None = None                        # exists: the next backup's pg_dump stops at once
    _listing: list[dict[str, Any]] | None = None          # bare restic's snapshot list, until a change
    outputs: list[str] = field(default_factory=list)      # every stdout/stderr seen (leak scan)

    # -------------------------------------------------------------- paths

    @property
    def config_path(self) -> Path:
        return self.root / "drtool.yaml"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def repo_dir(self) -> Path:
        return self.s3.root / self.bucket / self.prefix

    @property
    def records_dir(self) -> Path:
        return self.s3.root / self.bucket / f"{self.prefix}.drtool"

    @property
    def direct_url(self) -> str:
        return self.s3.repo_url(self.bucket, self.prefix)

    # -------------------------------------------------------------- configuration

    def write_config(self, **changes: Any) -> None:
        self.config.update(changes)
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))

    def repository(self, **changes: Any) -> None:
        self.config["repositories"]["offsite"].update(changes)
        self.write_config()

    def policy(self, name: str, sources: list[dict], **extra: Any) -> None:
        doc = {"name": name, "repository": "offsite", "retries": 0, "sources": sources, **extra}
        (self.root / "policies" / f"{name}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))

    def playbook(self, name: str, doc: dict) -> Path:
        path = self.root / "playbooks" / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"name": name, **doc}, sort_keys=False))
        return path

    def pause_next_dump(self) -> None:
        """The next backup's pg_dump stops itself before its first byte (see pausable_bin_dir);
        `paused_dump` finds it and lets later dumps run."""
        assert self.pause_flag is not None, "not a pg_site"
        self.pause_flag.touch()

    def paused_dump(self, root: int, timeout: float = 60.0) -> int:
        """The pid of the pg_dump below `root` that pause_next_dump stopped."""
        # A backup's dump, not a `pg_dump --version` probe; the flag goes once it stopped: sooner,
        # it might not stop at all.
        deadline = time.monotonic() + timeout
        while True:
            dumps = [pid for pid in descendants(root) if comm(pid) == "pg_dump"
                     and any(arg.startswith(b"--snapshot=") for arg in cmdline(pid))]
            stopped = [pid for pid in dumps if _state(pid) == "T"]
            if stopped:
                break
            assert time.monotonic() < deadline, f"no backup pg_dump paused below {root} (seen: {dumps})"
            time.sleep(0.002)
        assert self.pause_flag is not None
        self.pause_flag.unlink(missing_ok=True)
        return stopped[0]

    def s3_down(self) -> None:
        """The S3 server is gone: open connections are cut at their next request, new ones refused."""
        self.proxy.set("refuse")
        self.proxy.stop()

    def s3_up(self) -> None:
        self.proxy = FaultProxy(self.s3.port, port=self.proxy.port).start()

    # -------------------------------------------------------------- running drtool

    @property
    def env(self) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith(_ENV_DROP)}
        return {**base, "FAULT_S3_KEY": self.s3.access_key, "FAULT_ENV_SECRET": CANARY_ENV_SECRET,
                "PYTHONPATH": str(Path(__file__).resolve().parents[2])}

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "drtool", "-c", str(self.config_path), *args]

    def drtool(self, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
        self._listing = None
        proc = subprocess.run(self.argv(*args), capture_output=True, text=True, env=self.env, timeout=timeout)
        self.outputs += [proc.stdout, proc.stderr]
        return proc

    def drtool_secret(self, *args: str, secret: str, timeout: float = 240) -> subprocess.CompletedProcess:
        """drtool with `secret` (a kit passphrase) on an inherited pipe: `--passphrase-fd N` is appended."""
        self._listing = None
        read_fd, write_fd = os.pipe()
        os.write(write_fd, secret.encode() + b"\n")
        os.close(write_fd)
        try:
            proc = subprocess.run([*self.argv(*args), "--passphrase-fd", str(read_fd)], capture_output=True, text=True,
                                  env=self.env, timeout=timeout, pass_fds=(read_fd,))
        finally:
            os.close(read_fd)
        self.outputs += [proc.stdout, proc.stderr]
        return proc

    def start(self, *args: str, extra_env: dict[str, str] | None = None) -> Started:
        self._listing = None
        out = self.root / f"out-{uuid.uuid4().hex[:6]}"
        stdout, stderr = open(f"{out}.stdout", "w"), open(f"{out}.stderr", "w")
        try:
            proc = subprocess.Popen(self.argv(*args), stdout=stdout, stderr=stderr, env={**self.env, **(extra_env or {})},
                                    stdin=subprocess.DEVNULL)
        finally:
            stdout.close()
            stderr.close()
        return Started(proc, Path(f"{out}.stdout"), Path(f"{out}.stderr"), self)

    # -------------------------------------------------------------- bare restic, not drtool

    def restic(self, *args: str, check: bool = True, input: bytes | None = None,  # noqa: A002
               timeout: float = 120) -> subprocess.CompletedProcess:
        if not (args[:1] == ("--no-lock",) or args[:1] == ("list",)):
            self._listing = None                          # it may write (a crafted backup, init)
        env = {**self.env, "RESTIC_REPOSITORY": self.direct_url, "RESTIC_PASSWORD": CANARY_PASSWORD,
               "AWS_ACCESS_KEY_ID": self.s3.access_key, "AWS_SECRET_ACCESS_KEY": CANARY_S3_SECRET}
        proc = subprocess.run(["restic", "--cache-dir", str(self.root / "bare-cache"), *args], input=input,
                              capture_output=True, env=env, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"bare restic {' '.join(args)} exited {proc.returncode}: {proc.stderr[-2000:]!r}")
        return proc

    def snapshots(self, *tags: str) -> list[dict[str, Any]]:
        """Bare `restic snapshots --json`, filtered by tags (all of them) here. One listing is kept
        until something may have changed the repository (any drtool or writing restic run)."""
        if self._listing is None:
            self._listing = json.loads(self.restic("--no-lock", "snapshots", "--json").stdout or b"[]")
        return [s for s in self._listing if set(tags) <= set(s.get("tags") or ())]

    def dump_latest(self, policy: str, source: str, stream: str) -> bytes:
        """What the README's bare command returns: `restic dump --host H --tag ... latest /STREAM`."""
        tags = f"policy={policy},source={source},stream={stream}"
        return self.restic("--no-lock", "dump", "--host", HOST, "--tag", tags, "latest", f"/{stream}").stdout

    def locks(self) -> list[str]:
        return self.restic("--no-lock", "list", "locks").stdout.decode().split()

    def runbook_run(self, policy: str, db_sources: list[str]) -> str | None:
        """The run the README's runbook pins: the newest run of this host in which every database
        source has its fingerprint.json."""
        by_run: dict[str, set[str]] = {}
        times: dict[str, str] = {}
        for snap in self.snapshots(f"policy={policy}"):
            if snap.get("hostname") != HOST:
                continue
            tags = dict(t.split("=", 1) for t in snap.get("tags", []) if "=" in t)
            if tags.get("stream") == "fingerprint.json" and "run" in tags:
                by_run.setdefault(tags["run"], set()).add(tags["source"])
                times[tags["run"]] = max(times.get(tags["run"], ""), snap["time"])
        complete = [run for run, sources in by_run.items() if set(db_sources) <= sources]
        return max(complete, key=lambda r: times[r]) if complete else None

    # -------------------------------------------------------------- records

    def runs(self, policy: str | None = None, kind: str | None = None) -> list[dict[str, Any]]:
        """From the catalog file itself (read-only), newest first."""
        path = self.state_dir / "catalog.db"
        if not path.exists():
            return []
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        try:
            rows = db.execute("select id, policy, kind, status, error, details, snapshots from runs"
                              " order by started_at desc").fetchall()
        finally:
            db.close()
        found = [{"id": r[0], "policy": r[1], "kind": r[2], "status": r[3], "error": r[4] or "",
                  "details": json.loads(r[5] or "{}"), "snapshots": json.loads(r[6] or "[]")} for r in rows]
        return [r for r in found if (policy is None or r["policy"] == policy) and (kind is None or r["kind"] == kind)]

    def last_run(self, policy: str, kind: str = "backup") -> dict[str, Any]:
        runs = self.runs(policy, kind)
        assert runs, f"no {kind} run of {policy} in the catalog"
        return runs[0]

    def offsite(self, run_id: str, folder: str = "runs") -> dict[str, Any] | None:
        path = self.records_dir / folder / f"{run_id}.json"
        return json.loads(path.read_text()) if path.exists() else None

    def alerts(self) -> list[dict[str, Any]]:
        if self.receiver is None:
            return []
        with self.receiver.lock:
            return [json.loads(r.body) for r in self.receiver.requests if r.path == "/hook"]


@dataclass
class Started:
    """A drtool started in the background (to be killed, or to kill something under it)."""

    proc: subprocess.Popen
    stdout_path: Path
    stderr_path: Path
    site: Site

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self) -> None:
        """SIGKILL drtool itself (what its children do then is the point of the test)."""
        kill(self.proc.pid)
        self.proc.wait(30)
        self.site._listing = None

    def wait(self, timeout: float = 240) -> subprocess.CompletedProcess:
        self.site._listing = None
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            where = hung_process_report(self.proc.pid)
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"drtool did not finish in {timeout}s:\n{self.stderr_path.read_text()[-3000:]}"
                                 f"\n{where}") from None
        self.site._listing = None
        done = subprocess.CompletedProcess(self.proc.args, code, self.stdout_path.read_text(),
                                           self.stderr_path.read_text())
        self.site.outputs += [done.stdout, done.stderr]
        return done


@pytest.fixture()
def make_site(tmp_path: Path, fault_s3, request: pytest.FixtureRequest) -> Callable[..., Site]:  # noqa: ANN001
    """make_site() -> a fresh Site; its proxy and data dir are removed after the test."""
    with _site_factory(tmp_path, fault_s3, request.node.name) as factory:
        yield factory


@contextmanager
def _site_factory(root: Path, s3: Any, name: str) -> Iterator[Callable[..., Site]]:
    made: list[Site] = []

    def make(receiver: Receiver | None = None) -> Site:
        site = new_site(root / f"site{len(made)}", s3, name, receiver)
        made.append(site)
        return site

    try:
        yield make
    finally:
        for site in made:
            site.proxy.stop()
            shutil.rmtree(site.data, ignore_errors=True)


def new_site(root: Path, s3: Any, name: str, receiver: Receiver | None) -> Site:
    for sub in ("policies", "playbooks", "secrets"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    bucket = re.sub(r"[^a-z0-9-]", "-", name.lower())[:40].strip("-") + "-" + uuid.uuid4().hex[:8]
    s3.make_bucket(bucket)
    proxy = FaultProxy(s3.port).start()
    parent = Path.home() / ".cache" / "drtool-tests"
    parent.mkdir(parents=True, exist_ok=True)
    data = Path(tempfile.mkdtemp(prefix="faults-", dir=parent))
    site = Site(root, s3, proxy, bucket, receiver, data)
    secrets_dir = root / "secrets"
    for file_name, value in (("repo.pass", CANARY_PASSWORD), ("s3.secret", CANARY_S3_SECRET)):
        (secrets_dir / file_name).write_text(value + "\n")
        (secrets_dir / file_name).chmod(0o600)
    config: dict[str, Any] = {
        "state_dir": str(site.state_dir),
        "hostname": HOST,
        "repositories": {"offsite": {
            "url": proxy.repo_url(bucket, site.prefix),
            "password": {"file": str(secrets_dir / "repo.pass")},
            "wait_unavailable": "4s",
            "lock_wait": "3s",              # a lock of another host fails a run after 3 s, not 2 min
            "s3": {"access_key_id": {"env": "FAULT_S3_KEY"},
                   "secret_access_key": {"file": str(secrets_dir / "s3.secret")}},
        }},
    }
    if receiver is not None:
        config["notifications"] = {"attempts": 1, "timeout": "5s", "webhooks": [
            {"url": receiver.url("/hook"), "headers": {"Authorization": {"env": "FAULT_ENV_SECRET"}}}]}
    site.write_config(**config)
    return site


def files_site(make_site: Callable[..., Site], receiver: Receiver | None = None, *, size: int = 4096,
               policy: str = "docs") -> Site:
    """A site with one files source of a few files (`size` bytes of random data in one of them)."""
    site = make_site(receiver)
    (site.data / "akta").mkdir()
    (site.data / "akta" / "surat.txt").write_text("Surat keterangan\n" * 20)
    (site.data / "akta" / "scan.bin").write_bytes(os.urandom(size))
    site.policy(policy, [{"name": "scans", "files": {"paths": [str(site.data / "akta")]}}])
    return site


def pg_site(make_site: Callable[..., Site], pg: Any, receiver: Receiver | None = None, *, policy: str = "siak",
            bin_dir: str | None = None, **source_extra: Any) -> Site:
    """A site with one PostgreSQL source: its own copy of the template database."""
    site = make_site(receiver)
    db = "f_" + uuid.uuid4().hex[:10]
    pg.sql(f"create database {db} template {PG_TEMPLATE}")
    site.pg_db = db
    site.pg_bin, site.pause_flag = pausable_bin_dir(site.root, pg.bin_dir)
    source = {"name": "siak-db", "postgres": {"database": db, "port": pg.port, "bin_dir": bin_dir or site.pg_bin},
              **source_extra}
    site.policy(policy, [source])
    return site


# ------------------------------------------------------------------ what "clean" means

def assert_one_clear_error(proc: subprocess.CompletedProcess, cause: str, *, code: int | None = 1) -> str:
    """Exit code, no traceback, and the cause (a regex) on an error line; returns that line."""
    out = proc.stdout + proc.stderr
    assert not any(m in out for m in TRACE_MARKERS), f"a traceback or stack dump:\n{out[-4000:]}"
    if code is None:
        assert proc.returncode != 0, out[-3000:]
    else:
        assert proc.returncode == code, f"exit {proc.returncode}, wanted {code}:\n{out[-3000:]}"
    errors = [line for line in proc.stderr.splitlines() if re.match(r"\s*(drtool: )?error:", line)]
    assert errors, f"no error line on stderr:\n{proc.stderr[-3000:]}"
    assert re.search(cause, errors[0] + "\n" + proc.stderr, re.IGNORECASE), \
        f"the error does not say {cause!r}:\n{proc.stderr[-3000:]}"
    assert re.search(cause, errors[0], re.IGNORECASE) or len(errors) == 1, errors
    return errors[0]


def assert_recorded(site: Site, run: dict[str, Any], status: str | tuple[str, ...], cause: str | None = None,
                    *, offsite: bool = True, alert: bool = True) -> None:
    """The run's local record has `status` (and names the cause); its signed copy offsite too;
    and the failure was announced."""
    statuses = (status,) if isinstance(status, str) else status
    assert run["status"] in statuses, run
    if cause:
        assert re.search(cause, run["error"], re.IGNORECASE), run["error"]
    if offsite:
        record = site.offsite(run["id"])
        assert record is not None, f"run {run['id']} is not recorded offsite: {run['details'].get('offsite_record_error')}"
        assert record["status"] in statuses and "signature" in record
    if alert and site.receiver is not None:
        kinds = [a.get("event") for a in site.alerts() if a.get("run_id") == run["id"]]
        assert any(k and k.endswith(("_failed", "_interrupted", "_cancelled")) for k in kinds), site.alerts()


def assert_no_partial(site: Site, run_id: str) -> None:
    """Bare restic: nothing tagged with the failed run exists."""
    left = site.snapshots(f"run={run_id}")
    assert left == [], f"snapshots of failed run {run_id} left: {[s['tags'] for s in left]}"


def assert_latest_is_good(site: Site, policy: str, db_sources: list[str], only: str | None = None) -> None:
    """`restic dump ... latest` of every stream (or the one called `only`) still gives the last good
    bytes, and the runbook would pin the last good run."""
    for key, digest in site.good.items():
        if only is not None and not key.endswith("/" + only):
            continue
        source, stream = key.split("/", 1)
        got = hashlib.sha256(site.dump_latest(policy, source, stream)).hexdigest()
        assert got == digest, f"`restic dump ... latest /{stream}` no longer returns the last good backup"
    if db_sources:
        assert site.runbook_run(policy, db_sources) == site.good_run


def assert_no_leak(site: Site) -> None:
    """No canary secret in any output, state file, log or object of the bucket."""
    texts = "\n".join(site.outputs)
    for canary in CANARIES:
        assert canary not in texts, f"{canary[:18]}... in drtool's output"
    for base in (site.state_dir, site.s3.root / site.bucket, site.root):
        for path in base.rglob("*"):
            if path.is_file() and "secrets" not in path.parts and "bare-cache" not in path.parts:
                blob = path.read_bytes()
                for canary in CANARIES:
                    assert canary.encode() not in blob, f"{canary[:18]}... in {path}"
    for alert in site.alerts():
        assert not any(c in json.dumps(alert) for c in CANARIES)


def assert_no_orphans(site: Site, timeout: float = 10.0) -> None:
    """No process of this site is left: restic for its repository, its dumps, its hooks."""
    deadline = time.monotonic() + timeout
    while True:
        left = site_processes(site)
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert not left, f"processes left behind: {left}"


def site_processes(site: Site) -> list[str]:
    markers = [site.bucket.encode(), str(site.root).encode(), str(site.data).encode()]
    if site.pg_db:
        markers.append(site.pg_db.encode())
    found = []
    for pid in _pids():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if pid == os.getpid() or b"pytest" in cmdline:
            continue
        if any(m in cmdline for m in markers) or site.bucket.encode() in environ:
            shown = cmdline.replace(b"\0", b" ").decode(errors="replace")[:200]
            found.append(f"{pid}: {shown}")
    return found


def next_run_succeeds(site: Site, policy: str, db_sources: list[str] = (), files_sources: list[str] = ()) -> dict:
    """The cause is gone: the next backup exits 0, is recorded (locally and offsite), leaves no lock,
    and becomes the new last good backup (its streams' bytes remembered for assert_latest_is_good)."""
    proc = site.drtool("backup", policy)
    assert proc.returncode == 0, f"the next backup failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    assert not any(m in proc.stderr for m in TRACE_MARKERS)
    run = site.last_run(policy)
    assert run["status"] == "success" and site.offsite(run["id"])["status"] == "success"
    assert site.locks() == [], "a restic lock is left in the repository"
    remember_good(site, policy, run["id"], db_sources)
    for source in files_sources:
        assert site.snapshots(f"run={run['id']}", f"source={source}"), f"no snapshot of {source}"
    return run


def remember_good(site: Site, policy: str, run_id: str, db_sources: list[str]) -> None:
    site.good_run = run_id if db_sources else site.good_run
    for snap in site.snapshots(f"policy={policy}", f"run={run_id}"):
        tags = dict(t.split("=", 1) for t in snap["tags"] if "=" in t)
        if "stream" in tags and tags["stream"] != "fingerprint.json":
            key = f"{tags['source']}/{tags['stream']}"
            site.good[key] = hashlib.sha256(site.dump_latest(policy, tags["source"], tags["stream"])).hexdigest()


# ------------------------------------------------------------------ processes

def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid in _pids():
        try:
            stat = Path(f"/proc/{pid}/stat").read_bytes()
        except OSError:
            continue
        children.setdefault(int(stat[stat.rfind(b")") + 2:].split()[1]), []).append(pid)
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def stream_restic(root: int, stream: str, timeout: float = 60.0) -> int:
    """The restic process below `root` that reads `stream` (its --stdin-filename)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in descendants(root):
            argv = cmdline(pid)
            # --stdin-filename, not any argument: a tag filter (`--tag ...,stream=NAME`) names it too.
            if argv and argv[0].endswith(b"restic") and stream.encode() in argv and \
                    argv[argv.index(stream.encode()) - 1] == b"--stdin-filename":
                return pid
        time.sleep(0.005)
    raise AssertionError(f"no restic reading {stream}")


def cmdline(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return []


def _state(pid: int) -> str:
    """The one-letter state of `pid` (R, S, T for stopped, Z...), "" once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return ""
    return stat[stat.rfind(b")") + 2:].split()[0].decode()


def cpu_ticks(pid: int) -> int:
    """utime + stime of `pid` (clock ticks), -1 once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return -1
    fields = stat[stat.rfind(b")") + 2:].split()
    return int(fields[11]) + int(fields[12])


def wait_idle(pid: int, quiet: float = 1.0, timeout: float = 60.0, *, owner: Started | None = None) -> None:
    """Until `pid` has used no CPU for `quiet` seconds (a restic that opened its repository and
    now waits on its stdin); if it ends, the failure says what `owner` printed."""
    deadline = time.monotonic() + timeout
    last, since = cpu_ticks(pid), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = cpu_ticks(pid)
        if now < 0:
            raise AssertionError(_ended_early(pid, None, owner))
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
    raise AssertionError(f"process {pid} kept using CPU for {timeout}s")


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def wait_for_child(root: int, name: str, timeout: float = 60.0, *, alive: Callable[[], bool] | None = None) -> int:
    """The pid of a process called `name` below `root`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in descendants(root):
            if comm(pid) == name:
                return pid
        if alive is not None and not alive():
            break
        time.sleep(0.005)
    raise AssertionError(f"no {name} process appeared below {root}")


def io_bytes(pid: int, field_name: str = "wchar") -> int:
    try:
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return -1


def stop_after(pid: int, nbytes: int, field_name: str = "wchar", timeout: float = 60.0, *,
               owner: Started | None = None) -> int:
    """Let `pid` move `nbytes` (its /proc io counter), then SIGSTOP it; returns the count reached.

    It runs in 1 ms steps between SIGSTOPs, so the fault lands where it was meant to land
    however busy the machine is. When `pid` ends first, the failure says what `owner` (the
    drtool above it) printed: the reason is there, not in the child."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, signal.SIGSTOP)
        except ProcessLookupError:
            raise AssertionError(_ended_early(pid, nbytes, owner)) from None
        done = io_bytes(pid, field_name)
        if done < 0:
            raise AssertionError(_ended_early(pid, nbytes, owner))
        if done >= nbytes:
            return done
        os.kill(pid, signal.SIGCONT)
        time.sleep(0.001)
    raise AssertionError(f"process {pid} moved only {io_bytes(pid, field_name)} of {nbytes} bytes in {timeout}s")


def _ended_early(pid: int, nbytes: int | None, owner: Started | None) -> str:
    message = f"process {pid} ended " + (f"before it moved {nbytes} bytes" if nbytes is not None
                                         else "while it was awaited idle")
    if owner is None:
        return message
    try:
        code = owner.proc.wait(60)
    except subprocess.TimeoutExpired:
        return f"{message}; drtool {owner.pid} is still running"
    return f"{message}; drtool exited {code}:\n{owner.stderr_path.read_text()[-3000:]}"


def kill(pid: int, sig: int = signal.SIGKILL) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def assert_nothing_usable(site: Site, run_id: str, cut: str) -> None:
    """What a run left when it could not clean up (drtool killed, the storage gone): the stream
    that was cut is not there, nor the fingerprint.json that would make the set complete.
    Another stream of the source may have committed on its own (globals.sql); the next backup
    removes it (assert_no_partial after it)."""
    left = site.snapshots(f"run={run_id}")
    streams = [dict(t.split("=", 1) for t in s["tags"] if "=" in t).get("stream") for s in left]
    assert cut not in streams and "fingerprint.json" not in streams, streams


def assert_clean_backup_failure(site: Site, proc: subprocess.CompletedProcess, policy: str, cause: str, *,
                                db_sources: list[str] = (), status: str | tuple[str, ...] = "failed",
                                code: int | None = 1, offsite: bool = True,
                                cut: str | None = None) -> dict[str, Any]:
    """Every part of "clean" for a backup that failed (see the module docstring); returns its record.
    `cut`: the stream that was cut when the failure also kept drtool from cleaning up (see
    assert_nothing_usable)."""
    assert_one_clear_error(proc, cause, code=code)
    run = site.last_run(policy)
    assert_recorded(site, run, status, cause, offsite=offsite)
    if cut is None:
        assert_no_partial(site, run["id"])
    else:
        assert_nothing_usable(site, run["id"], cut)
    assert_latest_is_good(site, policy, list(db_sources), only=cut)
    assert_no_orphans(site)
    assert_no_leak(site)
    return run


@pytest.fixture(scope="module")
def module_receiver() -> Iterator[Receiver]:
    with http_receiver() as rec:
        yield rec


def wrapper_bin_dir(root: Path, real_bin: str, name: str, script: str) -> str:
    """A copy of a PostgreSQL bin dir (symlinks) in which `name` is `script` (a fault: a dump
    that exits 0 after writing nothing, or only part of its output). $REAL is the real program."""
    bin_dir = root / f"bin-{name}-{uuid.uuid4().hex[:6]}"
    bin_dir.mkdir(parents=True)
    for entry in Path(real_bin).iterdir():
        if entry.name != name:
            (bin_dir / entry.name).symlink_to(entry)
    wrapper = bin_dir / name
    wrapper.write_text(f"#!/bin/bash\nREAL={Path(real_bin) / name}\n{script}\n")
    wrapper.chmod(0o755)
    return str(bin_dir)


def pausable_bin_dir(root: Path, real_bin: str) -> tuple[str, Path]:
    """A bin dir whose `pg_dump --snapshot=...` (a backup's dump, not a version probe) stops itself
    before it writes a byte while the returned flag file exists: `stop_after` then lets it run in
    1 ms steps from its first byte. Found only after it started, a dump on a loaded machine could
    write all of its 16 MB before the first stop. Builtins only: a forked child would carry the
    name pg_dump until its exec and could be taken for the dump."""
    flag = root / f"pause-next-dump-{uuid.uuid4().hex[:6]}"
    script = f'case "$*" in *--snapshot=*) [ -e {flag} ] && kill -STOP $$ ;; esac\nexec "$REAL" "$@"'
    return wrapper_bin_dir(root, real_bin, "pg_dump", script), flag
