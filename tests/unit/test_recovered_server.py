"""Pure pieces of recovery: durable vs drill server settings, where a recovered server may live,
the unit that keeps it running, which S3 credentials win, and hints for missing tools."""

from __future__ import annotations

from pathlib import Path

import pytest

from drtool.actions.kit_open import ENV_CREDENTIALS, KIT_CREDENTIALS, s3_credentials
from drtool.actions.recovered_server import DEFAULT_DATA_ROOT, data_root
from drtool.crypto.kit import KitRepository, KitS3
from drtool.errors import UsageError
from drtool.scratch.mariadb import durable_cnf
from drtool.scratch.postgres import hba_conf, load_conf, server_conf
from drtool.scratch.service import postgres_unit
from drtool.secrets import Secret
from drtool.tools import ToolMissing, find_tool, require


def test_durable_postgres_conf_keeps_drill_tuning_out() -> None:
    durable = server_conf(5432, "/srv/pg", tuning=False)
    assert "fsync" not in durable and "full_page_writes" not in durable and "autovacuum" not in durable
    assert "listen_addresses = '127.0.0.1'" in durable and "port = 5432" in durable
    assert "fsync = off" in server_conf(5432, "/srv/pg")          # drills keep their speed
    assert "fsync = off" in load_conf() and "wal_level = minimal" in load_conf()
    assert "local all all peer" in hba_conf(True, durable=True) and "local all all trust" in hba_conf(True)


def test_durable_mariadb_conf_flushes_every_commit(tmp_path: Path) -> None:
    cnf = durable_cnf(tmp_path, 3307, as_root=True)
    assert "innodb-flush-log-at-trx-commit=1" in cnf and "innodb-doublewrite=1" in cnf
    assert "user=mysql" in cnf and "port=3307" in cnf and "bind-address=127.0.0.1" in cnf


def test_data_root_default_under_the_state_dir_and_never_in_tmpdir(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", None)
    assert data_root(None, "/var/lib/drtool") == Path("/var/lib/drtool/recovered")
    assert data_root(None, "relative/state") == DEFAULT_DATA_ROOT
    assert data_root(Path("/srv/db"), None) == Path("/srv/db")
    with pytest.raises(UsageError, match="tmp cleaner"):
        data_root(tmp_path / "db", None)
    with pytest.raises(UsageError, match="tmp cleaner"):
        data_root(None, str(tmp_path / "state"))


def test_postgres_unit_runs_the_server_as_its_user() -> None:
    unit = postgres_unit("recovered siak", "postgres", "/usr/lib/postgresql/15/bin", Path("/srv/siak/data"))
    assert "User=postgres" in unit and "Type=notify" in unit
    assert "ExecStart=/usr/lib/postgresql/15/bin/postgres -D /srv/siak/data" in unit
    assert "WantedBy=multi-user.target" in unit


def repo(**s3: object) -> KitRepository:
    return KitRepository(name="offsite", url="s3:http://127.0.0.1:9000/b/p", escrow_password=Secret("pw-12345678"),
                         escrow_key_id="abcd", s3=KitS3(endpoint="http://127.0.0.1:9000", bucket="b", **s3))


def test_s3_credentials_kit_then_configuration_references_then_aws_env(tmp_path: Path) -> None:
    env = {"AWS_ACCESS_KEY_ID": "env-id", "AWS_SECRET_ACCESS_KEY": "env-secret", "DR_KEY": "ref-id"}
    secret = tmp_path / "s3.secret"
    secret.write_text("ref-secret\n")
    secret.chmod(0o600)
    refs = {"access_key_ref": {"env": "DR_KEY"}, "secret_key_ref": {"file": str(secret)}}
    kit = s3_credentials(repo(access_key_id="kit-id", secret_access_key=Secret("kit-secret"), **refs), env)
    assert kit.source == KIT_CREDENTIALS and kit.env["AWS_ACCESS_KEY_ID"] == "kit-id"
    ref = s3_credentials(repo(**refs), env)
    assert ref.env == {"AWS_ACCESS_KEY_ID": "ref-id", "AWS_SECRET_ACCESS_KEY": "ref-secret"}
    assert ref.source == f"the configuration's references (env:DR_KEY and file:{secret})"
    unresolved = s3_credentials(repo(access_key_ref={"env": "NOT_SET"}, secret_key_ref={"env": "NOT_SET"}), env)
    assert unresolved.source == ENV_CREDENTIALS and "NOT_SET is not set" in unresolved.tried[0]
    assert s3_credentials(repo(), {}).source is None


def test_tools_outside_path_are_found_and_missing_ones_name_the_package(monkeypatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    assert find_tool("runuser") in ("/usr/sbin/runuser", "/sbin/runuser", "/usr/bin/runuser", "/bin/runuser")
    with pytest.raises(ToolMissing) as err:
        require("pg_ctl-that-does-not-exist")
    assert "apt-get install" in str(err.value)
    from drtool.tools import install_hint
    assert install_hint("runuser") == "install the Debian package util-linux (apt-get install util-linux)"
    assert "postgresql-client" in install_hint("pg_restore") and "age" in install_hint("age")
