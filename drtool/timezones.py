"""The one effective time zone of a setup, and where it came from (pure logic apart from reading
the TZ variable and /etc/localtime, both injectable).

`schedule show`, the daemon and every export (systemd, cron) ask `effective_zone`
so they can never disagree. The rules, first match wins:

1. `timezone:` in drtool.yaml: an IANA name (Asia/Jakarta, UTC), checked by `validate`;
2. the `TZ` environment variable, as glibc reads it: an IANA name, `:Asia/Jakarta`,
   `:/usr/share/zoneinfo/Asia/Jakarta`, or a POSIX rule such as `WIB-7` or
   `EST5EDT,M3.2.0,M11.1.0`; set but empty means UTC;
3. the system zone: the /etc/localtime symlink (or Debian's /etc/timezone);
4. UTC.

Exports need a name systemd and cron understand. An IANA name is written as is; a
POSIX rule with a whole-hour fixed offset becomes the equivalent `Etc/GMT-7`; a
POSIX rule with daylight saving has no name, and exporting it is refused with the
fix (set `timezone:`). Every failure is a `ZoneError` (a ValueError), never the
KeyError that zoneinfo raises for unknown keys.
"""

from __future__ import annotations

import difflib
import functools
import io
import os
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, available_timezones

ZONEINFO_DIRS = ("/usr/share/zoneinfo", "/usr/lib/zoneinfo", "/usr/share/lib/zoneinfo")
# A POSIX TZ rule: std name and offset, optionally a DST name, offset and rules (glibc's tzset(3)).
_POSIX = re.compile(r"^(?:[A-Za-z]{3,}|<[A-Za-z0-9+-]{3,}>)[+-]?\d{1,2}(?::\d{2}){0,2}"
                    r"(?:(?:[A-Za-z]{3,}|<[A-Za-z0-9+-]{3,}>)(?:[+-]?\d{1,2}(?::\d{2}){0,2})?(?:,.+)?)?$")


class ZoneError(ValueError):
    """An unknown or unusable time zone; the message says which and what to write instead."""


@dataclass(frozen=True)
class EffectiveZone:
    tz: ZoneInfo
    name: str                   # as given: "Asia/Jakarta", "WIB-7", "UTC"
    source: str                 # "drtool.yaml timezone:", "TZ=WIB-7", "/etc/localtime", "default ..."
    export_name: str | None     # the name for OnCalendar= / CRON_TZ=; None: only POSIX rules describe it

    def describe(self) -> str:
        """e.g. 'Asia/Jakarta (from TZ=Asia/Jakarta)'."""
        shown = self.name if self.export_name in (None, self.name) else f"{self.name} = {self.export_name}"
        return f"{shown} (from {self.source})"

    def require_export_name(self, what: str) -> str:
        if self.export_name is None:
            raise ZoneError(f"the time zone {self.name!r} (from {self.source}) is a POSIX rule with daylight "
                            f"saving or a fractional offset, which {what} cannot take; set `timezone: Area/City` "
                            "(an IANA name, e.g. Asia/Jakarta) in drtool.yaml and export again")
        return self.export_name


def settings_zone(settings: Any) -> EffectiveZone:
    """The effective zone of loaded Settings; a bad zone is a UsageError (exit 2), never a traceback."""
    from drtool.errors import UsageError

    try:
        return effective_zone(settings.config.timezone)
    except ZoneError as exc:
        raise UsageError(str(exc), hint="fix `timezone:` in drtool.yaml or the TZ variable") from None


def settings_timezone(settings: Any) -> ZoneInfo:
    """The tzinfo the daemon and `schedule show` compute with (see settings_zone)."""
    return settings_zone(settings).tz


def effective_zone(configured: str | None, environ: Mapping[str, str] | None = None,
                   localtime: str = "/etc/localtime") -> EffectiveZone:
    """The zone schedules run in; ZoneError when the configured name or TZ is unusable."""
    environ = os.environ if environ is None else environ
    if configured:
        return EffectiveZone(iana_zone(configured), configured, "drtool.yaml timezone:", configured)
    if "TZ" in environ:
        return _from_tz_variable(environ["TZ"])
    name = system_zone_name(localtime)
    if name:
        try:
            return EffectiveZone(iana_zone(name), name, localtime, name)
        except ZoneError:
            pass
    return EffectiveZone(ZoneInfo("UTC"), "UTC", "default (no timezone:, no TZ, no system zone)", "UTC")


def iana_zone(name: str) -> ZoneInfo:
    """ZoneInfo for an IANA name, or ZoneError with the closest known names."""
    if not isinstance(name, str) or not name.strip():
        raise ZoneError("a time zone name cannot be empty; use an IANA name such as Asia/Jakarta or UTC")
    try:
        return ZoneInfo(name)
    except (KeyError, ValueError, OSError, UnicodeError):    # ZoneInfoNotFoundError is a KeyError
        raise ZoneError(f"unknown time zone {name!r}{suggest(name)}") from None


def suggest(name: str) -> str:
    """'; did you mean Asia/Jakarta?' from the zones this machine knows, or ''."""
    known = sorted(available_timezones())
    by_lower = {k.lower(): k for k in known}
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=3, cutoff=0.6)
    if close:
        return "; did you mean " + " or ".join(by_lower[c] for c in close) + "?"
    return "; use an IANA name such as Asia/Jakarta, Asia/Makassar or UTC (see `timedatectl list-timezones`)"


def system_zone_name(localtime: str = "/etc/localtime") -> str | None:
    try:
        target = os.readlink(localtime)
    except OSError:
        target = ""
    if "zoneinfo/" in target:
        return target.split("zoneinfo/", 1)[1]
    try:   # a copied file instead of a symlink: Debian also writes the name here
        text = Path(localtime).with_name("timezone").read_text().strip()
    except (OSError, UnicodeError):
        return None
    return text or None


def _from_tz_variable(value: str) -> EffectiveZone:
    if value == "":
        return EffectiveZone(ZoneInfo("UTC"), "UTC", "TZ= (set but empty)", "UTC")     # glibc: empty is UTC
    spec = value[1:] if value.startswith(":") else value
    if spec.startswith("/"):
        key = _key_of_path(spec)
        if key is None:
            raise ZoneError(f"TZ={value!r} names a file outside the zoneinfo directories; "
                            "set TZ to an IANA name such as Asia/Jakarta")
        spec = key
    try:
        return EffectiveZone(ZoneInfo(spec), spec, f"TZ={value}", spec)
    except (KeyError, ValueError, OSError, UnicodeError):
        pass
    if not value.startswith(":") and _POSIX.match(spec):
        return _posix_zone(spec)
    raise ZoneError(f"TZ={value!r} is neither a known time zone nor a POSIX rule (like WIB-7){suggest(spec)}")


def _key_of_path(path: str) -> str | None:
    resolved = os.path.normpath(path)
    for base in ZONEINFO_DIRS:
        if resolved.startswith(base + "/"):
            return resolved[len(base) + 1:]
    return None


@functools.lru_cache(maxsize=64)
def _posix_zone(rule: str) -> EffectiveZone:
    # zoneinfo reads POSIX rules only from a TZif footer: build a TZif with no transitions
    # whose footer is the rule, so DST rules work exactly as glibc applies them.
    try:
        tz = ZoneInfo.from_file(io.BytesIO(_tzif_with_footer(rule)), key=rule)
        datetime(2000, 1, 1, tzinfo=timezone.utc).astimezone(tz)
    except (ValueError, OSError, IndexError, struct.error):
        raise ZoneError(f"TZ={rule!r} is not a valid POSIX time zone rule (e.g. WIB-7 or "
                        "EST5EDT,M3.2.0,M11.1.0); or use an IANA name such as Asia/Jakarta") from None
    return EffectiveZone(tz, rule, f"TZ={rule}", _fixed_offset_name(rule, tz))


def _tzif_with_footer(rule: str) -> bytes:
    def block() -> bytes:    # header (no transitions, one UTC type, 4 bytes of names) and its data
        return b"TZif2" + b"\0" * 15 + struct.pack(">6l", 0, 0, 0, 0, 1, 4) + struct.pack(">lBB", 0, 0, 0) + b"UTC\0"
    return block() + block() + b"\n" + rule.encode("ascii") + b"\n"


def _fixed_offset_name(rule: str, tz: ZoneInfo) -> str | None:
    """Etc/GMT-7 for a fixed whole-hour offset of +7 (the Etc names have the sign inverted)."""
    if "," in rule or re.search(r"\d[A-Za-z<]", rule):
        return None                                                     # has a DST part
    offsets = {datetime(2001, m, 1, tzinfo=timezone.utc).astimezone(tz).utcoffset() for m in (1, 7)}
    if len(offsets) != 1:
        return None
    offset = offsets.pop() or timedelta(0)
    hours, rest = divmod(int(offset.total_seconds()), 3600)
    if rest or not -12 <= hours <= 14:
        return None
    return "UTC" if hours == 0 else f"Etc/GMT{-hours:+d}"
