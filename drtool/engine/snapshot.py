"""A restic snapshot as drtool reads it (`restic snapshots --json`), and restic's timestamps."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class Snapshot:
    id: str
    short_id: str
    time: datetime
    hostname: str
    tags: tuple[str, ...]
    paths: tuple[str, ...]

    def tag(self, key: str) -> str | None:
        prefix = key + "="
        for t in self.tags:
            if t.startswith(prefix):
                return t[len(prefix):]
        return None

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> "Snapshot":
        return cls(
            id=obj["id"],
            short_id=obj.get("short_id", obj["id"][:8]),
            time=parse_restic_time(obj["time"]),
            hostname=obj.get("hostname", ""),
            tags=tuple(obj.get("tags") or ()),
            paths=tuple(obj.get("paths") or ()),
        )

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "short_id": self.short_id, "time": self.time.isoformat(),
                "hostname": self.hostname, "tags": list(self.tags), "paths": list(self.paths)}


def parse_restic_time(text: str) -> datetime:
    # restic prints RFC 3339 with nanoseconds; Python takes at most microseconds.
    if "." in text:
        head, rest = text.split(".", 1)
        n = 0
        while n < len(rest) and rest[n].isdigit():
            n += 1
        digits, zone = rest[:n], rest[n:]
        text = f"{head}.{digits[:6]}{zone}"
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
