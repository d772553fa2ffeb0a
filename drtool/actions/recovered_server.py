"""The database server `drtool recover` leaves running: a production server, not a drill's scratch.

Where it lives: `<data root>/<policy>/<source>/`, by default under the state
dir of the recovered configuration (`/var/lib/drtool/recovered/...`), or
`--data-dir DIR`; never under $TMPDIR (a tmp cleaner would delete it).

    <data root>/<policy>/<source>/        root, 0711
        server/                           the server's own directory, 0700, owned by postgres / mysql
        password                          the superuser's password for TCP logins, 0600
        postgres.pgpass                   (PostgreSQL) the same as a libpq password file, 0600
        drtool-recovered-<kind>-<source>.service   systemd unit (not installed; see ServiceInfo)

The server is loaded with fast settings, then made durable (fsync,
full_page_writes, synchronous_commit, autovacuum on; synced and
checkpointed) before recover reports success; `finish()` does that.
"""

from __future__ import annotations

import os
import secrets
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drtool.errors import UsageError
from drtool.scratch.service import ServiceInfo, mariadb_unit, postgres_unit, unit_name, write_service
from drtool.secrets import Secret
from drtool.sources.base import DbTarget

DEFAULT_DATA_ROOT = Path("/var/lib/drtool/recovered")
TEMP_ROOTS = ("/tmp", "/var/tmp", "/dev/shm")


def data_root(configured: Path | None, state_dir: str | None) -> Path:
    """--data-dir, else <state_dir>/recovered of the recovered configuration, else the default."""
    if configured is not None:
        root = Path(configured).absolute()
    elif state_dir and os.path.isabs(state_dir):
        root = Path(state_dir) / "recovered"
    else:
        root = DEFAULT_DATA_ROOT
    check_not_temporary(root)
    return root


def check_not_temporary(root: Path) -> None:
    """A production server must not live where temp cleaners delete files."""
    temp = Path(tempfile.gettempdir()).resolve()
    resolved = root.resolve()
    if resolved == temp or temp in resolved.parents:
        raise UsageError(f"{root} is inside the temporary directory {temp} ($TMPDIR): a recovered server "
                         "there would be deleted by a tmp cleaner",
                         hint="give a persistent --data-dir, e.g. /var/lib/drtool/recovered or /srv/db")


def temporary_warning(root: Path) -> str | None:
    for temp in TEMP_ROOTS:
        if root.resolve() == Path(temp) or Path(temp) in root.resolve().parents:
            return f"note: {root} is below {temp}, which tmp cleaners and reboots may empty"
    return None


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


@dataclass
class RecoveredServer:
    """One running server: its target for the restore, and what to tell the admin afterwards."""

    kind: str
    name: str
    instance: Path
    server: Any                              # ScratchPostgres / ScratchMariadb in durable mode
    password: Secret
    passfile: Path
    info: dict[str, Any] = field(default_factory=dict)

    def target(self) -> DbTarget:
        return self.server.target()

    def teardown(self) -> None:
        """Only when recover fails: the half-restored server and its directory go."""
        (self.server.stop if self.kind == "postgres" else self.server._teardown)()
        for path in sorted(self.instance.glob("*"), reverse=True):
            if path.is_file():
                path.unlink(missing_ok=True)
        try:
            self.instance.rmdir()
        except OSError:
            pass


def _instance(root: Path, policy: str, source: str) -> Path:
    path = root / policy / source
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o711)
    except OSError as exc:
        raise UsageError(f"cannot create {path} for the recovered server: {exc.strerror}",
                         hint="run as root, or give a writable persistent --data-dir") from None
    for p in (path, path.parent, root):
        if p.stat().st_uid == os.geteuid():
            p.chmod(0o711)
    return path


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def start_postgres(root: Path, policy: str, source: Any, min_major: int | None) -> RecoveredServer:
    from drtool.scratch.postgres import OS_USER, ScratchPostgres

    instance = _instance(root, policy, source.name)
    password = Secret(secrets.token_urlsafe(24))
    port = source.spec.port if port_free(source.spec.port) else None
    server = ScratchPostgres(min_major=min_major, password=password, durable=True, home=instance / "server",
                             port=port)
    recovered = RecoveredServer("postgres", source.name, instance, server, password, instance / "postgres.pgpass")
    started = time.monotonic()
    try:
        server.start()
        _write_private(instance / "password", password.reveal() + "\n")
        _write_private(recovered.passfile, f"127.0.0.1:{server.port}:*:postgres:{password.reveal()}\n")
    except BaseException:
        recovered.teardown()
        raise
    recovered.info = {"user": OS_USER if os.geteuid() == 0 else None,
                      "start_s": round(time.monotonic() - started, 3)}
    return recovered


def finish_postgres(recovered: RecoveredServer, policy: str) -> dict[str, Any]:
    """Durable from now on; the unit file and the connection details."""
    server = recovered.server
    started = time.monotonic()
    settings = server.finish_load()
    took = time.monotonic() - started
    unit = unit_name("postgres", f"{policy}-{recovered.name}")
    user = recovered.info.get("user") or _me()
    service = write_service(recovered.instance, unit, postgres_unit(
        f"PostgreSQL {server.major} recovered by drtool (policy {policy}, source {recovered.name})",
        user, server.bin_dir, server.data_dir), server.start_argv(), server.stop_argv())
    psql = os.path.join(server.bin_dir or "", "psql")
    return {"host": "127.0.0.1", "port": server.port, "user": "postgres", "passfile": str(recovered.passfile),
            "password_file": str(recovered.instance / "password"), "dir": str(server.dir),
            "data_dir": str(server.data_dir), "bin_dir": server.bin_dir, "os_user": user, "settings": settings,
            "service": service.to_dict(),
            "connect": f"PGPASSFILE={recovered.passfile} {psql} -h 127.0.0.1 -p {server.port} -U postgres DBNAME",
            "start_s": recovered.info.get("start_s"), "make_durable_s": round(took, 3), "_service": service}


def start_mariadb(root: Path, policy: str, source: Any) -> RecoveredServer:
    from drtool.scratch.mariadb import ScratchMariadb

    instance = _instance(root, policy, source.name)
    password = Secret(secrets.token_urlsafe(24))
    port = source.spec.port if port_free(source.spec.port) else None
    server = ScratchMariadb(password=password, durable=True, home=instance / "server", port=port)
    recovered = RecoveredServer("mariadb", source.name, instance, server, password, instance / "my.cnf")
    try:
        server.__enter__()
        _write_private(instance / "password", password.reveal() + "\n")
        _write_private(recovered.passfile, f"[client]\nhost=127.0.0.1\nport={server.port}\nuser=root\n"
                                           f"password={password.reveal()}\n")
    except BaseException:
        recovered.teardown()
        raise
    return recovered


def finish_mariadb(recovered: RecoveredServer, policy: str) -> dict[str, Any]:
    server = recovered.server
    settings = server.finish_load()
    unit = unit_name("mariadb", f"{policy}-{recovered.name}")
    user = "mysql" if os.geteuid() == 0 else _me()
    service = write_service(recovered.instance, unit, mariadb_unit(
        f"MariaDB recovered by drtool (policy {policy}, source {recovered.name})", user,
        server.mariadbd, server.defaults_file), server.start_argv(), server.stop_argv())
    return {"host": "127.0.0.1", "port": server.port, "user": "root", "passfile": str(recovered.passfile),
            "password_file": str(recovered.instance / "password"), "dir": str(server.home),
            "data_dir": str(server.home / "data"), "os_user": user, "settings": settings,
            "service": service.to_dict(),
            "connect": f"mariadb --defaults-extra-file={recovered.passfile} DBNAME",
            "_service": service}


def connection_text(source: str, kind: str, info: dict[str, Any]) -> str:
    service: ServiceInfo = info["_service"]
    name = "PostgreSQL" if kind == "postgres" else "MariaDB"
    return "\n".join([
        f"{source}: {name} on 127.0.0.1:{info['port']}, data in {info['data_dir']} (owner {info['os_user']}), "
        "durable (fsync on, synced and checkpointed)",
        f"  connect:       {info['connect']}",
        f"  password:      {info['password_file']} (readable by you only)",
        *service.instructions(),
    ])


def _me() -> str:
    import pwd
    return pwd.getpwuid(os.geteuid()).pw_name
