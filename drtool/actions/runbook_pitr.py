"""The runbook's point-in-time section: a physical base backup + WAL recovery with restic and
PostgreSQL's own tools only (no drtool), for each PostgreSQL source with `pitr:`.

What it does, as drtool does it (drtool/actions/pitr.py), but with plain files:
1. pick the newest complete base backup set (its fingerprint.json exists) whose fingerprint
   was written before PITR_TARGET (empty: the latest moment); the fingerprint gives the
   major version, system identifier and WAL segment size;
2. `restic dump ... /base.tar | tar -x` into a new data directory, as the postgres user;
3. `restic restore` every WAL batch of that cluster (tags `wal=SOURCE`, `sysid=...`), oldest
   first, into one archive directory; of the segment that was still being written only the
   newest copy counts: padded with zeros to the segment size, it becomes the segment;
4. recovery settings in postgresql.auto.conf (read last: they win), `restore_command` a
   plain `cp` from the archive directory, recovery.signal;
5. `pg_ctl start -w`: with hot_standby off it returns once recovery ended and the server
   promoted (a target beyond the WAL's last commit fails here: PostgreSQL says so in the log;
   rerun without PITR_TARGET, the end of the WAL is that same state);
6. the server answers, out of recovery; the newest replayed commit is printed.
"""

from __future__ import annotations

import shlex

from drtool.config.models import Policy, Source

_Q = shlex.quote


def pitr_sections(policy: Policy, host: str | None, *, start: int) -> list[str]:
    sources = [s for s in policy.sources if s.kind == "postgres" and s.spec.pitr is not None]  # type: ignore[union-attr]
    return [_section(number, policy, source, host) for number, source in enumerate(sources, start=start)]


def _section(number: int, policy: Policy, source: Source, host: str | None) -> str:
    hf = f"--host {_Q(host)} " if host else ""
    tags = lambda *t: _Q(",".join([f"policy={policy.name}", *t]))  # noqa: E731
    prose = [
        f"Instead of sections 4 to {number - 1} when `{source.name}` must come back to a moment after its last "
        "snapshot set: the newest base backup before `PITR_TARGET` (empty: the latest moment the WAL holds), "
        "replayed with the WAL batches up to it. Run sections 1-3, then this one. `PITR_DIR`: the new data "
        "directory (new or empty; its parent must be enterable by the postgres user).",
    ]
    commands = [*_choose_base(source, hf, tags), *_restore_files(source, hf, tags), *_replay()]
    return "\n".join([f"## {number}. Point-in-time recovery of PostgreSQL source `{source.name}` (base backup + WAL)",
                      "", *(p + "\n" for p in prose), "```sh pitr", *commands, "```"])


def _choose_base(source: Source, hf: str, tags) -> list[str]:  # noqa: ANN001
    """The newest complete base backup whose fingerprint (written after it) predates the target."""
    stream = lambda name: tags(f"source={source.name}", f"stream={name}")  # noqa: E731
    return [
        f'PITR_DIR="${{PITR_DIR:-/var/lib/postgresql/drtool-pitr-{source.name}}}" PITR_TARGET="${{PITR_TARGET:-}}" '
        'PITR_PORT="${PITR_PORT:-5432}"',
        f'W="$RECOVERY_DIR"/pitr-{_Q(source.name)}; install -d -m 700 "$W"',
        f"restic snapshots {hf}--tag {stream('fingerprint.json')} --json > \"$W\"/fingerprints.json",
        f"restic snapshots {hf}--tag {stream('base.tar')} --json > \"$W\"/bases.json",
        'BASE_RUN=""',
        "for run in $(jq -r '.[].tags[] | select(startswith(\"run=\")) | ltrimstr(\"run=\")' \"$W\"/bases.json); do",
        "  done_at=$(jq -r --arg r \"run=$run\" '.[] | select(.tags | index($r)) | .time' \"$W\"/fingerprints.json)",
        '  [ -n "$done_at" ] || continue                              # no fingerprint.json: not complete',
        '  if [ -z "$PITR_TARGET" ] || [ "$(date -d "$done_at" +%s)" -le "$(date -d "$PITR_TARGET" +%s)" ]; then',
        '    BASE_RUN="$run"',
        "  fi",
        "done",
        '[ -n "$BASE_RUN" ] || { echo "no complete base backup before ${PITR_TARGET:-now}" >&2; exit 1; }',
        'echo "base backup of run $BASE_RUN"',
        f"restic dump {hf}--tag {stream('fingerprint.json')},run=\"$BASE_RUN\" latest /fingerprint.json "
        '> "$W"/fingerprint.json',
        "MAJOR=$(jq -r .pitr.major \"$W\"/fingerprint.json) SYSID=$(jq -r .pitr.sysid \"$W\"/fingerprint.json) "
        "SEGSIZE=$(jq -r .pitr.segsize \"$W\"/fingerprint.json)",
        'PG_BIN="${PG_BIN:-/usr/lib/postgresql/$MAJOR/bin}"',
        '[ -x "$PG_BIN/pg_ctl" ] || apt-get install -y "postgresql-$MAJOR"',
    ]


def _restore_files(source: Source, hf: str, tags) -> list[str]:  # noqa: ANN001
    """base.tar into the new data directory; every WAL batch of the cluster into one directory."""
    return [
        '[ ! -e "$PITR_DIR" ] || [ -z "$(ls -A "$PITR_DIR")" ] || { echo "$PITR_DIR is not empty" >&2; exit 1; }',
        'install -d -m 700 -o postgres -g postgres "$PITR_DIR" "$PITR_DIR.wal" "$PITR_DIR.sock"',
        f"restic dump {hf}--tag {tags(f'source={source.name}', 'stream=base.tar')},run=\"$BASE_RUN\" latest "
        '/base.tar | runuser -u postgres -- tar -x -f - -C "$PITR_DIR"',
        f"restic snapshots {hf}--tag {tags(f'wal={source.name}')},sysid=\"$SYSID\" --json | jq -r '.[].id' "
        '> "$W"/batches',
        'while read -r id; do restic restore "$id" --target "$PITR_DIR.wal" >/dev/null; done < "$W"/batches',
        'rm -f "$PITR_DIR.wal"/manifest.json',
        'for part in "$PITR_DIR.wal"/*.partial; do                 # only the newest copy of a segment counts',
        '  [ -e "$part" ] || continue',
        '  seg="${part%.partial}"',
        '  if [ -e "$seg" ]; then rm -f "$part"; else truncate -s "$SEGSIZE" "$part"; mv "$part" "$seg"; fi',
        "done",
        'chown -R postgres:postgres "$PITR_DIR.wal"',
    ]


def _replay() -> list[str]:
    """Recovery settings (read last: they win), replay, promote, check."""
    return [
        'cat >> "$PITR_DIR"/postgresql.auto.conf <<EOF',
        "# recovery (runbook): loopback only, no archiving, WAL from the restored batches",
        "listen_addresses = '127.0.0.1'",
        "port = $PITR_PORT",
        "unix_socket_directories = '$PITR_DIR.sock'",
        "archive_mode = off",
        "hot_standby = off",
        "restore_command = 'cp \"$PITR_DIR.wal/%f\" \"%p\"'",
        "recovery_target_timeline = 'latest'",
        "recovery_target_action = 'promote'",
        "EOF",
        '[ -z "$PITR_TARGET" ] || echo "recovery_target_time = \'$PITR_TARGET\'" >> "$PITR_DIR"/postgresql.auto.conf',
        'runuser -u postgres -- touch "$PITR_DIR"/recovery.signal',
        'if grep -nE "^[[:space:]]*(data_directory|hba_file|ident_file|include|archive_command)" '
        '"$PITR_DIR"/postgresql.conf; then echo "note: the settings above point at the old server: check them"; fi',
        'install -m 600 -o postgres -g postgres /dev/null "$PITR_DIR.log"',
        '(cd / && runuser -u postgres -- "$PG_BIN"/pg_ctl -D "$PITR_DIR" -l "$PITR_DIR.log" -w -t 86400 start)',
        'cd /; PSQL=(runuser -u postgres -- "$PG_BIN"/psql -X -A -t -h "$PITR_DIR.sock" -p "$PITR_PORT" -d postgres)',
        # With hot_standby off, `pg_ctl -w` returns as soon as replay begins, and nobody can
        # connect until the server promoted: it removes recovery.signal then.
        'echo "replaying WAL until the server promotes (progress: $PITR_DIR.log)"',
        'while [ -e "$PITR_DIR"/recovery.signal ]; do',
        '  runuser -u postgres -- "$PG_BIN"/pg_ctl -D "$PITR_DIR" status >/dev/null '
        '|| { echo "the server stopped during recovery: see $PITR_DIR.log" >&2; exit 1; }',
        "  sleep 1",
        "done",
        'for _ in $(seq 60); do "${PSQL[@]}" -c "SELECT 1" >/dev/null 2>&1 && break; sleep 1; done',
        '[ "$("${PSQL[@]}" -c "SELECT pg_is_in_recovery()")" = f ] || { echo "still in recovery" >&2; exit 1; }',
        'echo "recovered; newest replayed commit: $("${PSQL[@]}" -c "SELECT pg_last_xact_replay_timestamp()")"',
    ]
