"""Faults with a remote host (a real OpenSSH sshd on 127.0.0.1): its host key changed, and tar
restores onto it of archives that try to leave the target (the same guard as local restores,
whatever tar the host has)."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest

from tests.faults.conftest import (
    HOST,
    Site,
    assert_clean_backup_failure,
    assert_no_leak,
    next_run_succeeds,
)
from tests.support.tars import crafted_tar
from tests.support.sshd import SshServer, keygen, start_sshd

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    if not Path("/usr/sbin/sshd").exists():
        pytest.skip("openssh-server is not installed")
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


def remote_site(make_site, receiver, sshd: SshServer) -> Site:  # noqa: ANN001
    site = make_site(receiver)
    (site.data / "docs").mkdir()
    (site.data / "docs" / "akta.txt").write_text("akta kelahiran\n" * 100)
    known = sshd.write_known_hosts(site.root / "known_hosts")
    site.write_config(hosts={"db1": {"address": "127.0.0.1", "port": sshd.port, "key_file": str(sshd.client_key),
                                     "known_hosts": str(known), "connect_timeout": "5s", "files_mode": "tar"}})
    site.policy("records", [{"name": "docs", "files": {"paths": [str(site.data / "docs")]}}], host="db1")
    return site


def test_changed_ssh_host_key(make_site, receiver, sshd, tmp_path) -> None:  # noqa: ANN001
    site = remote_site(make_site, receiver, sshd)
    next_run_succeeds(site, "records", files_sources=["docs"])
    known = site.root / "known_hosts"
    good = known.read_text()
    other = keygen(tmp_path / "impostor")
    kind, blob = other.with_suffix(".pub").read_text().split()[:2]
    known.write_text(f"[127.0.0.1]:{sshd.port} {kind} {blob}\n")       # what we trusted is not what answers
    proc = site.drtool("backup", "records")
    run = assert_clean_backup_failure(site, proc, "records", r"host key of host db1 .*CHANGED")
    assert "sources" not in run["details"], "something ran on a host whose key changed"
    assert known.read_text() == f"[127.0.0.1]:{sshd.port} {kind} {blob}\n"   # never replaced silently
    known.write_text(good)                                             # the admin checked and re-trusted
    next_run_succeeds(site, "records", files_sources=["docs"])
    assert_no_leak(site)




def _restore_onto_host(site: Site, dest: Path, force: bool, monkeypatch) -> None:  # noqa: ANN001
    """What a drill or recover does for a files set and a host target (drtool.actions.restore)."""
    from drtool.actions.common import open_repo
    from drtool.actions.restore import find_set, restore_files_to
    from drtool.config import load_settings
    from drtool.remote import runner_for

    for key, value in site.env.items():
        monkeypatch.setenv(key, value)
    settings = load_settings(str(site.config_path))
    policy = settings.policy("records")
    handle = open_repo(settings, policy.repository)
    chosen = find_set(handle, policy, policy.source("docs"), "latest", host=HOST)
    runner = runner_for(settings, "db1")
    try:
        restore_files_to(handle.restic, chosen, str(dest), runner, force=force)
    finally:
        runner.close()


def test_tar_restore_onto_a_host_stops_at_a_member_outside(make_site, receiver, sshd, tmp_path,  # noqa: ANN001
                                                           monkeypatch) -> None:
    from drtool.errors import SourceError

    site = remote_site(make_site, receiver, sshd)
    assert site.drtool("init-repo", "offsite").returncode == 0
    outside = tmp_path / "outside"
    outside.mkdir()
    for n, member in enumerate(["../escape.txt", "/escape.txt", "srv/link/escape.txt"]):
        data = crafted_tar([("srv", "dir", ""), ("srv/ok.txt", "file", b"ok\n"), ("srv/link", "symlink", str(outside)),
                            (member, "file", b"escaped\n")], tarfile.GNU_FORMAT)
        site.restic("backup", "--host", HOST, "--tag", f"drtool,policy=records,source=docs,run=20991231T00000{n}Z-x,"
                    "stream=docs.tar", "--stdin", "--stdin-filename", "docs.tar", input=data)
        dest = tmp_path / f"on-host{n}" / "restore"
        with pytest.raises(SourceError, match=r"stopped: archive member .* it was not written"):
            _restore_onto_host(site, dest, False, monkeypatch)
        assert list(outside.iterdir()) == [] and not (dest.parent / "escape.txt").exists()
        assert not dest.exists() or not any(p.name == "escape.txt" for p in dest.rglob("*"))


def test_force_restore_onto_a_host_through_its_symlink(make_site, receiver, sshd, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    from drtool.errors import RestoreRefused

    site = remote_site(make_site, receiver, sshd)
    assert site.drtool("init-repo", "offsite").returncode == 0
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "on-host"
    (dest / "srv").mkdir(parents=True)
    os.symlink(outside, dest / "srv" / "link_out")                 # an earlier restore left it there
    site.restic("backup", "--host", HOST, "--tag", "drtool,policy=records,source=docs,run=20991231T000000Z-y,"
                "stream=docs.tar", "--stdin", "--stdin-filename", "docs.tar",
                input=crafted_tar([("srv", "dir", ""), ("srv/link_out", "dir", ""), ("srv/link_out/PWNED", "file", b"x")],
                                  tarfile.GNU_FORMAT))
    with pytest.raises(RestoreRefused) as refused:
        _restore_onto_host(site, dest, True, monkeypatch)
    assert "on host db1" in refused.value.message and "srv/link_out/PWNED (through srv/link_out -> " in \
        refused.value.message and "nothing was written" in refused.value.message
    assert list(outside.iterdir()) == []

