"""A recovery runbook: the bare age, restic, jq and database commands that bring a policy back.

The day drtool cannot be installed, an operator with packaged tools, the
bucket and the recovery kit must still recover. The runbook lists exactly
what drtool itself does, in order, following the storage convention of the
backup engine:

* a database stream is a snapshot made by `restic backup --stdin
  --stdin-filename <stream>`, so it holds the single file `/<stream>`;
  streams are `<db>.pgdump` (pg_dump -Fc), `globals.sql` (pg_dumpall
  --globals-only), `<db>.sql` (mariadb-dump, no CREATE DATABASE), the
  SQLite file's base name, and `fingerprint.json` (row counts, written last:
  its presence marks the set complete);
* every snapshot is tagged `drtool`, `policy=<p>`, `source=<s>`, `run=<id>`,
  and database streams also `stream=<stream>`; `--tag a,b` selects snapshots
  carrying both tags (restic 0.14 and newer).

The procedure: open the kit with `age -d` (its JSON gives the repository,
the escrow password and key id, S3 location and credentials), pick ONE
complete set - the newest run of this host whose every database source has
its fingerprint.json and whose every files source is there, or the run named
in RUN, refused when incomplete - restore every stream of that run by its
`run=` tag, and compare the restored row counts with the fingerprint using
psql / mariadb / sqlite3.

Every `sh` block, in order, is also a bash script (`extract_script`) that
`bash -e` runs as written: values the runbook cannot know are read from
variables the operator sets or is prompted for, never written here.

A PostgreSQL source with `pitr:` also gets a point-in-time section
(drtool/actions/runbook_pitr.py): its blocks are fenced ```sh pitr, so the
default script (one complete set) leaves them out; `extract_script(text,
pitr=True)` gives the setup blocks (kit, tools, repository) plus those.
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
FINGERPRINT = "fingerprint.json"
KIT_JSON = '"$RECOVERY_DIR"/kit.json'

# Run ids of complete sets, oldest first: every database source has fingerprint.json, every files
# source a snapshot, in the same run. $db and $files are JSON arrays of source names.
COMPLETE_RUNS_JQ = (
    '[.[] | (.tags // []) as $t | ($t[] | select(startswith("run=")) | ltrimstr("run=")) as $run'
    ' | {run: $run, time: .time, tags: $t}] | group_by(.run)'
    ' | map(select(. as $g | ($db | all(. as $s | $g | any(.[]; any(.tags[]; . == "source=" + $s)'
    ' and any(.tags[]; . == "stream=fingerprint.json"))))'
    ' and ($files | all(. as $s | $g | any(.[]; any(.tags[]; . == "source=" + $s))))))'
    ' | sort_by(map(.time) | max) | .[] | .[0].run'
)
# "table<TAB>rows" lines of one database in a fingerprint (numbers only: other fields are not counts).
EXPECTED_JQ = ('.databases[$db] | to_entries[] | select(.value | type == "number")'
               ' | "\\(.key)\\t\\(.value)"')
# The same "schema.table<TAB>rows" lines from a restored PostgreSQL database, as drtool counts them.
PG_COUNTS_SQL = """\
SELECT n.nspname || '.' || c.relname, (xpath('/row/c/text()', query_to_xml(
         format('SELECT count(*) AS c FROM %I.%I', n.nspname, c.relname), false, true, '')))[1]::text
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND c.relpersistence <> 't'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%'
UNION ALL SELECT '(large objects)', count(*)::text FROM pg_largeobject_metadata;"""
MARIADB_COUNT_STATEMENTS_SQL = (
    "SELECT CONCAT('SELECT ', QUOTE(TABLE_NAME), ', COUNT(*) FROM `', REPLACE(TABLE_SCHEMA, '`', '``'), "
    "'`.`', REPLACE(TABLE_NAME, '`', '``'), '`;') FROM information_schema.TABLES "
    "WHERE TABLE_SCHEMA = {db} AND TABLE_TYPE IN ('BASE TABLE', 'SYSTEM VERSIONED');"
)
SQLITE_COUNT_STATEMENTS_SQL = (
    "SELECT 'SELECT ' || quote(name) || ', count(*) FROM \"' || replace(name, '\"', '\"\"') || '\";' "
    "FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%';"
)


def render_runbook(policy: Policy, repository: Repository, *, host: str | None,
                   snapshot_hint: str | None = None) -> str:
    """Markdown runbook for `policy` stored in `repository`.

    `host` is the restic --host of the backups to recover: every restic command selects
    that host's snapshots only (a shared repository holds other hosts' sets of the same
    policy). `snapshot_hint` is a backup run id (the `run=` tag) to recover instead of the
    newest complete set; it is checked to be complete like any other.
    """
    if snapshot_hint is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.:-]*", snapshot_hint):
        raise ValueError(f"snapshot_hint must be a run id (the run= tag), got {snapshot_hint!r}")
    if host is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", host):
        raise ValueError(f"host must be a host name, got {host!r}")
    hint = _Hint(snapshot_hint, host)
    blocks = [
        _title(policy, snapshot_hint),
        _kit(policy),
        _tools(policy),
        _repository(policy, repository),
        _pin_set(policy, hint),
    ]
    for number, source in enumerate(policy.sources, start=len(blocks)):
        blocks.append(_SOURCE_SECTIONS[source.kind](number, policy, source, hint))
    from drtool.actions.runbook_pitr import pitr_sections
    blocks += pitr_sections(policy, hint.host, start=len(blocks))
    blocks.append(_afterwards(policy))
    return "\n\n".join(blocks) + "\n"


SETUP_BLOCKS = 3          # kit, tools, repository: rendered first, needed by every way of recovering


def extract_script(runbook: str, *, pitr: bool = False) -> str:
    """The runbook's `sh` blocks joined into one bash script, in order; with `pitr`, the setup
    blocks and then the point-in-time blocks (```sh pitr) instead of the snapshot-set ones."""
    blocks = re.findall(r"^```sh\n(.*?)^```$", runbook, flags=re.MULTILINE | re.DOTALL)
    if pitr:
        blocks = blocks[:SETUP_BLOCKS] + re.findall(r"^```sh pitr\n(.*?)^```$", runbook,
                                                    flags=re.MULTILINE | re.DOTALL)
    return "#!/bin/bash\n" + "\n".join(blocks)


# ---------------------------------------------------------------- sections


def _title(policy: Policy, hint: str | None) -> str:
    which = f"the backup run `{hint}`" if hint else "the newest complete backup set"
    kinds = ", ".join(f"`{s.name}` ({s.kind})" for s in policy.sources)
    return "\n".join([
        f"# Recovery runbook: policy `{policy.name}`",
        "",
        (f"Recovers {kinds} from {which}, with age, restic, jq and the databases' own tools only; "
         "drtool is not needed. First step: open the kit with `age -d`."),
        "",
        ("Run the `sh` blocks in order in one `bash` session on the new machine (as root). "
         "Nothing secret is written in this document: the recovery kit holds the passwords, and "
         "the commands prompt for what is not set already."),
    ])


def _tools(policy: Policy) -> str:
    packages = {"jq": "jq", "restic": "restic"}
    for source in policy.sources:
        if source.kind == "postgres":
            packages["pg_restore"] = "postgresql-client"
        elif source.kind == "mariadb":
            packages["mariadb"] = "mariadb-client"
        elif source.kind == "sqlite":
            packages["sqlite3"] = "sqlite3"
    lines = [f"command -v {tool} >/dev/null || apt-get install -y {package}" for tool, package in packages.items()]
    return _section("2. Install the other tools", [
        ("Debian/Ubuntu package names. restic must be 0.14 or newer; pg_restore must be of the "
         "same or a newer major version than the server that was dumped."),
    ], [*lines, "restic version"])


def _kit(policy: Policy) -> str:
    return _section("1. Open the kit with `age -d`", [
        ("`KIT` is the recovery kit file (binary, or the printed text with its per-line checksums: they "
         "are stripped first). age asks for the kit passphrase; a kit made for a custodian's key opens "
         "with `AGE_IDENTITY=/path/to/key`. The decrypted kit goes into a file only you can read."),
    ], [
        "set -o pipefail",
        "command -v age >/dev/null || apt-get install -y age",
        'export RECOVERY_DIR="${RECOVERY_DIR:-$HOME/drtool-recovery}"',
        'install -d -m 700 "$RECOVERY_DIR"',
        f'KIT="${{KIT:-./{policy.name}.age}}"',
        'AGE_ARGS=(-d); [ -z "${AGE_IDENTITY:-}" ] || AGE_ARGS+=(-i "$AGE_IDENTITY")',
        "if grep -qa '^-----BEGIN AGE ENCRYPTED FILE-----' \"$KIT\"; then",
        "  (umask 077; sed -E 's/ [0-9a-fA-F]{4}$//' \"$KIT\" | sed -n '/^-----BEGIN AGE/,/^-----END AGE/p' "
        f"| age \"${{AGE_ARGS[@]}}\" > {KIT_JSON})",
        "else",
        f'  (umask 077; age "${{AGE_ARGS[@]}}" "$KIT" > {KIT_JSON})',
        "fi",
        f"jq -e .repositories {KIT_JSON} >/dev/null",
    ])


def _repository(policy: Policy, repository: Repository) -> str:
    repo = _Q(policy.repository)
    select = f"jq -r --arg r {repo} "
    cmds = [
        f"export RESTIC_REPOSITORY=\"$({select}'.repositories[] | select(.name == $r) | .url' {KIT_JSON})\"",
        '[ -n "$RESTIC_REPOSITORY" ] || { echo "the kit has no repository ' + policy.repository + '" >&2; exit 1; }',
        'export RESTIC_PASSWORD_FILE="$RECOVERY_DIR/restic-password"',
        (f"(umask 077; {select}'.repositories[] | select(.name == $r) | .escrow_password' {KIT_JSON} "
         '> "$RESTIC_PASSWORD_FILE")'),
        # restic tries this key first instead of deriving a key for every key of the repository.
        f"export RESTIC_KEY_HINT=\"$({select}'.repositories[] | select(.name == $r) | .escrow_key_id' {KIT_JSON})\"",
    ]
    prose = [(f"Repository `{policy.repository}` ({repository.url}), opened with the kit's escrow key "
              f"(not the daily password, configured as `{repository.password.describe()}` on the old server).")]
    if repository.is_s3:
        s3 = repository.s3
        key_ref = s3.access_key_id.describe() if s3 and s3.access_key_id else "the AWS environment"
        secret_ref = s3.secret_access_key.describe() if s3 and s3.secret_access_key else "the AWS environment"
        prose.append(f"S3 credentials: the kit's if it holds them, else `AWS_ACCESS_KEY_ID` / "
                     f"`AWS_SECRET_ACCESS_KEY` as set (old server: `{key_ref}`, `{secret_ref}`), else asked.")
        field = f"{select}'.repositories[] | select(.name == $r) | .s3.%s // empty' {KIT_JSON}"
        cmds += [
            f'kit_key="$({field % "access_key_id"})"; kit_secret="$({field % "secret_access_key"})"',
            'if [ -n "$kit_key" ] && [ -n "$kit_secret" ]; then AWS_ACCESS_KEY_ID="$kit_key" '
            'AWS_SECRET_ACCESS_KEY="$kit_secret"; fi',
            "[ -n \"${AWS_ACCESS_KEY_ID:-}\" ] || read -rp 'S3 access key id: ' AWS_ACCESS_KEY_ID",
            "[ -n \"${AWS_SECRET_ACCESS_KEY:-}\" ] || { read -rsp 'S3 secret access key: ' AWS_SECRET_ACCESS_KEY; echo; }",
            "export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY",
            f'export AWS_DEFAULT_REGION="${{AWS_DEFAULT_REGION:-{s3.region if s3 else "us-east-1"}}}"',
        ]
    return _section("3. Point restic at the repository", prose, cmds)


def _pin_set(policy: Policy, hint: _Hint) -> str:
    db = [s.name for s in policy.sources if s.kind != "files"]
    files = [s.name for s in policy.sources if s.kind == "files"]
    args = f"--argjson db {_Q(_json_list(db))} --argjson files {_Q(_json_list(files))}"
    return _section("4. Choose one complete backup set", [
        ("Every source comes back from the same backup run. A run is complete when every database source "
         f"has its `{FINGERPRINT}` (written last) and every files source its snapshot; the newest complete "
         "run of this host is taken, or the one named in `RUN` (refused when it is incomplete)."),
    ], [
        f'RUN="${{RUN:-{hint.run or ""}}}"',
        f'restic snapshots {hint.host_flag}--tag {_Q("policy=" + policy.name)} --json > "$RECOVERY_DIR"/snapshots.json',
        f'jq -r {args} {_Q(COMPLETE_RUNS_JQ)} "$RECOVERY_DIR"/snapshots.json > "$RECOVERY_DIR"/complete-runs',
        '[ -n "$RUN" ] || RUN="$(tail -n 1 "$RECOVERY_DIR"/complete-runs)"',
        '[ -n "$RUN" ] || { echo "no complete backup set of this host in the repository" >&2; exit 1; }',
        ('grep -qxF -- "$RUN" "$RECOVERY_DIR"/complete-runs || { echo "run $RUN is not a complete backup set '
         f'(a source or its {FINGERPRINT} is missing): refusing to restore it" >&2; exit 1; }}'),
        'echo "restoring backup run $RUN"',
        f"restic snapshots {hint.host_flag}--tag {hint.tags(f'policy={policy.name}')}",
    ])


def _postgres(number: int, policy: Policy, source: Source, hint: _Hint) -> str:
    spec = source.spec
    assert isinstance(spec, PostgresSource)
    prose = [
        "Into the PostgreSQL server named by `PGHOST`/`PGPORT`/`PGUSER` (defaults: the original server). "
        "Its password: `PGPASSWORD` or `~/.pgpass`"
        + (f" (the original was `{spec.password.describe()}`)." if spec.password else "."),
        "Then every table's row count is compared with the fingerprint taken at backup time.",
    ]
    cmds = [(f'export PGHOST="${{PGHOST:-{spec.host}}}" PGPORT="${{PGPORT:-{spec.port}}}" '
             f'PGUSER="${{PGUSER:-{spec.user}}}"'),
            _fingerprint(policy, source, hint)]
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
            *_compare(source, db, f"psql -X -q -A -t -v ON_ERROR_STOP=1 -F \"$(printf '\\t')\" -d {_Q(db)}",
                      PG_COUNTS_SQL),
        ]
    return _section(f"{number}. PostgreSQL source `{source.name}`", prose, cmds)


def _mariadb(number: int, policy: Policy, source: Source, hint: _Hint) -> str:
    spec = source.spec
    assert isinstance(spec, MariadbSource)
    prose = [
        "Into the MariaDB server named by `MARIADB_HOST`/`MARIADB_PORT`/`MARIADB_USER` (defaults: the "
        "original server). Its password: `MYSQL_PWD` or `~/.my.cnf`"
        + (f" (the original was `{spec.password.describe()}`)." if spec.password else "."),
        "The dumps hold no CREATE DATABASE, so each database is created first; row counts are then "
        "compared with the fingerprint.",
    ]
    client = 'mariadb --host="$MARIADB_HOST" --port="$MARIADB_PORT" --user="$MARIADB_USER"'
    cmds = [(f'export MARIADB_HOST="${{MARIADB_HOST:-{spec.host or "127.0.0.1"}}}" '
             f'MARIADB_PORT="${{MARIADB_PORT:-{spec.port}}}" MARIADB_USER="${{MARIADB_USER:-{spec.user}}}"'),
            _fingerprint(policy, source, hint)]
    for db in spec.database_names:
        ident = "`" + db.replace("`", "``") + "`"
        literal = "'" + db.replace("\\", "\\\\").replace("'", "\\'") + "'"
        statements = MARIADB_COUNT_STATEMENTS_SQL.format(db=literal)
        cmds += [
            f"{client} -e {_Q(f'CREATE DATABASE IF NOT EXISTS {ident}')}",
            _dump(policy, source, f"{db}.sql", hint, f"| {client} {_Q(db)}"),
            *_compare(source, db, f"{client} -N -B", statements, f"| {client} -N -B {_Q(db)} "),
        ]
    return _section(f"{number}. MariaDB source `{source.name}`", prose, cmds)


def _sqlite(number: int, policy: Policy, source: Source, hint: _Hint) -> str:
    spec = source.spec
    assert isinstance(spec, SqliteSource)
    stream = posixpath.basename(spec.path)
    dest = _under_root(spec.path)
    return _section(f"{number}. SQLite source `{source.name}`", [
        (f"The database file `{spec.path}`, written below `RESTORE_ROOT` "
         "(`RESTORE_ROOT=/` puts it back in place); its row counts are compared with the fingerprint."),
    ], [
        'export RESTORE_ROOT="${RESTORE_ROOT:-/restore-root}"',
        _fingerprint(policy, source, hint),
        f"mkdir -p {_under_root(posixpath.dirname(spec.path) or '/')}",
        # Via a temp file: an interrupted dump must not leave a truncated database in place.
        _dump(policy, source, stream, hint, f"> {dest}.part"),
        f"mv {dest}.part {dest}",
        *_compare(source, stream, f"sqlite3 {dest}", SQLITE_COUNT_STATEMENTS_SQL,
                  f"| sqlite3 -separator \"$(printf '\\t')\" {dest} "),
    ])


def _files(number: int, policy: Policy, source: Source, hint: _Hint) -> str:
    spec = source.spec
    assert isinstance(spec, FilesSource)
    tags = hint.tags(f"policy={policy.name}", f"source={source.name}")
    paths = ", ".join(f"`{p}`" for p in spec.paths)
    return _section(f"{number}. Files source `{source.name}`", [
        (f"{paths}, restored below `RESTORE_ROOT` with their full paths "
         "(`RESTORE_ROOT=/` puts them back in place); restic re-reads and checks every file's content."),
    ], [
        'export RESTORE_ROOT="${RESTORE_ROOT:-/restore-root}"',
        f'restic restore latest {hint.host_flag}--tag {tags} --target "$RESTORE_ROOT" --verify',
    ])


def _afterwards(policy: Policy) -> str:
    return "\n".join([
        "## Afterwards",
        "",
        f"- Compare what came back with the last drill report of `{policy.name}` (tables, row counts).",
        "- Delete `$RECOVERY_DIR`: it holds the decrypted kit, the dumps and the password file.",
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
    """Which snapshots every command selects: this host's, of the run in $RUN (chosen in step 4)."""

    run: str | None
    host: str | None

    def tags(self, *base: str) -> str:
        # `'policy=p,source=s',run="$RUN"`: the fixed part quoted, the run expanded by bash.
        return _Q(",".join(base)) + ',run="$RUN"'

    @property
    def host_flag(self) -> str:
        return f"--host {_Q(self.host)} " if self.host else ""


def _section(title: str, prose: list[str], commands: list[str]) -> str:
    return "\n".join([f"## {title}", "", *(p + "\n" for p in prose), "```sh", *commands, "```"])


def _json_list(names: list[str]) -> str:
    import json
    return json.dumps(names)


def _dump(policy: Policy, source: Source, stream: str, hint: _Hint, redirect: str) -> str:
    tags = hint.tags(f"policy={policy.name}", f"source={source.name}", f"stream={stream}")
    return f"restic dump {hint.host_flag}--tag {tags} latest {_Q('/' + stream)} {redirect}"


def _fingerprint(policy: Policy, source: Source, hint: _Hint) -> str:
    return _dump(policy, source, FINGERPRINT, hint, f"> {_work_file(source, FINGERPRINT)}")


def _compare(source: Source, db: str, client: str, sql: str, then: str = "") -> list[str]:
    """Expected counts from the fingerprint, actual ones from the database: `diff` shows any difference.

    `client` reads `sql` from a here-document (readable on paper); `then` runs the statements it
    prints, when the SQL generates the counting statements. One command a line: under `bash -e` a
    failure inside an `&&` list would not stop the script."""
    name = _Q(f"{source.name}-{db}")
    expected = f'"$RECOVERY_DIR"/{name}.expected'
    actual = f'"$RECOVERY_DIR"/{name}.restored'
    differ = _Q(f"row counts of {db} differ from the backup fingerprint (< backup, > restored)")
    return [
        f"jq -r --arg db {_Q(db)} {_Q(EXPECTED_JQ)} {_work_file(source, FINGERPRINT)} | LC_ALL=C sort > {expected}",
        f"{client} <<'SQL' {then}| LC_ALL=C sort > {actual}",
        sql,
        "SQL",
        f"diff {expected} {actual} || {{ echo {differ} >&2; exit 1; }}",
        f"echo {_Q(f'{db}: row counts equal the backup fingerprint')}",
    ]


def _work_file(source: Source, stream: str) -> str:
    # Per-source prefix: two PostgreSQL sources may both have a globals.sql.
    return '"$RECOVERY_DIR"/' + _Q(f"{source.name}-{stream}")


def _under_root(path: str) -> str:
    # "$RESTORE_ROOT"/var/lib/x.db: with RESTORE_ROOT=/ that is //var/lib/x.db, the same file.
    return '"$RESTORE_ROOT"' + _Q(path)
