"""A recovery runbook: the bare restic and database commands that bring a policy back.

The day drtool cannot be installed, an operator with restic, the database
client tools, the bucket and the password must still recover. The runbook
lists exactly the commands drtool itself would run, in order, following the
storage convention of the backup engine:

* a database stream is a snapshot made by `restic backup --stdin
  --stdin-filename <stream>`, so it holds the single file `/<stream>`;
  streams are `<db>.pgdump` (pg_dump -Fc), `globals.sql` (pg_dumpall
  --globals-only), `<db>.sql` (mariadb-dump, no CREATE DATABASE) and the
  SQLite file's base name;
* every snapshot is tagged `drtool`, `policy=<p>`, `source=<s>`, `run=<id>`,
  and database streams also `stream=<stream>`; `--tag a,b` selects snapshots
  carrying both tags (restic 0.14 and newer).

Every `sh` block, in order, is also a bash script (`extract_script`): values
the runbook cannot know - passwords, the target server - are read from
variables that the operator sets or is prompted for, never written here.
"""

from __future__ import annotations

import posixpath
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass

from drtool.config.models import (
    FilesSource,
    MariadbSource,
    Policy,
    PostgresSource,
    Repository,
    Source,
    SqliteSource,
)

PG_JOBS = 4
_Q = shlex.quote


def render_runbook(policy: Policy, repository: Repository, *, host: str | None,
                   snapshot_hint: str | None = None) -> str:
    """Markdown runbook for `policy` stored in `repository`.

    `host` is the restic --host of the backups to recover: every restic command selects
    that host's snapshots only (a shared repository holds other hosts' sets of the same
    policy). `snapshot_hint` is a backup run id (the `run=` tag): every command is then
    pinned to that run instead of the latest snapshot of each stream, so all
    sources come back from the same night.
    """
    if snapshot_hint is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.:-]*", snapshot_hint):
        raise ValueError(f"snapshot_hint must be a run id (the run= tag), got {snapshot_hint!r}")
    if host is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", host):
        raise ValueError(f"host must be a host name, got {host!r}")
    hint = _Hint(snapshot_hint, host)
    blocks = [
        _title(policy, repository, snapshot_hint),
        _tools(policy),
        _repository(repository),
        _snapshots(policy, hint),
    ]
    for number, source in enumerate(policy.sources, start=len(blocks)):
        blocks.append(_SOURCE_SECTIONS[source.kind](number, policy, source, hint))
    blocks.append(_afterwards(policy))
    return "\n\n".join(blocks) + "\n"


def extract_script(runbook: str) -> str:
    """The runbook's `sh` blocks joined into one bash script, in order."""
    blocks = re.findall(r"^```sh\n(.*?)^```$", runbook, flags=re.MULTILINE | re.DOTALL)
    return "#!/bin/bash\n" + "\n".join(blocks)


# ---------------------------------------------------------------- sections


def _title(policy: Policy, repository: Repository, hint: str | None) -> str:
    which = f"the backup run `{hint}`" if hint else "the latest snapshot of each source"
    kinds = ", ".join(f"`{s.name}` ({s.kind})" for s in policy.sources)
    return "\n".join([
        f"# Recovery runbook: policy `{policy.name}`",
        "",
        (f"Recovers {kinds} from {which}, with restic and the databases' own tools only; "
        "drtool is not needed."),
        "",
        ("Run the `sh` blocks in order in one `bash` session on the new machine (as root). "
        "Nothing secret is written in this document: passwords come from the recovery kit "
        "or the places named below, and the commands prompt for what is not set already."),
    ])


def _tools(policy: Policy) -> str:
    packages = {"restic": "restic"}
    for source in policy.sources:
        if source.kind == "postgres":
            packages["pg_restore"] = "postgresql-client"
        elif source.kind == "mariadb":
            packages["mariadb"] = "mariadb-client"
    lines = [f"command -v {tool} >/dev/null || apt-get install -y {package}" for tool, package in packages.items()]
    return _section("1. Install the tools", [
        ("Debian/Ubuntu package names. restic must be 0.14 or newer; pg_restore must be of the "
        "same or a newer major version than the server that was dumped."),
    ], [*lines, "restic version"])


def _repository(repository: Repository) -> str:
    prose = [
        (f"The repository password: the escrow password from the recovery kit, or the repository "
        f"password (configured as `{repository.password.describe()}` on the old server). "
        "It goes into a file only you can read; the command below asks for it if the file is empty."),
    ]
    cmds = [
        "set -o pipefail",
        'export RECOVERY_DIR="${RECOVERY_DIR:-$HOME/drtool-recovery}"',
        'install -d -m 700 "$RECOVERY_DIR"',
        f"export RESTIC_REPOSITORY={_Q(repository.url)}",
        'export RESTIC_PASSWORD_FILE="${RESTIC_PASSWORD_FILE:-$RECOVERY_DIR/restic-password}"',
        ("[ -s \"$RESTIC_PASSWORD_FILE\" ] || (umask 077; read -rsp 'restic repository password: ' pw; echo; "
        "printf '%s\\n' \"$pw\" > \"$RESTIC_PASSWORD_FILE\")"),
    ]
    if repository.is_s3:
        s3 = repository.s3
        key_ref = s3.access_key_id.describe() if s3 and s3.access_key_id else "the AWS environment"
        secret_ref = s3.secret_access_key.describe() if s3 and s3.secret_access_key else "the AWS environment"
        prose.append(f"S3 credentials: the access key id (old server: `{key_ref}`) and secret key "
                     f"(old server: `{secret_ref}`), or the ones in the recovery kit if it holds them.")
        cmds += [
            "[ -n \"${AWS_ACCESS_KEY_ID:-}\" ] || read -rp 'S3 access key id: ' AWS_ACCESS_KEY_ID",
            "[ -n \"${AWS_SECRET_ACCESS_KEY:-}\" ] || { read -rsp 'S3 secret access key: ' AWS_SECRET_ACCESS_KEY; echo; }",
            "export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY",
            f'export AWS_DEFAULT_REGION="${{AWS_DEFAULT_REGION:-{s3.region if s3 else "us-east-1"}}}"',
        ]
    return _section("2. Point restic at the repository", prose, cmds)


def _snapshots(policy: Policy, hint: _Hint) -> str:
    tags = hint.tags(f"policy={policy.name}")
    return _section("3. See what there is", [
        ("Each database stream and each files source is its own snapshot; the `run=` tag says which "
        "backup run made it. To recover an older run, add `,run=<id>` to every `--tag` below "
        "(or generate the runbook with that run id)."),
    ], [f"restic snapshots {hint.host_flag}--tag {tags}"])


def _postgres(number: int, policy: Policy, source: Source, hint: _Hint) -> str:
    spec = source.spec
    assert isinstance(spec, PostgresSource)
    prose = [
        "Into the PostgreSQL server named by `PGHOST`/`PGPORT`/`PGUSER` (defaults: the original server). "
        "Its password: `PGPASSWORD` or `~/.pgpass`"
        + (f" (the original was `{spec.password.describe()}`)." if spec.password else "."),
    ]
    cmds = [(f'export PGHOST="${{PGHOST:-{spec.host}}}" PGPORT="${{PGPORT:-{spec.port}}}" '
            f'PGUSER="${{PGUSER:-{spec.user}}}"')]
    if spec.globals:
        prose.append("Roles first, so owners and grants can be restored. The lines that would recreate or "
                     "re-password the role you connect as are left out, so your login keeps working.")
        out = _work_file(source, "globals.sql")
        cmds += [
            _dump(policy, source, "globals.sql", hint, f"> {out}"),
            f"grep -vE \"^(CREATE|ALTER) ROLE \\\"?${{PGUSER}}\\\"?[ ;]\" {out} | psql -X -q -d postgres",
        ]
    for db in spec.database_names:
        out = _work_file(source, f"{db}.pgdump")
        cmds += [
            _dump(policy, source, f"{db}.pgdump", hint, f"> {out}"),
            f"createdb {_Q(db)}",
            f"pg_restore --exit-on-error --no-tablespaces -j {PG_JOBS} -d {_Q(db)} {out}",
        ]
    return _section(f"{number}. PostgreSQL source `{source.name}`", prose, cmds)


def _mariadb(number: int, policy: Policy, source: Source, hint: _Hint) -> str:
    spec = source.spec
    assert isinstance(spec, MariadbSource)
    prose = [
        "Into the MariaDB server named by `MARIADB_HOST`/`MARIADB_PORT`/`MARIADB_USER` (defaults: the "
        "original server). Its password: `MYSQL_PWD` or `~/.my.cnf`"
        + (f" (the original was `{spec.password.describe()}`)." if spec.password else "."),
        "The dumps hold no CREATE DATABASE, so each database is created first.",
    ]
    client = 'mariadb --host="$MARIADB_HOST" --port="$MARIADB_PORT" --user="$MARIADB_USER"'
    cmds = [(f'export MARIADB_HOST="${{MARIADB_HOST:-{spec.host or "127.0.0.1"}}}" '
            f'MARIADB_PORT="${{MARIADB_PORT:-{spec.port}}}" MARIADB_USER="${{MARIADB_USER:-{spec.user}}}"')]
    for db in spec.database_names:
        ident = "`" + db.replace("`", "``") + "`"
        cmds += [
            f"{client} -e {_Q(f'CREATE DATABASE IF NOT EXISTS {ident}')}",
            _dump(policy, source, f"{db}.sql", hint, f"| {client} {_Q(db)}"),
        ]
    return _section(f"{number}. MariaDB source `{source.name}`", prose, cmds)


def _sqlite(number: int, policy: Policy, source: Source, hint: _Hint) -> str:
    spec = source.spec
    assert isinstance(spec, SqliteSource)
    stream = posixpath.basename(spec.path)
    dest = _under_root(spec.path)
    return _section(f"{number}. SQLite source `{source.name}`", [
        (f"The database file `{spec.path}`, written below `RESTORE_ROOT` "
        "(`RESTORE_ROOT=/` puts it back in place). `sqlite3 FILE 'PRAGMA integrity_check'` checks it."),
    ], [
        'export RESTORE_ROOT="${RESTORE_ROOT:-/restore-root}"',
        f"mkdir -p {_under_root(posixpath.dirname(spec.path) or '/')}",
        # Via a temp file: an interrupted dump must not leave a truncated database in place.
        _dump(policy, source, stream, hint, f"> {dest}.part && mv {dest}.part {dest}"),
    ])


def _files(number: int, policy: Policy, source: Source, hint: _Hint) -> str:
    spec = source.spec
    assert isinstance(spec, FilesSource)
    tags = hint.tags(f"policy={policy.name}", f"source={source.name}")
    paths = ", ".join(f"`{p}`" for p in spec.paths)
    return _section(f"{number}. Files source `{source.name}`", [
        (f"{paths}, restored below `RESTORE_ROOT` with their full paths "
        "(`RESTORE_ROOT=/` puts them back in place)."),
    ], [
        'export RESTORE_ROOT="${RESTORE_ROOT:-/restore-root}"',
        f'restic restore latest {hint.host_flag}--tag {tags} --target "$RESTORE_ROOT"',
    ])


def _afterwards(policy: Policy) -> str:
    return "\n".join([
        "## Afterwards",
        "",
        f"- Compare what came back with the last drill report of `{policy.name}` (tables, row counts).",
        "- Delete `$RECOVERY_DIR`: it holds the dumps and the password file.",
        ("- Once the new server runs drtool, `drtool kit revoke` the escrow key that was used here "
        "and make a new kit."),
    ])


_SOURCE_SECTIONS: dict[str, Callable[[int, Policy, Source, "_Hint"], str]] = {
    "postgres": _postgres,
    "mariadb": _mariadb,
    "sqlite": _sqlite,
    "files": _files,
}


# ---------------------------------------------------------------- pieces


@dataclass(frozen=True)
class _Hint:
    """Which snapshots every command selects: this host's, of one run when pinned."""

    run: str | None
    host: str | None

    def tags(self, *base: str) -> str:
        return _tags(*base, f"run={self.run}" if self.run else None)

    @property
    def host_flag(self) -> str:
        return f"--host {_Q(self.host)} " if self.host else ""


def _section(title: str, prose: list[str], commands: list[str]) -> str:
    return "\n".join([f"## {title}", "", *(p + "\n" for p in prose), "```sh", *commands, "```"])


def _tags(*tags: str | None) -> str:
    # One --tag with commas: restic selects snapshots carrying all of them.
    return _Q(",".join(t for t in tags if t))


def _dump(policy: Policy, source: Source, stream: str, hint: _Hint, redirect: str) -> str:
    tags = hint.tags(f"policy={policy.name}", f"source={source.name}", f"stream={stream}")
    return f"restic dump {hint.host_flag}--tag {tags} latest {_Q('/' + stream)} {redirect}"


def _work_file(source: Source, stream: str) -> str:
    # Per-source prefix: two PostgreSQL sources may both have a globals.sql.
    return '"$RECOVERY_DIR"/' + _Q(f"{source.name}-{stream}")


def _under_root(path: str) -> str:
    # "$RESTORE_ROOT"/var/lib/x.db: with RESTORE_ROOT=/ that is //var/lib/x.db, the same file.
    return '"$RESTORE_ROOT"' + _Q(path)
