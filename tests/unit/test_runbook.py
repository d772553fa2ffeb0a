"""The generated recovery runbook: exact commands, in order, no secrets, valid bash."""

from __future__ import annotations

import json
import os
import re
import shlex
import stat
import subprocess

import pytest

from drtool.actions.runbook import extract_script, render_runbook
from drtool.config.models import Policy, Repository

SECRET_VALUES = {"DR_PW": "repo-password-s3cr3t", "AK": "AKIA-not-for-paper", "PGPW": "pg-password-s3cr3t"}


def s3_repo() -> Repository:
    return Repository.model_validate({
        "url": "s3:http://127.0.0.1:9000/dr/prod", "password": {"env": "DR_PW"},
        "s3": {"access_key_id": {"env": "AK"}, "secret_access_key": {"command": ["/bin/false", "--never-run"]},
               "region": "eu-west-1"}})


def local_repo() -> Repository:
    return Repository.model_validate({"url": "/srv/restic/prod", "password": {"file": "/etc/drtool/pw"}})


def policy(*sources: dict) -> Policy:
    return Policy.model_validate({"name": "siak", "repository": "offsite", "sources": list(sources)})


PG = {"name": "db", "postgres": {"databases": ["siak", "arsip"], "password": {"env": "PGPW"}}}
MARIA = {"name": "shop", "mariadb": {"database": "toko", "port": 3307}}
SQLITE = {"name": "app", "sqlite": {"path": "/var/lib/app/app.sqlite"}}
FILES = {"name": "docs", "files": {"paths": ["/srv/docs", "/etc/app"]}}
ALL = policy(PG, MARIA, SQLITE, FILES)

HOST = "records-01"


def command_lines(text: str) -> list[str]:
    return [line for line in extract_script(text).splitlines()[1:] if line.strip()]


def index_of(lines: list[str], prefix: str) -> int:
    matches = [i for i, line in enumerate(lines) if line.startswith(prefix)]
    assert len(matches) == 1, f"expected one line starting with {prefix!r}, got {len(matches)}"
    return matches[0]


def test_postgres_commands_exact_and_in_order() -> None:
    lines = command_lines(render_runbook(ALL, s3_repo(), host=HOST))
    order = [
        "KIT=",
        "export RESTIC_REPOSITORY=\"$(jq -r --arg r offsite ",
        "export RESTIC_KEY_HINT=",
        "restic snapshots --host records-01 --tag policy=siak --json",
        "restic snapshots --host records-01 --tag policy=siak,run=\"$RUN\"",
        "restic dump --host records-01 --tag policy=siak,source=db,stream=fingerprint.json,run=\"$RUN\" latest /fingerprint.json",
        "restic dump --host records-01 --tag policy=siak,source=db,stream=globals.sql,run=\"$RUN\" latest /globals.sql > \"$RECOVERY_DIR\"/db-globals.sql",
        "grep -vE ",
        "restic dump --host records-01 --tag policy=siak,source=db,stream=siak.pgdump,run=\"$RUN\" latest /siak.pgdump > \"$RECOVERY_DIR\"/db-siak.pgdump",
        "createdb siak",
        "pg_restore --exit-on-error --no-tablespaces -j 4 -d siak \"$RECOVERY_DIR\"/db-siak.pgdump",
        "jq -r --arg db siak ",
        "psql -X -q -A -t -v ON_ERROR_STOP=1 -F \"$(printf '\\t')\" -d siak <<'SQL'",
        "diff \"$RECOVERY_DIR\"/db-siak.expected \"$RECOVERY_DIR\"/db-siak.restored || ",
        "restic dump --host records-01 --tag policy=siak,source=db,stream=arsip.pgdump,run=\"$RUN\" latest /arsip.pgdump",
        "createdb arsip",
        "pg_restore --exit-on-error --no-tablespaces -j 4 -d arsip",
    ]
    positions = [index_of(lines, prefix) for prefix in order]
    assert positions == sorted(positions)
    assert lines[index_of(lines, "grep -vE ")].endswith("| psql -X -q -d postgres")


def test_mariadb_creates_database_then_pipes_dump() -> None:
    lines = command_lines(render_runbook(ALL, s3_repo(), host=HOST))
    create = index_of(lines, 'mariadb --host="$MARIADB_HOST" --port="$MARIADB_PORT" --user="$MARIADB_USER" -e \'CREATE')
    assert shlex.split(lines[create])[-1] == "CREATE DATABASE IF NOT EXISTS `toko`"
    pipe = index_of(lines, "restic dump --host records-01 --tag policy=siak,source=shop,stream=toko.sql,run=\"$RUN\" latest /toko.sql | mariadb ")
    assert create < pipe and lines[pipe].endswith(" toko")
    assert 'MARIADB_PORT="${MARIADB_PORT:-3307}"' in lines[create - 2]
    assert index_of(lines, "diff \"$RECOVERY_DIR\"/shop-toko.expected") > pipe


def test_sqlite_and_files_commands() -> None:
    lines = command_lines(render_runbook(ALL, s3_repo(), host=HOST))
    dump = ('restic dump --host records-01 --tag policy=siak,source=app,stream=app.sqlite,run="$RUN" latest /app.sqlite > '
            '"$RESTORE_ROOT"/var/lib/app/app.sqlite.part')
    move = 'mv "$RESTORE_ROOT"/var/lib/app/app.sqlite.part "$RESTORE_ROOT"/var/lib/app/app.sqlite'
    assert lines.index(move) == lines.index(dump) + 1       # own line: `bash -e` stops on a failed dump
    assert 'mkdir -p "$RESTORE_ROOT"/var/lib/app' in lines
    assert ('restic restore latest --host records-01 --tag policy=siak,source=docs,run="$RUN" '
            '--target "$RESTORE_ROOT" --verify') in lines


def test_sections_follow_the_policy_source_order() -> None:
    text = render_runbook(ALL, s3_repo(), host=HOST)
    titles = re.findall(r"^## (\d+)\. (.*)$", text, flags=re.MULTILINE)
    assert titles[0][1] == "Open the kit with `age -d`" and titles[1][1] == "Install the other tools"
    assert [t[1] for t in titles[4:]] == ["PostgreSQL source `db`", "MariaDB source `shop`",
                                          "SQLite source `app`", "Files source `docs`"]
    assert [int(t[0]) for t in titles] == list(range(1, 9))


def test_no_secret_value_is_in_the_runbook(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in SECRET_VALUES.items():
        monkeypatch.setenv(name, value)
    text = render_runbook(ALL, s3_repo(), host=HOST)       # the command ref would fail if it were resolved
    for value in SECRET_VALUES.values():
        assert value not in text
    # ...but it says where each secret comes from.
    for ref in ("env:DR_PW", "env:AK", "command:/bin/false", "env:PGPW"):
        assert f"`{ref}`" in text
    assert "--never-run" not in text


def test_every_restore_reads_the_one_chosen_run_and_a_hint_presets_it() -> None:
    run = "20240101T000000Z-backup-abc123"
    lines = command_lines(render_runbook(ALL, s3_repo(), host=HOST, snapshot_hint=run))
    assert f'RUN="${{RUN:-{run}}}"' in lines
    reads = [line for line in lines if line.startswith(("restic dump", "restic restore"))]
    assert len(reads) == 9          # 3 fingerprints, globals, 2 pgdumps, 1 sql, 1 sqlite, 1 files
    for line in reads:
        argv = shlex.split(line.split(" > ")[0].split(" | ")[0])
        assert argv[argv.index("--tag") + 1].endswith(",run=$RUN") and "latest" in argv
    chosen = index_of(lines, "grep -qxF -- \"$RUN\"")
    assert all(lines.index(line) > chosen for line in reads)


@pytest.mark.parametrize("hint", ["a b", "x;rm -rf /", "", "-tag"])
def test_snapshot_hint_that_is_not_a_run_id_is_refused(hint: str) -> None:
    with pytest.raises(ValueError, match="run id"):
        render_runbook(ALL, s3_repo(), host=HOST, snapshot_hint=hint)


def test_awkward_names_are_quoted_for_the_shell() -> None:
    pol = policy({"name": "db", "postgres": {"database": "it's a db"}},
                 {"name": "shop", "mariadb": {"database": "we`ird"}},
                 {"name": "app", "sqlite": {"path": "/var/lib/my app/x y.db"}})
    lines = command_lines(render_runbook(pol, local_repo(), host=HOST))
    assert shlex.split(lines[index_of(lines, "createdb ")]) == ["createdb", "it's a db"]
    create = shlex.split(lines[index_of(lines, "mariadb --host=\"$MARIADB_HOST\" --port=\"$MARIADB_PORT\" --user=\"$MARIADB_USER\" -e")])
    assert create[-1] == "CREATE DATABASE IF NOT EXISTS `we``ird`"
    dump = shlex.split(lines[index_of(lines, "restic dump --host records-01 --tag 'policy=siak,source=app,stream=x y.db'")])
    assert dump[5:8] == ["policy=siak,source=app,stream=x y.db,run=$RUN", "latest", "/x y.db"]


def test_script_is_valid_bash() -> None:
    pol = policy({"name": "db", "postgres": {"database": "it's"}}, MARIA, SQLITE, FILES)
    for repo in (s3_repo(), local_repo()):
        proc = subprocess.run(["bash", "-n"], input=extract_script(render_runbook(pol, repo, host=HOST)).encode(),
                              capture_output=True, timeout=10, check=False)
        assert proc.returncode == 0, proc.stderr.decode()


def test_only_the_needed_tools_are_installed() -> None:
    text = render_runbook(policy(FILES), local_repo(), host=HOST)
    assert "apt-get install -y restic" in text
    assert "postgresql-client" not in text and "mariadb-client" not in text
    assert "AWS_" not in text                   # a local repository needs no S3 credentials


def _block(text: str, n: int) -> str:
    return re.findall(r"^```sh\n(.*?)^```$", text, flags=re.MULTILINE | re.DOTALL)[n]


def _kit_json(tmp_path, *, with_s3_keys: bool) -> None:
    s3 = {"endpoint": "http://127.0.0.1:9000", "bucket": "dr", "region": "eu-west-1",
          "access_key_id": "kit-key" if with_s3_keys else None,
          "secret_access_key": "kit-secret" if with_s3_keys else None}
    kit = {"repositories": [{"name": "other", "url": "/elsewhere", "escrow_password": "no", "escrow_key_id": "0"},
                            {"name": "offsite", "url": "s3:http://127.0.0.1:9000/dr/prod",
                             "escrow_password": "escrow-pw-1", "escrow_key_id": "abcd1234", "s3": s3}]}
    work = tmp_path / "drtool-recovery"
    work.mkdir(mode=0o700)
    (work / "kit.json").write_text(json.dumps(kit))


def test_kit_block_opens_the_kit_with_age_into_owner_only_files(tmp_path) -> None:
    import pyrage

    from drtool.crypto.kit import armor
    identity = pyrage.x25519.Identity.generate()
    (tmp_path / "id").write_text(str(identity) + "\n")
    text = render_runbook(policy(FILES), s3_repo(), host=HOST)
    for name, data in (("kit.age", pyrage.encrypt(b'{"repositories": []}', [identity.to_public()])),
                       ("kit.txt", armor(pyrage.encrypt(b'{"repositories": [1]}', [identity.to_public()])).encode())):
        (tmp_path / name).write_bytes(data)
        env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "KIT": str(tmp_path / name),
               "AGE_IDENTITY": str(tmp_path / "id"), "RECOVERY_DIR": str(tmp_path / f"w-{name}")}
        proc = subprocess.run(["bash", "-euc", _block(text, 0)], stdin=subprocess.DEVNULL, env=env,
                              capture_output=True, timeout=30, check=False)
        assert proc.returncode == 0, proc.stderr.decode()
        opened = tmp_path / f"w-{name}" / "kit.json"
        assert json.loads(opened.read_text())["repositories"] in ([], [1])
        assert stat.S_IMODE(opened.stat().st_mode) == 0o600
        assert stat.S_IMODE(opened.parent.stat().st_mode) == 0o700


def test_repository_block_takes_the_escrow_key_and_kit_credentials_first(tmp_path) -> None:
    block = _block(render_runbook(policy(FILES), s3_repo(), host=HOST), 2)
    show = '\necho "$RESTIC_REPOSITORY|$RESTIC_KEY_HINT|$AWS_ACCESS_KEY_ID|$AWS_DEFAULT_REGION"'
    for with_keys, expected_key in ((True, "kit-key"), (False, "env-key")):
        home = tmp_path / str(with_keys)
        home.mkdir()
        _kit_json(home, with_s3_keys=with_keys)
        env = {"PATH": os.environ["PATH"], "HOME": str(home), "AWS_ACCESS_KEY_ID": "env-key",
               "AWS_SECRET_ACCESS_KEY": "env-secret", "RECOVERY_DIR": str(home / "drtool-recovery")}
        proc = subprocess.run(["bash", "-euc", block + show], stdin=subprocess.DEVNULL, env=env,
                              capture_output=True, timeout=10, check=False)
        assert proc.returncode == 0, proc.stderr.decode()
        assert proc.stdout.decode().strip() == f"s3:http://127.0.0.1:9000/dr/prod|abcd1234|{expected_key}|eu-west-1"
        pw = home / "drtool-recovery" / "restic-password"
        assert pw.read_text() == "escrow-pw-1\n" and stat.S_IMODE(pw.stat().st_mode) == 0o600
        assert b"escrow-pw-1" not in proc.stdout + proc.stderr


def test_every_restic_read_selects_the_policy_host_only() -> None:
    # Two hosts may share a repository and a policy name: `latest` must be this host's.
    lines = command_lines(render_runbook(ALL, s3_repo(), host="host-a"))
    reads = [line for line in lines if line.startswith(("restic dump", "restic restore", "restic snapshots"))]
    assert len(reads) == 11
    for line in reads:
        argv = shlex.split(line.split(" > ")[0].split(" | ")[0])
        assert argv[argv.index("--host") + 1] == "host-a"


@pytest.mark.parametrize("host", ["a b", "x;rm", "-h", ""])
def test_host_that_is_not_a_host_name_is_refused(host: str) -> None:
    with pytest.raises(ValueError, match="host name"):
        render_runbook(ALL, s3_repo(), host=host)
