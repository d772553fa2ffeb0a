"""Secret values: resolved from references, masked everywhere they could leak.

A resolved secret is a `Secret`; its repr and str never show the value. Every
value resolved in this process is remembered so `redact()` can mask it in
stderr tails, log lines, exception texts and reports.
"""

from __future__ import annotations

import threading

_lock = threading.Lock()
_known: set[str] = set()
MASK = "***"


class Secret:
    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value
        register(value)

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret(***)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def register(value: str) -> None:
    # Very short values would mask innocent text everywhere; they are weak secrets anyway.
    if value and len(value) >= 4:
        with _lock:
            _known.add(value)


def redact(text: str) -> str:
    if not text:
        return text
    with _lock:
        values = sorted(_known, key=len, reverse=True)
    for value in values:
        if value in text:
            text = text.replace(value, MASK)
    return text
