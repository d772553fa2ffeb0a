"""The first kit format (kept readable): sealing, opening, every way it can fail, armour, file mode.

New kits are age files (tests/unit/test_kit_age.py); these kits must keep opening through
`drtool.crypto.kit.open_kit` until every custodian has run `drtool kit upgrade`.
"""

from __future__ import annotations

import stat
import struct
import time

import pytest

from drtool.crypto import kit_legacy as kitmod
from drtool.crypto.kit import (
    BundleLocation,
    Kit,
    KitError,
    KitRepository,
    KitS3,
    open_kit,
    read_kit,
    write_kit,
)
from drtool.crypto.kit_legacy import ARMOR_BEGIN, ARMOR_END, armor, dearmor, seal
from drtool.secrets import Secret

PASS = "correct horse battery staple"
FAST = 14   # scrypt cost for tests; the default is exercised once, timed


def sample_kit() -> Kit:
    return Kit(
        repositories=[KitRepository(
            name="offsite", url="s3:http://127.0.0.1:9000/dr/prod",
            escrow_password=Secret("escrow-pw-0f9e8d7c"), escrow_key_id="864f1ecf",
            s3=KitS3(endpoint="http://127.0.0.1:9000", bucket="dr", region="eu-west-1",
                     access_key_id="AKIA-test", secret_access_key=Secret("s3-secret-aa11bb22")),
        )],
        policies=["siak", "files"],
        config_bundle=BundleLocation(repository="offsite"),
        signing_public_key="MCowBQYDK2VwAyEA",
        notes="Kota Palembang, rack 2",
        created_at="2024-01-01T00:00:00+00:00",   # fixed: two kits made a second apart must compare equal
    )


@pytest.fixture(scope="module")
def sealed() -> bytes:
    return seal(sample_kit(), PASS, log2_n=FAST)


def test_seal_open_round_trip_keeps_every_field(sealed: bytes) -> None:
    opened = open_kit(sealed, PASS)
    original = sample_kit()
    assert opened.to_dict() == original.to_dict()
    assert opened.repository("offsite").escrow_password.reveal() == "escrow-pw-0f9e8d7c"
    assert opened.repository("offsite").s3.secret_access_key.reveal() == "s3-secret-aa11bb22"


def test_sealed_bytes_hide_the_secrets(sealed: bytes) -> None:
    assert b"escrow-pw-0f9e8d7c" not in sealed
    assert b"s3-secret" not in sealed
    assert b"offsite" not in sealed   # even names are not readable without the passphrase


def test_summary_and_repr_never_show_secrets() -> None:
    k = sample_kit()
    text = repr(k) + repr(k.summary())
    assert "escrow-pw-0f9e8d7c" not in text and "s3-secret-aa11bb22" not in text
    assert k.summary()["repositories"][0]["s3_credentials"] is True


def test_default_cost_is_memory_hard_and_about_half_a_second() -> None:
    started = time.perf_counter()
    data = seal(sample_kit(), PASS)
    elapsed = time.perf_counter() - started
    _magic, _v, _kdf, log2_n, r, _p, *_ = kitmod._HEADER.unpack(data[:kitmod._HEADER.size])
    assert (log2_n, r) == (17, 8)           # 128 MiB per guess
    assert 0.1 < elapsed < 5.0
    assert open_kit(data, PASS).policies == ["siak", "files"]


def test_open_wrong_passphrase_says_so(sealed: bytes) -> None:
    with pytest.raises(KitError, match="wrong passphrase, or the kit was altered"):
        open_kit(sealed, PASS + "!")


def test_open_passphrase_is_unicode_normalised() -> None:
    data = seal(sample_kit(), "caf\u00e9-passphrase", log2_n=FAST)        # composed é
    assert open_kit(data, "cafe\u0301-passphrase").policies                # decomposed é


@pytest.mark.parametrize("offset", [-1, -20, kitmod._HEADER.size + 3])
def test_open_tampered_ciphertext_is_refused(sealed: bytes, offset: int) -> None:
    damaged = bytearray(sealed)
    damaged[offset] ^= 0x01
    with pytest.raises(KitError, match="altered"):
        open_kit(bytes(damaged), PASS)


def test_open_tampered_salt_in_header_is_refused(sealed: bytes) -> None:
    damaged = bytearray(sealed)
    damaged[20] ^= 0x80          # inside the salt: authenticated as associated data
    with pytest.raises(KitError, match="altered"):
        open_kit(bytes(damaged), PASS)


def test_open_weakened_kdf_cost_is_refused(sealed: bytes) -> None:
    damaged = bytearray(sealed)
    damaged[10] = 15             # log2_n: a tamperer lowering the cost must not get through
    with pytest.raises(KitError, match="altered"):
        open_kit(bytes(damaged), PASS)


@pytest.mark.parametrize("keep", [1, 5, 30, -1, -17])
def test_open_truncated_kit_says_truncated(sealed: bytes, keep: int) -> None:
    with pytest.raises(KitError, match="truncated"):
        open_kit(sealed[:keep], PASS)


def test_open_extra_bytes_are_refused(sealed: bytes) -> None:
    with pytest.raises(KitError, match="unexpected bytes after its end"):
        open_kit(sealed + b"\n", PASS)


def test_open_unknown_version(sealed: bytes) -> None:
    newer = sealed[:8] + bytes([2]) + sealed[9:]
    with pytest.raises(KitError, match="unknown recovery kit format version 2"):
        open_kit(newer, PASS)


@pytest.mark.parametrize("data", [b"", b"hello, this is a text file", b"\x89PNG\r\n\x1a\n....",
                                  b"-----BEGIN PGP MESSAGE-----\n"])
def test_open_not_a_kit(data: bytes) -> None:
    with pytest.raises(KitError, match="not a recovery kit"):
        open_kit(data, PASS)


def test_open_impossible_header_params_are_refused(sealed: bytes) -> None:
    damaged = bytearray(sealed)
    damaged[10] = 40             # n = 2**40: would exhaust memory if believed
    with pytest.raises(KitError, match="header is damaged"):
        open_kit(bytes(damaged), PASS)


def test_seal_refuses_short_passphrase() -> None:
    with pytest.raises(KitError, match="shorter than 8"):
        seal(sample_kit(), "short", log2_n=FAST)


def test_content_of_unsupported_version_is_refused() -> None:
    content = sample_kit().to_dict() | {"version": 9}
    with pytest.raises(KitError, match="content version 9"):
        Kit.from_dict(content)


def test_content_missing_field_is_named() -> None:
    content = sample_kit().to_dict()
    del content["repositories"][0]["url"]
    with pytest.raises(KitError, match=r"repositories\[0\]\.url is missing"):
        Kit.from_dict(content)


# ---------------------------------------------------------------- armour


def test_armor_round_trip_and_shape(sealed: bytes) -> None:
    text = armor(sealed)
    lines = text.splitlines()
    assert lines[0] == ARMOR_BEGIN and lines[-1] == ARMOR_END
    assert all(32 <= ord(c) < 127 for c in text.replace("\n", ""))
    body = [line for line in lines[1:-1] if line and ":" not in line and not line.startswith("=")]
    assert all(len(line.split()[0]) <= 64 for line in body)
    assert len(body[0].split()[0]) == 64
    assert dearmor(text) == sealed


def test_open_kit_accepts_armoured_text_with_surrounding_notes(sealed: bytes) -> None:
    text = "Printed 2024-01-01, keep in the safe.\n\n" + armor(sealed) + "\nsigned: the admin\n"
    assert open_kit(text.encode(), PASS).notes == "Kota Palembang, rack 2"


def test_dearmor_tolerates_typing_noise(sealed: bytes) -> None:
    lines = armor(sealed).splitlines()
    noisy = []
    for line in lines:
        if len(line) > 64 and " " in line and not line.startswith("-"):
            data, check = line.rsplit(" ", 1)
            line = f"  {data[:32]} {data[32:]}   {check.upper()}  "
        noisy.append(line)
    assert dearmor("\r\n".join(noisy)) == sealed


def _body_index(lines: list[str], n: int) -> int:
    return [i for i, line in enumerate(lines) if len(line.split()) == 2 and len(line.split()[1]) == 4][n]


def test_dearmor_changed_character_is_caught_on_its_line(sealed: bytes) -> None:
    lines = armor(sealed).splitlines()
    i = _body_index(lines, 2)
    ch = lines[i][10]
    lines[i] = lines[i][:10] + ("B" if ch != "B" else "C") + lines[i][11:]
    with pytest.raises(KitError, match="line 3 does not match its checksum"):
        dearmor("\n".join(lines))


def test_dearmor_case_change_is_caught(sealed: bytes) -> None:
    lines = armor(sealed).splitlines()
    i = _body_index(lines, 0)
    data, check = lines[i].split()
    pos = next(k for k, c in enumerate(data) if c.isalpha())
    data = data[:pos] + data[pos].swapcase() + data[pos + 1:]
    lines[i] = f"{data} {check}"
    with pytest.raises(KitError, match="line 1 does not match"):
        dearmor("\n".join(lines))


def test_dearmor_swapped_lines_are_caught(sealed: bytes) -> None:
    lines = armor(sealed).splitlines()
    a, b = _body_index(lines, 0), _body_index(lines, 1)
    lines[a], lines[b] = lines[b], lines[a]
    with pytest.raises(KitError, match="line 1 does not match"):
        dearmor("\n".join(lines))


def test_dearmor_missing_last_data_line_is_caught(sealed: bytes) -> None:
    lines = armor(sealed).splitlines()
    last = max(i for i, line in enumerate(lines) if len(line.split()) == 2 and len(line.split()[1]) == 4)
    del lines[last]
    with pytest.raises(KitError):
        dearmor("\n".join(lines))


def test_dearmor_mistyped_overall_checksum(sealed: bytes) -> None:
    lines = armor(sealed).splitlines()
    i = next(i for i, line in enumerate(lines) if line.startswith("="))
    lines[i] = "=00000000" if lines[i] != "=00000000" else "=00000001"
    with pytest.raises(KitError, match="overall checksum"):
        dearmor("\n".join(lines))


def test_dearmor_missing_end_line_says_truncated(sealed: bytes) -> None:
    text = armor(sealed).replace(ARMOR_END, "")
    with pytest.raises(KitError, match="truncated: the END line is missing"):
        dearmor(text)


def test_dearmor_without_begin_is_not_a_kit() -> None:
    with pytest.raises(KitError, match="BEGIN line is missing"):
        dearmor("just some text\n")


def test_dearmor_unknown_armour_version(sealed: bytes) -> None:
    text = armor(sealed).replace("Version: 1", "Version: 7")
    with pytest.raises(KitError, match="unknown armoured kit version 7"):
        dearmor(text)


# ---------------------------------------------------------------- files


def test_write_kit_is_owner_only_and_replaces_atomically(tmp_path, sealed: bytes) -> None:
    target = tmp_path / "kit.drkit"
    target.write_bytes(b"old")
    target.chmod(0o644)
    write_kit(target, sealed)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert read_kit(target) == sealed
    write_kit(tmp_path / "kit.txt", armor(sealed))
    assert open_kit(read_kit(tmp_path / "kit.txt"), PASS).policies == ["siak", "files"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kit.drkit", "kit.txt"]   # no temp files left


def test_write_kit_unwritable_place_is_a_clear_error(tmp_path, sealed: bytes) -> None:
    with pytest.raises(KitError, match="cannot write the recovery kit"):
        write_kit(tmp_path / "missing-dir" / "kit.drkit", sealed)


def test_read_kit_missing_file(tmp_path) -> None:
    with pytest.raises(KitError, match="cannot read the recovery kit"):
        read_kit(tmp_path / "nope")


def test_header_layout_is_stable(sealed: bytes) -> None:
    # The on-disk format is a promise to future versions: pin its size and prefix.
    assert kitmod._HEADER.size == 8 + 5 + 4 + 16 + 12
    assert sealed[:9] == b"DRTOOLKT\x01"
    (ct_len,) = struct.unpack(">I", sealed[13:17])
    assert len(sealed) == kitmod._HEADER.size + ct_len
