"""StreamReader over restic: read back the streams of one snapshot set."""

from __future__ import annotations

import os
import posixpath
import shutil
import tarfile
import threading
from collections.abc import Callable
from pathlib import Path

from drtool.engine.restic import Restic, Snapshot
from drtool.errors import CommandError, DrtoolError, RestoreRefused, SourceError
from drtool.safe_paths import TarMemberGuard, safe_stream_name

CHUNK = 1 << 20


class ResticProcess:
    """`restic dump` as a Process, watched like every restic drtool runs: once its storage has
    failed for longer than wait_unavailable it is stopped (restic alone retries each blob for
    over a minute, and a restore needs many), and its error text says so first. The password
    pipe and the watch are closed when it ends."""

    def __init__(self, restic: Restic, snapshot_id: str, path: str) -> None:
        self._restic = restic
        self._proc, self._pw = restic.dump(snapshot_id, path)
        self._watch = restic.watch_retries(self._proc)
        self.argv, self.stdin, self.stdout = self._proc.argv, self._proc.stdin, self._proc.stdout

    def wait(self, timeout: float | None = None) -> int:
        code = self._proc.wait(timeout)
        self.close()
        return code

    def poll(self) -> int | None:
        return self._proc.poll()

    def kill(self) -> None:
        self._proc.kill()

    def terminate(self) -> None:
        self._proc.terminate()

    def stderr_tail(self) -> str:
        tail = self._proc.stderr_tail()
        if self._watch.gave_up_after is not None:
            return f"{self._watch.error().message}\n{tail}"
        return tail

    def failure(self, code: int) -> DrtoolError:
        """The typed error of a dump that ended with `code` (not 0)."""
        if self._watch.gave_up_after is not None:
            return self._watch.error()
        return self._restic.error(code, self._proc.stderr_tail(), ["dump"])

    def close(self) -> None:
        self._watch.close()
        self._pw.close()


class ResticStreamReader:
    def __init__(self, restic: Restic, streams: dict[str, Snapshot], sizes: dict[str, int] | None = None) -> None:
        bad = sorted(name for name in streams if not safe_stream_name(name))
        if bad:
            # Stream names come from the snapshots' tags and become temp file names during restores.
            raise RestoreRefused(f"the snapshot set has stream(s) named {', '.join(map(repr, bad))}, which are not "
                                 "plain file names; nothing was written",
                                 hint="these snapshots were not made by drtool; restore them by hand with restic")
        self.restic = restic
        self.streams = streams
        self._sizes = dict(sizes or {})

    def names(self) -> list[str]:
        return sorted(n for n in self.streams if n != "fingerprint.json")

    def open(self, name: str) -> ResticProcess:
        return ResticProcess(self.restic, self.streams[name].id, f"/{name}")

    def save(self, name: str, dest: Path) -> int:
        proc = self.open(name)
        total = 0
        try:
            with open(dest, "wb") as out:
                for chunk in iter(lambda: proc.stdout.read(CHUNK), b""):
                    out.write(chunk)
                    total += len(chunk)
            code = proc.wait(3600)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)
        if code != 0:
            raise proc.failure(code)
        return total

    def read_bytes(self, name: str, limit: int = 64 << 20) -> bytes:
        proc = self.open(name)
        data = proc.stdout.read(limit + 1)
        code = proc.wait(600)
        if code != 0:
            raise proc.failure(code)
        if len(data) > limit:
            raise DrtoolError(f"stream {name} is larger than expected")
        return data

    def size(self, name: str) -> int | None:
        if name in self._sizes:
            return self._sizes[name]
        try:
            stats = self.restic.stats(self.streams[name].id)
            self._sizes[name] = int(stats.get("total_size", 0)) or None  # type: ignore[assignment]
        except DrtoolError:
            return None
        return self._sizes[name]


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def extract_dump(restic: Restic, snapshot_id: str, path: str, runner, dest: str, *,  # noqa: ANN001 - a Runner
                 timeout: float, where: str = "here") -> int:
    """`restic dump SNAP PATH` (a tar archive) piped into `tar -x -C DEST` run by `runner`
    (here or on a host); owners and modes are restored by number, as restic does. Returns the
    bytes. Every chunk passes a TarMemberGuard before tar sees it: a member whose name leaves
    DEST (absolute, `..`, below a symlink of the archive) stops the restore before it is written
    (whatever tar runs there, GNU or not)."""
    dump = ResticProcess(restic, snapshot_id, path)
    untar = None
    expired = threading.Event()
    guard = TarMemberGuard()

    def expire() -> None:
        expired.set()
        for proc in (dump, untar):
            if proc is not None:
                proc.kill()

    watchdog = threading.Timer(timeout, expire)
    watchdog.daemon = True
    watchdog.start()
    total = 0
    try:
        untar = runner.start(["tar", "-x", "-f", "-", "-C", dest, "--numeric-owner", "--same-permissions"],
                             stdin=True)
        assert untar.stdin is not None
        try:
            for chunk in iter(lambda: dump.stdout.read(CHUNK), b""):
                guard.feed(chunk)
                if guard.problem:
                    break
                untar.stdin.write(chunk)
                total += len(chunk)
            if guard.problem:
                for proc in (untar, dump):
                    proc.kill()
            else:
                untar.stdin.close()
        except (BrokenPipeError, OSError, ValueError):
            pass   # tar stopped reading: its exit status says why
        tcode = untar.wait(timeout)
        dcode = dump.wait(timeout)
    except BaseException:
        for proc in (dump, untar):
            if proc is not None:
                proc.kill()
        raise
    finally:
        watchdog.cancel()
        dump.close()
    if guard.problem:
        raise SourceError(f"restore into {dest} {where} stopped: {guard.problem}; it was not written",
                          hint=f"{guard.members - 1} member(s) before it were extracted into {dest}; "
                               "this snapshot was not made by drtool: look at it with `restic ls` before restoring")
    if expired.is_set():
        raise CommandError(untar.argv, None, untar.stderr_tail(), what=f"restoring into {dest} {where}",
                           hint=f"it took longer than {timeout:.0f}s")
    if dcode != 0:
        raise dump.failure(dcode)
    if tcode != 0:
        raise CommandError(untar.argv, tcode, untar.stderr_tail(), what=f"tar extracting into {dest} {where}",
                           hint="the restore is incomplete; check free space and the target's file system")
    return total


def walk_dump_tar(restic: Restic, snapshot_id: str, path: str,
                  visit: "Callable[[tarfile.TarFile, tarfile.TarInfo, str], None]", *, what: str) -> set[str]:
    """Stream `restic dump SNAP PATH` as a tar archive, calling visit(archive, member, rel) for
    each member (rel: normalised, no leading '/'). Returns every rel seen plus the parent
    directories tar creates without them being members. Nothing is kept in memory."""
    seen: set[str] = set()
    dump = ResticProcess(restic, snapshot_id, path)
    try:
        with tarfile.open(fileobj=dump.stdout, mode="r|") as archive:
            for member in archive:
                rel = os.path.normpath(member.name).lstrip("/")
                if rel in (".", ""):
                    continue
                seen.add(rel)
                visit(archive, member, rel)
        code = dump.wait(600)
    except tarfile.TarError as exc:
        dump.kill()
        raise CommandError(dump.argv, None, str(exc), what=what) from None
    finally:
        if dump.poll() is None:
            dump.kill()
        dump.close()
    if code != 0:
        raise dump.failure(code)
    todo = {posixpath.dirname(p) for p in seen} - seen - {""}
    while todo:
        seen |= todo
        todo = {posixpath.dirname(p) for p in todo} - seen - {""}
    return seen
