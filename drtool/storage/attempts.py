"""What an attack drill tried, and what came of it (pure).

    refused      the store answered with an error: the attempt failed
    intact       the store accepted the call, but the locked version is untouched (an overwrite or
                 a plain delete on a versioned bucket only adds a version or a delete marker)
    got-through  the attempt did damage (a version deleted, a lock shortened, versioning suspended)
                 or weakened the protection; drtool put back what it could (`restored`)
    unknown      drtool could not tell (the store went away): proves nothing
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any, Literal

Outcome = Literal["refused", "intact", "got-through", "unknown"]


@dataclass
class Attempt:
    name: str                  # what ransomware would do, in words
    call: str                  # the API call, e.g. "DeleteObject(VersionId)"
    outcome: Outcome
    detail: str = ""           # the store's answer
    restored: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def held(self) -> bool:
        return self.outcome in ("refused", "intact")


@dataclass
class AttackReport:
    store: str                 # where (URL, no credentials)
    target: str                # the object attacked
    attempts: list[Attempt]

    @property
    def passed(self) -> bool:
        return bool(self.attempts) and all(a.held for a in self.attempts)

    @property
    def through(self) -> list[Attempt]:
        return [a for a in self.attempts if not a.held]

    def summary(self) -> str:
        counts = Counter(a.outcome for a in self.attempts)
        parts = [f"{counts[k]} {k.replace('-', ' ')}" for k in ("refused", "intact", "got-through", "unknown")
                 if counts[k]]
        return f"{len(self.attempts)} attempts on {self.target}: " + ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"store": self.store, "target": self.target, "passed": self.passed,
                "attempts": [a.to_dict() for a in self.attempts]}
