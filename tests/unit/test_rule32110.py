"""3-2-1-1-0 (pure): each letter, why it falls short and what to do; attack drills as the proof."""

from __future__ import annotations

import pytest

from drtool.rule32110 import RepoFacts, assess, last_attacks, last_verified_drill, provider_of

CHECK_OK = {"status": "success", "started_at": "2026-12-01T03:00:00+00:00"}
DRILL_OK = {"passed": True, "started_at": "2026-12-01T04:00:00+00:00"}
ATTACK_OK = {"passed": True, "at": "2026-12-01T04:00:00+00:00", "drill": "d1", "through": []}


def repo(name: str, url: str, *, holds: bool = True, attack: dict | None = None, configured: str | None = None,
         provider: str | None = None) -> RepoFacts:
    where, offsite = provider_of(url, provider)
    return RepoFacts(name, url, where, offsite, holds, "complete" if holds else "last copy failed: boom", attack,
                     configured)


@pytest.mark.parametrize(("url", "provider", "expected"), [
    ("s3:https://s3.eu-central-1.amazonaws.com/bucket/p", None, ("s3.eu-central-1.amazonaws.com", True)),
    ("s3:http://127.0.0.1:9000/b", None, ("127.0.0.1:9000", True)),
    ("s3:s3.example.org/bucket", None, ("s3.example.org", True)),
    ("rest:http://10.0.0.5:8000/siak", None, ("10.0.0.5:8000", True)),
    ("sftp:backup@vault.example.org:/srv/restic", None, ("vault.example.org", True)),
    ("/srv/restic", None, ("this server", False)),
    ("/mnt/usb/restic", "usb-disk", ("usb-disk", False)),
    ("s3:http://127.0.0.1:9000/b", "wasabi", ("wasabi", True)),
])
def test_provider_of(url: str, provider: str | None, expected: tuple[str, bool]) -> None:
    assert provider_of(url, provider) == expected


def test_every_letter_met() -> None:
    rule = assess([repo("offsite", "s3:http://a:1/b"), repo("vault", "rest:http://v:2/x", attack=ATTACK_OK)],
                  last_check=CHECK_OK, last_verified_drill=DRILL_OK)
    assert rule["met"] and rule["detail"] == "met"
    assert rule["letters"] == {"3": True, "2": True, "1o": True, "1i": True, "0": True}


def test_one_local_repository_falls_short_on_everything_but_says_what_to_do() -> None:
    rule = assess([repo("usb", "/srv/restic")], last_check=None, last_verified_drill=None)
    assert rule["letters"] == {"3": False, "2": False, "1o": False, "1i": False, "0": False}
    advice = {x["letter"]: x["advice"] for x in rule["assessment"]}
    assert "add 1 more repository to the policy's `copies:`" in advice["3"]
    assert "another provider" in advice["2"]
    assert "s3:, rest: or sftp:" in advice["1o"]
    assert "immutability: {}" in advice["1i"] and "immutable: in drtool.yaml" in advice["1i"]
    assert "check: {schedule" in advice["0"] and "restore and verify" in advice["0"]


def test_a_failed_copy_does_not_count_and_is_named() -> None:
    rule = assess([repo("offsite", "s3:http://a:1/b"), repo("b", "s3:http://c:1/b", holds=False)],
                  last_check=CHECK_OK, last_verified_drill=DRILL_OK)
    three = next(x for x in rule["assessment"] if x["letter"] == "3")
    assert not three["met"] and "b: last copy failed: boom" in three["advice"]


def test_immutable_needs_the_attack_drill_not_the_configuration() -> None:
    configured = assess([repo("offsite", "s3:http://a:1/b", configured="compliance")], last_check=CHECK_OK,
                        last_verified_drill=DRILL_OK)
    one_i = next(x for x in configured["assessment"] if x["letter"] == "1i")
    assert not one_i["met"] and "configuration is not proof" in one_i["detail"]
    failed = {"passed": False, "at": "2026-12-01", "drill": "d2", "through": ["shorten the pack's retention"]}
    broken = assess([repo("offsite", "s3:http://a:1/b", attack=failed)], last_check=CHECK_OK,
                    last_verified_drill=DRILL_OK)
    one_i = next(x for x in broken["assessment"] if x["letter"] == "1i")
    assert not one_i["met"] and "shorten the pack's retention" in one_i["detail"]
    assert "make the storage enforce it" in one_i["advice"]


def test_same_provider_twice_is_one_medium_unless_told_otherwise() -> None:
    same = [repo("a", "s3:http://s3.example.org/b1"), repo("b", "s3:http://s3.example.org/b2")]
    assert assess(same, last_check=CHECK_OK, last_verified_drill=DRILL_OK)["letters"]["2"] is True  # + this server
    providers = {x["provider"] for x in assess(same, last_check=CHECK_OK, last_verified_drill=DRILL_OK)["repositories"]}
    assert providers == {"s3.example.org"}


def test_errors_letter_needs_a_passing_check_and_verifying_drill() -> None:
    bad = assess([repo("a", "s3:http://a/b")], last_check={"status": "failed", "started_at": "2026-12-01"},
                 last_verified_drill={"passed": False, "started_at": "2026-12-02"})
    zero = next(x for x in bad["assessment"] if x["letter"] == "0")
    assert not zero["met"] and "the last check (2026-12-01) failed" in zero["detail"]
    assert "the last verifying drill (2026-12-02) failed" in zero["detail"]


def test_last_attacks_and_last_verified_drill_from_reports() -> None:
    attack_step = {"kind": "immutability", "status": "failed", "repository": "vault",
                   "attempts": [{"name": "delete", "outcome": "refused"},
                                {"name": "shorten", "outcome": "got-through"}]}
    reports = [
        {"id": "d1", "started_at": "1", "steps": [{"kind": "immutability", "status": "passed"}]},
        {"id": "d2", "started_at": "2", "steps": [{"kind": "restore"}, {"kind": "verify"}]},
        {"id": "d3", "started_at": "3", "steps": [attack_step]},
        {"id": "d4", "started_at": "4", "steps": [{"kind": "immutability", "status": "skipped"}]},
    ]
    attacks = last_attacks(reports, "offsite")
    assert attacks["offsite"]["passed"] is True and attacks["offsite"]["drill"] == "d1"
    assert attacks["vault"] == {"passed": False, "at": "3", "drill": "d3", "through": ["shorten"]}
    assert last_verified_drill(reports)["id"] == "d2"
    assert last_verified_drill(reports[:1]) is None
