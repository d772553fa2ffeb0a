"""Kits are age files: sealed by pyrage, opened by drtool and by Debian's `age -d` without drtool.

The paper form keeps a checksum on every line and still becomes plain age armour by
stripping them. Old kits (tests/unit/test_kit_legacy_format.py) keep opening.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from drtool.crypto import kit_age
from drtool.crypto.kit import (
    BundleLocation,
    Kit,
    KitError,
    KitRepository,
    KitS3,
    armor,
    kit_format,
    open_kit,
    payload_digest,
    seal,
)
from drtool.crypto.kit_legacy import seal as seal_legacy
from drtool.secrets import Secret

PASS = "correct horse battery staple"


def sample_kit(custodian: str | None = "alice") -> Kit:
    return Kit(
        repositories=[KitRepository(
            name="offsite", url="s3:http://127.0.0.1:9000/dr/prod",
            escrow_password=Secret("escrow-pw-0f9e8d7c"), escrow_key_id="864f1ecf",
            s3=KitS3(endpoint="http://127.0.0.1:9000", bucket="dr", region="eu-west-1"))],
        policies=["siak"], config_bundle=BundleLocation(repository="offsite"),
        signing_public_key="MCowBQYDK2VwAyEA", hostname="records-1", custodian=custodian,
        created_at="2024-01-01T00:00:00+00:00")


@pytest.fixture(scope="module")
def sealed() -> bytes:
    return seal(sample_kit(), PASS)         # scrypt, about a second


@pytest.fixture(scope="module")
def x25519():
    import pyrage
    return pyrage.x25519.Identity.generate()


def need_age() -> str:
    found = shutil.which("age")
    if found is None and not os.environ.get("CI"):
        pytest.skip("age is not installed (apt-get install age)")
    assert found, "age must be installed (scripts/bootstrap)"
    return found


def age_decrypt_on_a_terminal(path: str, passphrase: str) -> tuple[int, str]:
    """`age -d FILE` as a person runs it: age reads the passphrase from the terminal only."""
    import pexpect

    child = pexpect.spawn(need_age(), ["-d", path], encoding="utf-8", timeout=60, echo=False)
    try:
        child.expect("Enter passphrase")
        child.sendline(passphrase)
        child.expect(pexpect.EOF)
        out = child.before
    finally:
        child.close()
    return child.exitstatus, out


def test_sealed_kit_is_a_standard_age_file_and_round_trips(sealed: bytes) -> None:
    assert sealed.startswith(b"age-encryption.org/v1\n-> scrypt ") and kit_format(sealed) == "age"
    assert b"escrow-pw" not in sealed and b"offsite" not in sealed
    opened = open_kit(sealed, PASS)
    assert opened.to_dict() == sample_kit().to_dict()
    assert opened.custodian == "alice" and opened.hostname == "records-1"


def test_debian_age_opens_the_kit_with_the_passphrase(sealed: bytes, tmp_path) -> None:
    path = tmp_path / "siak.age"
    path.write_bytes(sealed)
    code, out = age_decrypt_on_a_terminal(str(path), PASS)
    assert code == 0, out
    content = json.loads(out[out.index("{"):])
    assert content["repositories"][0]["escrow_password"] == "escrow-pw-0f9e8d7c"
    assert content["hostname"] == "records-1"


def test_paper_form_becomes_plain_age_armour_by_stripping_the_checksums(x25519, tmp_path) -> None:
    binary = seal(sample_kit(), recipients=[str(x25519.to_public())])
    paper = armor(binary)
    assert kit_format(paper.encode()) == "age-armored"
    assert open_kit(paper.encode(), identities=[x25519]).policies == ["siak"]
    (tmp_path / "kit.txt").write_text(paper)
    (tmp_path / "id.txt").write_text(str(x25519) + "\n")
    # The command the paper itself prints, run by bash without drtool.
    hand = kit_age.HAND_OPEN.replace("FILE", "kit.txt").replace("age -d", f"{need_age()} -d -i id.txt")
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", hand], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["custodian"] == "alice"


def test_ssh_public_key_custodian(tmp_path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "key")], check=True)
    binary = seal(sample_kit("bob"), recipients=[str(tmp_path / "key.pub")])     # a .pub file path
    assert b"-> ssh-ed25519 " in binary
    assert open_kit(binary, identities=kit_age.load_identities(tmp_path / "key")).custodian == "bob"
    with pytest.raises(KitError, match="no identity was given"):
        open_kit(binary, PASS)


def test_wrong_identity_and_wrong_passphrase_are_clear(sealed: bytes, x25519) -> None:
    import pyrage

    with pytest.raises(KitError, match="wrong passphrase, or the kit was altered"):
        open_kit(sealed, PASS + "!")
    with pytest.raises(KitError, match="sealed with a passphrase; none was given"):
        open_kit(sealed)
    binary = seal(sample_kit(), recipients=[str(x25519.to_public())])
    with pytest.raises(KitError, match="with the identity given"):
        open_kit(binary, identities=[pyrage.x25519.Identity.generate()])


def test_tampered_payload_is_refused(x25519) -> None:
    binary = bytearray(seal(sample_kit(), recipients=[str(x25519.to_public())]))
    binary[-5] ^= 0x01
    with pytest.raises(KitError, match="cannot open the recovery kit"):
        open_kit(bytes(binary), identities=[x25519])


def test_passphrase_and_recipients_together_are_refused(x25519) -> None:
    with pytest.raises(KitError, match="not both"):
        seal(sample_kit(), PASS, recipients=[str(x25519.to_public())])
    with pytest.raises(KitError, match="shorter than 8"):
        seal(sample_kit(), "short")
    with pytest.raises(KitError, match="not a usable public key"):
        seal(sample_kit(), recipients=["age1notakey"])


def test_paper_typo_is_caught_on_its_line_and_counts_are_checked(x25519) -> None:
    paper = armor(seal(sample_kit(), recipients=[str(x25519.to_public())])).splitlines()
    body = [i for i, line in enumerate(paper) if len(line.split()) == 2 and len(line.split()[1]) == 4]
    typo = list(paper)
    i = body[1]
    typo[i] = typo[i][:5] + ("A" if typo[i][5] != "A" else "B") + typo[i][6:]
    with pytest.raises(KitError, match="line 2 does not match its checksum"):
        kit_age.from_paper("\n".join(typo))
    short = [line for n, line in enumerate(paper) if n != body[-1]]
    with pytest.raises(KitError):
        kit_age.from_paper("\n".join(short))
    noisy = []
    for n, line in enumerate(paper):
        if n in body:     # typed back from paper: stray spaces, an upper-case checksum
            data, check = line.rsplit(" ", 1)
            line = f"  {data[:20]} {data[20:]}   {check.upper()} "
        noisy.append(line)
    assert kit_age.from_paper("\r\n".join(noisy)) == kit_age.from_paper("\n".join(paper))


def test_old_format_kits_still_open_and_digest_ignores_armour() -> None:
    old = seal_legacy(sample_kit(), PASS, log2_n=14)
    assert kit_format(old) == "legacy"
    assert open_kit(old, PASS).custodian == "alice"
    assert payload_digest(armor(old).encode()) == payload_digest(old)


def test_a_work_factor_age_refuses_is_named_not_called_a_wrong_passphrase() -> None:
    """age refuses a scrypt work factor over 16x what it measures this machine can do: drtool
    measures again (a busy moment skews it), then says what happened instead of "wrong passphrase"."""
    sealed = kit_age.encrypt_passphrase(b'{"k": 1}', "right passphrase")
    head, stanza, rest = sealed.split(b"\n", 2)
    assert stanza.startswith(b"-> scrypt ")
    greedy = b"\n".join([head, stanza.rsplit(b" ", 1)[0] + b" 30", rest])   # 2^30: minutes of scrypt
    with pytest.raises(KitError) as err:
        kit_age.decrypt(greedy, passphrase="right passphrase")
    assert "work factor" in err.value.message and "wrong passphrase" not in err.value.message
    assert kit_age.decrypt(sealed, passphrase="right passphrase") == b'{"k": 1}'
