"""Ed25519 signed records: key file handling, signing, and every way verification fails."""

from __future__ import annotations

import json
import stat
from datetime import datetime

import pytest

from drtool.crypto.signing import (
    KEY_FILE,
    SignatureInvalid,
    SigningKeyError,
    canonical_bytes,
    load_or_create_signing_key,
    public_key_b64,
    sign_record,
    verify_record,
)

RECORD = {"kind": "drill", "playbook": "siak-nightly", "rto_target_s": 3600, "rto_achieved_s": 812.5,
          "passed": True, "steps": [{"name": "restore", "status": "ok"}], "note": "Palembang \u00e9"}


@pytest.fixture()
def key(tmp_path):
    return load_or_create_signing_key(tmp_path / "state")


def test_key_is_created_once_owner_only(tmp_path) -> None:
    state = tmp_path / "state"
    first = load_or_create_signing_key(state)
    path = state / KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    second = load_or_create_signing_key(state)
    assert public_key_b64(first) == public_key_b64(second)
    assert [p.name for p in state.iterdir()] == [KEY_FILE]


def test_key_readable_by_others_is_refused(tmp_path) -> None:
    state = tmp_path / "state"
    load_or_create_signing_key(state)
    (state / KEY_FILE).chmod(0o644)
    with pytest.raises(SigningKeyError, match="readable by others"):
        load_or_create_signing_key(state)


def test_key_file_garbage_is_a_clear_error(tmp_path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / KEY_FILE).write_text("not a key")
    (state / KEY_FILE).chmod(0o600)
    with pytest.raises(SigningKeyError, match="not a valid PEM private key"):
        load_or_create_signing_key(state)


def test_public_key_is_32_raw_bytes_b64(key) -> None:
    import base64
    assert len(base64.b64decode(public_key_b64(key))) == 32
    assert public_key_b64(key.public_key()) == public_key_b64(key)


def test_sign_returns_copy_and_verifies(key) -> None:
    signed = sign_record(RECORD, key)
    assert "signature" not in RECORD
    assert signed["signature"]["alg"] == "ed25519"
    assert signed["signature"]["public_key"] == public_key_b64(key)
    verify_record(signed)
    verify_record(signed, public_key_b64(key))


def test_verify_survives_a_json_file_round_trip(key, tmp_path) -> None:
    path = tmp_path / "report.json"
    path.write_text(json.dumps(sign_record(RECORD, key), indent=2))   # pretty, unsorted on disk
    verify_record(json.loads(path.read_text()), public_key_b64(key))


def test_canonical_encoding_is_sorted_compact_ascii() -> None:
    assert canonical_bytes({"b": 1, "a": "\u00e9", "signature": {"x": 1}}) == b'{"a":"\\u00e9","b":1}'


@pytest.mark.parametrize("change", [
    lambda r: r.__setitem__("passed", False),
    lambda r: r.__setitem__("rto_achieved_s", 812.6),
    lambda r: r["steps"][0].__setitem__("status", "failed"),
    lambda r: r.__setitem__("extra", None),
    lambda r: r.pop("note"),
])
def test_verify_tampered_record_fails(key, change) -> None:
    signed = json.loads(json.dumps(sign_record(RECORD, key)))
    change(signed)
    with pytest.raises(SignatureInvalid, match="altered after it was signed"):
        verify_record(signed)


def test_verify_unsigned_record_fails() -> None:
    with pytest.raises(SignatureInvalid, match="not signed"):
        verify_record(dict(RECORD))


def test_verify_wrong_expected_key_fails(key, tmp_path) -> None:
    other = load_or_create_signing_key(tmp_path / "other")
    signed = sign_record(RECORD, key)
    with pytest.raises(SignatureInvalid, match="not the expected key"):
        verify_record(signed, public_key_b64(other))


def test_verify_resigned_by_forger_fails_against_expected_key(key, tmp_path) -> None:
    forger = load_or_create_signing_key(tmp_path / "forger")
    forged = sign_record(dict(sign_record(RECORD, key), passed=False), forger)
    verify_record(forged)    # intact, but by whom? only the expected key tells
    with pytest.raises(SignatureInvalid, match="not the expected key"):
        verify_record(forged, public_key_b64(key))


def test_verify_swapped_public_key_in_block_fails(key, tmp_path) -> None:
    other = load_or_create_signing_key(tmp_path / "other")
    signed = sign_record(RECORD, key)
    signed["signature"]["public_key"] = public_key_b64(other)
    with pytest.raises(SignatureInvalid, match="altered"):
        verify_record(signed)


@pytest.mark.parametrize("block", [
    "abc", {"alg": "ed25519"}, {"alg": "rsa", "public_key": "x", "value": "y"},
    {"alg": "ed25519", "public_key": "!!!", "value": "AAAA"},
    {"alg": "ed25519", "public_key": "AAAA", "value": "AAAA"},
])
def test_verify_malformed_signature_block_fails(block) -> None:
    with pytest.raises(SignatureInvalid):
        verify_record(dict(RECORD, signature=block))


def test_sign_refuses_non_json_values(key) -> None:
    with pytest.raises(SignatureInvalid, match="not plain JSON"):
        sign_record({"at": datetime(2024, 1, 1)}, key)
    with pytest.raises(SignatureInvalid, match="not plain JSON"):
        sign_record({"x": float("nan")}, key)


def test_sign_replaces_an_earlier_signature(key, tmp_path) -> None:
    other = load_or_create_signing_key(tmp_path / "other")
    twice = sign_record(sign_record(RECORD, other), key)
    verify_record(twice, public_key_b64(key))
