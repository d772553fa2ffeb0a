"""The generated recovery runbook: exact commands, in order, no secrets, valid bash."""

from __future__ import annotations

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
        "export RESTIC_REPOSITORY=s3:http://127.0.0.1:9000/dr/prod",
        "restic snapshots --host records-01 --tag policy=siak",
        "restic dump --host records-01 --tag policy=siak,source=db,stream=globals.sql latest /globals.sql > \"$RECOVERY_DIR\"/db-globals.sql",
        "grep -vE ",
        "restic dump --host records-01 --tag policy=siak,source=db,stream=siak.pgdump latest /siak.pgdump > \"$RECOVERY_DIR\"/db-siak.pgdump",
        "createdb siak",
        "pg_restore --exit-on-error --no-tablespaces -j 4 -d siak \"$RECOVERY_DIR\"/db-siak.pgdump",
        "restic dump --host records-01 --tag policy=siak,source=db,stream=arsip.pgdump latest /arsip.pgdump",
        "createdb arsip",
        "pg_restore --exit-on-error --no-tablespaces -j 4 -d arsip",
    ]
    positions = [index_of(lines, prefix) for prefix in order]
    assert positions == sorted(positions)
    assert lines[index_of(lines, "grep -vE ")].endswith("| psql -X -q -d postgres")


def test_mariadb_creates_database_then_pipes_dump() -> None:
    lines = command_lines(render_runbook(ALL, s3_repo(), host=HOST))
    create = index_of(lines, 'mariadb --host="$MARIADB_HOST" --port="$MARIADB_PORT" --user="$MARIADB_USER" -e')
    assert shlex.split(lines[create])[-1] == "CREATE DATABASE IF NOT EXISTS `toko`"
    pipe = index_of(lines, "restic dump --host records-01 --tag policy=siak,source=shop,stream=toko.sql latest /toko.sql | mariadb ")
    assert create < pipe and lines[pipe].endswith(" toko")
    assert 'MARIADB_PORT="${MARIADB_PORT:-3307}"' in lines[create - 1]


def test_sqlite_and_files_commands() -> None:
    lines = command_lines(render_runbook(ALL, s3_repo(), host=HOST))
    assert ('restic dump --host records-01 --tag policy=siak,source=app,stream=app.sqlite latest /app.sqlite > '
            '"$RESTORE_ROOT"/var/lib/app/app.sqlite.part && mv "$RESTORE_ROOT"/var/lib/app/app.sqlite.part '
            '"$RESTORE_ROOT"/var/lib/app/app.sqlite') in lines
    assert 'mkdir -p "$RESTORE_ROOT"/var/lib/app' in lines
    assert 'restic restore latest --host records-01 --tag policy=siak,source=docs --target "$RESTORE_ROOT"' in lines


def test_sections_follow_the_policy_source_order() -> None:
    text = render_runbook(ALL, s3_repo(), host=HOST)
    titles = re.findall(r"^## (\d+)\. (.*)$", text, flags=re.MULTILINE)
    assert [t[1] for t in titles[3:]] == ["PostgreSQL source `db`", "MariaDB source `shop`",
                                          "SQLite source `app`", "Files source `docs`"]
    assert [int(t[0]) for t in titles] == list(range(1, 8))


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


def test_snapshot_hint_pins_every_restic_read_to_that_run() -> None:
    run = "20240101T000000Z-backup-abc123"
    lines = command_lines(render_runbook(ALL, s3_repo(), host=HOST, snapshot_hint=run))
    reads = [line for line in lines if line.startswith(("restic dump", "restic restore", "restic snapshots"))]
    assert len(reads) == 7
    for line in reads:
        argv = shlex.split(line.split(" > ")[0].split(" | ")[0])
        assert argv[argv.index("--tag") + 1].endswith(f",run={run}")


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
    create = shlex.split(lines[index_of(lines, "mariadb --host")])
    assert create[-1] == "CREATE DATABASE IF NOT EXISTS `we``ird`"
    dump = shlex.split(lines[index_of(lines, "restic dump --host records-01 --tag 'policy=siak,source=app")])
    assert dump[5:8] == ["policy=siak,source=app,stream=x y.db", "latest", "/x y.db"]


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


def _repository_block(text: str) -> str:
    blocks = re.findall(r"^```sh\n(.*?)^```$", text, flags=re.MULTILINE | re.DOTALL)
    return blocks[1]


def test_password_prompt_writes_an_owner_only_file(tmp_path) -> None:
    # Runs the runbook's own repository block in bash, typing the password on stdin.
    block = _repository_block(render_runbook(policy(FILES), local_repo(), host=HOST))
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    proc = subprocess.run(["bash", "-euc", block + '\necho "$RESTIC_REPOSITORY|$RESTIC_PASSWORD_FILE"'],
                          input=b"typed-password-1\n", env=env, capture_output=True, timeout=10, check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    pw_file = tmp_path / "drtool-recovery" / "restic-password"
    assert proc.stdout.decode().strip() == f"/srv/restic/prod|{pw_file}"
    assert pw_file.read_text() == "typed-password-1\n"
    assert stat.S_IMODE(pw_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(pw_file.parent.stat().st_mode) == 0o700
    assert b"typed-password-1" not in proc.stdout + proc.stderr


def test_preset_variables_skip_the_prompts(tmp_path) -> None:
    block = _repository_block(render_runbook(policy(FILES), s3_repo(), host=HOST))
    (tmp_path / "pw").write_text("x\n")
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "RESTIC_PASSWORD_FILE": str(tmp_path / "pw"),
           "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}
    proc = subprocess.run(["bash", "-euc", block + '\necho "$AWS_ACCESS_KEY_ID $AWS_DEFAULT_REGION"'],
                          stdin=subprocess.DEVNULL, env=env, capture_output=True, timeout=10, check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().strip() == "k eu-west-1"
    assert (tmp_path / "pw").read_text() == "x\n"


def test_every_restic_read_selects_the_policy_host_only() -> None:
    # Two hosts may share a repository and a policy name: `latest` must be this host's.
    lines = command_lines(render_runbook(ALL, s3_repo(), host="host-a"))
    reads = [line for line in lines if line.startswith(("restic dump", "restic restore", "restic snapshots"))]
    assert len(reads) == 7
    for line in reads:
        argv = shlex.split(line.split(" > ")[0].split(" | ")[0])
        assert argv[argv.index("--host") + 1] == "host-a"


@pytest.mark.parametrize("host", ["a b", "x;rm", "-h", ""])
def test_host_that_is_not_a_host_name_is_refused(host: str) -> None:
    with pytest.raises(ValueError, match="host name"):
        render_runbook(ALL, s3_repo(), host=host)
