"""Per-repository bandwidth limits: parsing, config errors, and restic's argv on every invocation."""

from __future__ import annotations

from pathlib import Path

import pytest

from drtool.config.loader import load_settings
from drtool.config.models import FilesSource
from drtool.config.rates import parse_rate
from drtool.engine.restic import RepoAccess, Restic, limit_args, repo_access
from drtool.errors import ConfigError
from drtool.secrets import Secret
from drtool.sources.remote_files import remote_backup_argv


@pytest.mark.parametrize("text, kib", [
    (512, 512), ("512", 512), ("512KiB/s", 512), ("2MiB/s", 2048), ("2 MiB/s", 2048), ("1GiB", 1048576),
    ("10MB/s", 9765), ("8Mbit/s", 976), ("1.5MiB/s", 1536), ("4096B/s", 4),
])
def test_parse_rate_forms(text: object, kib: int) -> None:
    assert parse_rate(text) == kib


@pytest.mark.parametrize("bad", [0, "0.5KiB/s", "fast", "10 parsecs", "-1", True, None, "MiB/s", "8mbps"])
def test_parse_rate_rejects(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_rate(bad)


def _config(tmp_path: Path, extra: str) -> Path:
    (tmp_path / "policies").mkdir()
    cfg = tmp_path / "drtool.yaml"
    cfg.write_text("state_dir: ./state\nrepositories:\n  offsite:\n    url: /srv/repo\n"
                   f"    password: {{env: PW}}\n{extra}")
    return cfg


def test_limits_from_config_reach_every_restic_argv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PW", "pw-for-unit-test")
    cfg = _config(tmp_path, "    limit_upload: 2MiB/s\n    limit_download: 800\n")
    settings = load_settings(str(cfg))
    access = repo_access(settings, "offsite")
    assert (access.limit_upload, access.limit_download) == (2048, 800)
    restic = Restic(access, cache_dir=Path("/c"))
    assert restic.argv(["snapshots", "--json"]) == [
        "restic", "--cache-dir", "/c", "--limit-upload", "2048", "--limit-download", "800", "snapshots", "--json"]
    assert restic.argv(["--no-lock", "dump", "abc", "/x"])[-4:] == ["--no-lock", "dump", "abc", "/x"]


def test_no_limits_leave_argv_unchanged_and_one_limit_alone() -> None:
    assert Restic(RepoAccess("/r", Secret("p"))).argv(["init"]) == ["restic", "init"]
    assert limit_args(RepoAccess("/r", Secret("p"), limit_download=64)) == ["--limit-download", "64"]


def test_remote_restic_gets_the_same_limits() -> None:
    argv = remote_backup_argv(FilesSource(paths=["/srv"]), cache_dir="/tmp/c", tags=["drtool"], host="h",
                              parent=None, limits=["--limit-upload", "100"])
    assert argv == ["restic", "--cache-dir", "/tmp/c", "--limit-upload", "100", "backup", "--json", "--host", "h",
                    "--tag", "drtool", "--", "/srv"]


def test_bad_limit_is_a_config_error_with_position(tmp_path: Path) -> None:
    cfg = _config(tmp_path, "    limit_upload: lots\n")
    with pytest.raises(ConfigError) as info:
        load_settings(str(cfg))
    text = str(info.value)
    assert "drtool.yaml:6:" in text and "repositories.offsite.limit_upload" in text and "lots" in text
