"""Producer program for SQLite backups: `python -m drtool.sources.sqlite_dump ...`.

    sqlite_dump PATH             copy PATH with the backup API, write the copy to
                                 stdout, remove it (a self-contained producer)
    sqlite_dump snapshot PATH    make the copy in a new private 0700 directory,
                                 print {"dir", "copy", "tables"} as JSON
    sqlite_dump snapshot-content PATH
                                 the same, plus "content": every table's content hash
    sqlite_dump cat COPY         write COPY to stdout
    sqlite_dump remove DIR       remove a directory made by `snapshot`

It runs as its own process (through a Runner, so also on a remote host) and
exits non-zero with a message on stderr on any error. The backup API gives a
consistent copy while writers are active: the copy is made in one step inside
one read transaction (WAL: writers go on; rollback journal: writers wait at
most the busy timeout).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import sys
import tempfile
from pathlib import Path

DIR_PREFIX = "drtool-sqlite-copy-"
BUSY_TIMEOUT_MS = 30_000
HASH_METHOD = "sqlite-blake2b-sum-v1"
CHUNK = 1 << 20


def open_readonly(path: Path) -> sqlite3.Connection:
    # mode=ro: a missing file is an error instead of a new empty database.
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist or is not a file")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    return conn


def backup_copy(src: Path, dest: Path) -> None:
    """A consistent copy of `src` at `dest` (one backup step = one read transaction)."""
    source = open_readonly(src)
    target = sqlite3.connect(dest)
    try:
        source.backup(target, pages=-1)
        problems = target.execute("PRAGMA quick_check").fetchall()
        if problems != [("ok",)]:
            raise sqlite3.DatabaseError(f"copy of {src} fails quick_check: {problems[:5]}")
    finally:
        target.close()
        source.close()


def table_counts(path: Path) -> dict[str, int]:
    conn = open_readonly(path)
    try:
        names = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
        return {name: conn.execute(f'SELECT COUNT(*) FROM "{name.replace(chr(34), chr(34) * 2)}"').fetchone()[0]
                for name in names}
    finally:
        conn.close()


class _Text:
    """A TEXT value as stored (sqlite3 text_factory): kept apart from BLOBs, never decoded."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


def _value_bytes(value: object) -> bytes:
    """A value with its storage class and length: 1 and '1' and b'1' all differ."""
    if value is None:
        tag, data = b"n", b""
    elif isinstance(value, int):
        tag, data = b"i", str(value).encode()
    elif isinstance(value, float):
        tag, data = b"r", repr(value).encode()      # repr: the shortest exact form
    elif isinstance(value, _Text):                   # TEXT: its stored bytes, even if not UTF-8
        tag, data = b"t", value.data
    elif isinstance(value, str):
        tag, data = b"t", value.encode("utf-8")
    else:                                            # BLOB
        tag, data = b"b", bytes(value)  # type: ignore[arg-type]
    return tag + str(len(data)).encode() + b":" + data


def table_hashes(path: Path) -> dict[str, str]:
    """Per table, the exact sum of a 64-bit BLAKE2b of each row: independent of row order."""
    conn = open_readonly(path)
    try:
        names = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
        conn.text_factory = _Text       # hash the stored bytes; never fail decoding bad UTF-8
        out: dict[str, str] = {}
        for name in names:
            total = 0
            for row in conn.execute(f'SELECT * FROM "{name.replace(chr(34), chr(34) * 2)}"'):
                digest = hashlib.blake2b(b"".join(_value_bytes(v) for v in row), digest_size=8).digest()
                total += int.from_bytes(digest, "big", signed=True)
            out[name] = str(total)
        return out
    finally:
        conn.close()


def snapshot(src: Path, *, content: bool = False) -> dict[str, object]:
    workdir = Path(tempfile.mkdtemp(prefix=DIR_PREFIX))  # mkdtemp: 0700
    try:
        copy = workdir / src.name
        backup_copy(src, copy)
        info: dict[str, object] = {"dir": str(workdir), "copy": str(copy), "tables": table_counts(copy),
                                   "size": copy.stat().st_size}
        if content:
            info["content"] = {"method": HASH_METHOD, "tables": table_hashes(copy)}
        return info
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise


def cat(path: Path) -> None:
    out = sys.stdout.buffer
    with open(path, "rb") as f:
        shutil.copyfileobj(f, out, CHUNK)
    out.flush()


def remove(workdir: Path) -> None:
    # Only ever remove what `snapshot` made.
    if not workdir.name.startswith(DIR_PREFIX):
        raise ValueError(f"refusing to remove {workdir}: not a {DIR_PREFIX}* directory")
    shutil.rmtree(workdir)


def one_shot(src: Path) -> None:
    info = snapshot(src)
    try:
        cat(Path(str(info["copy"])))
    finally:
        shutil.rmtree(str(info["dir"]), ignore_errors=True)


def main(argv: list[str]) -> int:
    try:
        if len(argv) == 1:
            one_shot(Path(argv[0]))
        elif len(argv) == 2 and argv[0] in ("snapshot", "snapshot-content"):
            print(json.dumps(snapshot(Path(argv[1]), content=argv[0] == "snapshot-content")))
        elif len(argv) == 2 and argv[0] == "cat":
            cat(Path(argv[1]))
        elif len(argv) == 2 and argv[0] == "remove":
            remove(Path(argv[1]))
        else:
            print("usage: python -m drtool.sources.sqlite_dump [snapshot|snapshot-content|cat|remove] PATH",
                  file=sys.stderr)
            return 2
    except BrokenPipeError:
        print("sqlite_dump: the reader closed the pipe", file=sys.stderr)
        return 1
    except (OSError, sqlite3.Error, ValueError) as exc:
        print(f"sqlite_dump: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
