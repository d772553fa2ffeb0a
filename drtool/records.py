"""Records as read back (run records, drill reports) with where they came from and their signature check.

A record from the local catalog is trusted as "local" (it never left this
machine). A record read from offsite, or a report file someone hands over, is
"valid", "invalid" or "unsigned" after checking its Ed25519 signature
(drtool.crypto.signing); only "local" and "valid" records may decide a verdict.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Origin = Literal["catalog", "offsite", "file"]
Signature = Literal["local", "valid", "invalid", "unsigned"]


@dataclass
class HistoryRecord:
    """One run record (RunRecord.to_dict()) or drill report (DrillReport.to_dict())."""
    data: dict[str, Any]
    origin: Origin
    signature: Signature = "local"
    signature_detail: str = ""

    @property
    def usable(self) -> bool:
        return self.signature in ("local", "valid")

    @property
    def id(self) -> str:
        return str(self.data.get("id", ""))

    @property
    def started_at(self) -> str:
        return str(self.data.get("started_at", ""))


def check_signature(data: dict[str, Any], expected_key: str | None, origin: Origin = "offsite") -> HistoryRecord:
    """The record with the outcome of its signature check (expected signer: `expected_key`, if known)."""
    from drtool.crypto.signing import SignatureInvalid, key_fingerprint, verify_record

    block = data.get("signature")
    if block is None:
        return HistoryRecord(data, origin, "unsigned", "the record is not signed")
    try:
        verify_record(data, expected_key)
    except SignatureInvalid as exc:
        return HistoryRecord(data, origin, "invalid", exc.message)
    signer = key_fingerprint(block["public_key"])
    detail = (f"signed by this installation's key {signer}" if expected_key
              else f"intact, signed by key {signer} (no local key to compare: check it against the recovery kit)")
    return HistoryRecord(data, origin, "valid", detail)


def check_signature_by(data: dict[str, Any], keys: dict[str, str], origin: Origin = "offsite") -> HistoryRecord:
    """The record with its signature check against a set of trusted signers, `keys`: public key ->
    who it is ("the site's key", "the drill pool's key"). Intact but signed by anyone else is invalid:
    whoever can write to a bucket can sign with a key of their own."""
    from drtool.crypto.signing import SignatureInvalid, key_fingerprint, verify_record

    block = data.get("signature")
    if block is None:
        return HistoryRecord(data, origin, "unsigned", "the record is not signed")
    try:
        verify_record(data, None)
    except SignatureInvalid as exc:
        return HistoryRecord(data, origin, "invalid", exc.message)
    signer = block["public_key"]
    if signer not in keys:
        return HistoryRecord(data, origin, "invalid",
                             f"intact, but signed by key {key_fingerprint(signer)}, which is neither the site's "
                             "key nor a trusted key of the fleet file")
    return HistoryRecord(data, origin, "valid", f"signed by {keys[signer]} {key_fingerprint(signer)}")
