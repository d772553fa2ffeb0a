"""Immutable repositories, REST credentials, copies and the attack step in the configuration, and the
pure pieces that turn them into restic's environment."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from drtool.config import load_settings
from drtool.config.models import Playbook, Repository
from drtool.engine.restic import RepoAccess
from drtool.engine.restic_copy import source_env
from drtool.errors import ConfigError
from drtool.secrets import Secret
from drtool.storage.rest import authenticated_url

PW = {"env": "X"}


def test_immutable_s3_needs_a_lock_mode_and_days() -> None:
    repo = Repository.model_validate({"url": "s3:http://h/b/p", "password": PW,
                                      "immutable": {"mode": "governance", "days": 14}})
    assert repo.object_lock and not repo.append_only and repo.immutable.schedule == "daily 04:30"
    for bad in ({"mode": "compliance"}, {"mode": "append-only"}):
        with pytest.raises(ValidationError, match="needs mode: compliance or governance and days: N"):
            Repository.model_validate({"url": "s3:http://h/b/p", "password": PW, "immutable": bad})


def test_immutable_rest_is_append_only_and_other_backends_cannot_be_immutable() -> None:
    repo = Repository.model_validate({"url": "rest:http://127.0.0.1:8000/r", "password": PW,
                                      "rest": {"username": "u", "password": PW}, "immutable": {"mode": "append-only"}})
    assert repo.append_only and not repo.object_lock
    with pytest.raises(ValidationError, match="is append-only on the server"):
        Repository.model_validate({"url": "rest:http://h:1/r", "password": PW, "immutable": {"days": 3}})
    with pytest.raises(ValidationError, match="needs an s3: repository .Object Lock. or a rest: one"):
        Repository.model_validate({"url": "/srv/r", "password": PW, "immutable": {"mode": "append-only"}})
    with pytest.raises(ValidationError, match="rest: settings are for rest: repository URLs"):
        Repository.model_validate({"url": "/srv/r", "password": PW, "rest": {"username": "u"}})
    with pytest.raises(ValidationError, match="bad schedule|schedule"):
        Repository.model_validate({"url": "s3:http://h/b", "password": PW,
                                   "immutable": {"mode": "compliance", "days": 1, "schedule": "at teatime"}})


def test_a_rest_url_with_a_password_in_it_is_refused_without_showing_it() -> None:
    with pytest.raises(ValidationError) as info:
        Repository.model_validate({"url": "rest:http://u:hunter2-secret@h:1/r", "password": PW})
    assert "carries no user:password" in str(info.value)
    assert "hunter2-secret" not in str(info.value).replace("input_value='rest:http://u:hunter2-secret@h:1/r'", "")


def test_authenticated_url_percent_encodes_the_credentials() -> None:
    assert authenticated_url("rest:http://127.0.0.1:8000/siak", "si ak", Secret("p@ss/w:rd")) == \
        "rest:http://si%20ak:p%40ss%2Fw%3Ard@127.0.0.1:8000/siak"
    assert authenticated_url("rest:https://h/r", "u", None) == "rest:https://u@h/r"


def test_playbook_from_and_immutability_short_forms() -> None:
    pb = Playbook.model_validate({"name": "p", "policy": "siak", "from": "vault",
                                  "steps": [{"name": "a", "immutability": None}, {"name": "b", "immutability": True},
                                            {"name": "c", "immutability": {"repository": "offsite"}}]})
    assert pb.from_ == "vault" and [s.kind for s in pb.steps] == ["immutability"] * 3
    assert pb.steps[2].spec.repository == "offsite"


def _setup(tmp_path: Path, policy: str, playbook: str = "") -> Path:
    (tmp_path / "policies").mkdir()
    (tmp_path / "playbooks").mkdir()
    (tmp_path / "drtool.yaml").write_text(f"state_dir: {tmp_path / 'state'}\nrepositories:\n"
                                          "  offsite: {url: /srv/a, password: {env: X}}\n"
                                          "  other: {url: /srv/b, password: {env: X}}\n")
    (tmp_path / "policies" / "siak.yaml").write_text(f"name: siak\nrepository: offsite\n{policy}sources:\n"
                                                     "  - name: etc\n    files: {paths: [/etc/hostname]}\n")
    if playbook:
        (tmp_path / "playbooks" / "pb.yaml").write_text(f"name: pb\npolicy: siak\n{playbook}")
    return tmp_path / "drtool.yaml"


def test_copies_and_from_are_checked_against_the_configuration_with_positions(tmp_path: Path) -> None:
    path = _setup(tmp_path, "copies: [other, nowhere, offsite]\n",
                  "from: elsewhere\nsteps:\n  - name: attack\n    immutability: {repository: absent}\n")
    with pytest.raises(ConfigError) as info:
        load_settings(str(path))
    text = str(info.value)
    assert "siak.yaml:3:17: at 'copies[1]': no repository named 'nowhere'" in text
    assert "at 'copies[2]': 'offsite' is the policy's own repository" in text
    assert "pb.yaml:3:1: at 'from': 'elsewhere' is not a repository of policy 'siak'" in text
    assert "at 'steps[0].immutability.repository': 'absent' is not a repository of policy 'siak'" in text


def test_copy_source_env_direct_or_through_rclone() -> None:
    s3_a = RepoAccess("s3:http://127.0.0.1:9000/bucket-a/p", Secret("pw-a-1234"),
                      {"AWS_ACCESS_KEY_ID": "ka", "AWS_SECRET_ACCESS_KEY": "sa-secret", "AWS_DEFAULT_REGION": "eu"})
    s3_same = RepoAccess("s3:http://127.0.0.1:9000/b/p", Secret("pw-b-1234"), dict(s3_a.env))
    s3_other = RepoAccess("s3:http://127.0.0.1:9100/c/q", Secret("pw-c-1234"),
                          {"AWS_ACCESS_KEY_ID": "kc", "AWS_SECRET_ACCESS_KEY": "sc-secret"})
    rest = RepoAccess("rest:http://h:1/r", Secret("pw-r-1234"), {"RESTIC_REPOSITORY": "rest:http://u:x@h:1/r"})
    assert source_env(s3_a, s3_same) == ({"RESTIC_FROM_REPOSITORY": s3_a.url}, [])
    assert source_env(rest, s3_a) == ({"RESTIC_FROM_REPOSITORY": "rest:http://u:x@h:1/r"}, [])
    env, _ = source_env(s3_a, rest)           # only the source speaks S3: its keys, directly
    assert env["RESTIC_FROM_REPOSITORY"] == s3_a.url and env["AWS_ACCESS_KEY_ID"] == "ka"
    env, options = source_env(s3_a, s3_other)  # two providers' keys: the source through rclone
    assert env["RESTIC_FROM_REPOSITORY"] == "rclone:drtoolsrc:bucket-a/p"
    assert env["RCLONE_CONFIG_DRTOOLSRC_ENDPOINT"] == "http://127.0.0.1:9000"
    assert env["RCLONE_CONFIG_DRTOOLSRC_ACCESS_KEY_ID"] == "ka"
    assert env["RCLONE_CONFIG_DRTOOLSRC_REGION"] == "eu"
    assert options[0] == "-o" and options[1].startswith("rclone.program=")
    assert not any("secret" in o for o in options)          # keys only in the environment
