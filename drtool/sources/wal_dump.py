"""How far a partial WAL copy is valid: PostgreSQL's own pg_waldump reads it.

pg_receivewal pre-allocates the segment it writes with zeros, and a WAL record may itself
end in zero bytes, so "the last non-zero byte" can stop a few bytes short of the real end:
on an idle server the copy would never be proven to hold the insert position. pg_waldump
walks the records and stops at the first invalid one; its error names where:

    pg_waldump: error: error in WAL record at 0/3002720: invalid record length at 0/3002758: wanted 24, got 0

The second position is the end of the valid WAL; when the message has none (a record cut
at a page that is not there yet), the first one (the start of the last valid record) is a
safe lower bound. Without pg_waldump the non-zero length is used: it may claim less, never more.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from drtool.errors import CommandError
from drtool.execute import LocalRunner
from drtool.sources.wal_names import Segment, format_lsn, parse_lsn

_ERROR = re.compile(r"error in WAL record at ([0-9A-Fa-f]+/[0-9A-Fa-f]+): (.*)")
_AT = re.compile(r"\bat ([0-9A-Fa-f]+/[0-9A-Fa-f]+)")


def waldump_argv(binary: str, directory: str, seg: Segment, segsize: int) -> list[str]:
    return [binary, "-q", "-p", directory, "-s", format_lsn(seg.start_lsn(segsize)), seg.name(segsize)]


def valid_end(stderr: str) -> int | None:
    """Pure: the LSN up to which pg_waldump found valid WAL, from its error text (None: unknown)."""
    match = _ERROR.search(stderr)
    if not match:
        return None
    inner = _AT.search(match.group(2))
    return parse_lsn(inner.group(1) if inner else match.group(1))


def find_waldump(bin_dir: str | None) -> str | None:
    """pg_waldump beside the client tools, or of an installed server (Debian: postgresql-NN)."""
    candidates = [os.path.join(bin_dir, "pg_waldump")] if bin_dir else []
    from drtool.scratch.postgres import installed_majors
    candidates += [os.path.join(d, "pg_waldump") for _m, d in sorted(installed_majors().items(), reverse=True)]
    return next((c for c in candidates if os.access(c, os.X_OK)), None)


def valid_offset(binary: str, work: Path, seg: Segment, data: bytes, segsize: int) -> int | None:
    """Bytes of `data` (a copy of segment `seg`) that hold valid WAL; None when pg_waldump cannot say."""
    work.mkdir(mode=0o700, exist_ok=True)
    path = work / seg.name(segsize)
    try:
        with open(path, "wb") as fh:
            fh.write(data)
            fh.truncate(segsize)            # sparse zeros: pg_waldump reads whole pages
        result = LocalRunner().run(waldump_argv(binary, str(work), seg, segsize), timeout=60, check=False)
    except (OSError, CommandError):
        return None
    finally:
        path.unlink(missing_ok=True)
    end = valid_end(result.stderr.decode("utf-8", "replace"))
    if end is None or not seg.start_lsn(segsize) <= end <= seg.start_lsn(segsize) + segsize:
        return None
    return end - seg.start_lsn(segsize)
