"""The restore_command drtool provides: WAL fetched from the repository while PostgreSQL recovers.

PostgreSQL runs `restore_command` through the shell, as its own OS user, in the data
directory, once per file it wants (%f: the WAL file name, %p: where to put it), and
takes any non-zero exit as "no such file" (recovery then ends and the server promotes),
except an exit above 125, which aborts recovery. So:

- the command PostgreSQL runs is a 30-line client (`walfetch.py`, run with the system
  python3, no drtool needed) that asks a broker over a unix socket (0600, owned by the
  postgres user, in the cluster's 0700 directory) and writes what it gets to %p;
- the broker is a thread of the drtool process that runs the recovery. It alone holds the
  repository password (it reaches restic through a pipe, as everywhere else): no file, no
  argv and no environment of the postgres user ever holds a secret;
- it answers only for the files of the restore plan: a name the plan does not hold is
  "absent" (exit 1: the normal end of recovery); a batch restic cannot read, or a file whose
  sha256 differs from its batch's manifest, is an error (exit 150: recovery stops loudly,
  never ends early as if the WAL ended there);
- one `restic restore` per batch, not per segment; the batch stays in a private cache until
  its files were served; a partial copy is padded with zeros to the segment size;
- `prefetch()` fetches the batches in the order recovery will want them while the base backup
  is still being extracted, at most PREFETCH_AHEAD batches ahead of what was served;
- every request is logged (`requests`), so the recovery can be checked afterwards.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from drtool.engine.restic import Restic
from drtool.errors import DrtoolError
from drtool.scratch.common import private_dir
from drtool.sources.wal_chain import FileRef
from drtool.sources.wal_spool import MANIFEST

log = logging.getLogger(__name__)

ABORT_CODE = 150                       # > 125: PostgreSQL aborts recovery instead of ending it
NAME_RE = re.compile(r"^[0-9A-F]{24}$|^[0-9A-F]{8}\.history$")
RESTORE_TIMEOUT_S = 3600.0
PREFETCH_AHEAD = 4                     # batches in the cache not yet served (bounds its disk use)

CLIENT = r'''"""drtool's restore_command client: ask drtool's WAL broker for %f, write it to %p."""
import os, socket, sys

def main():
    sock_path, name, dest = sys.argv[1:4]
    try:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.settimeout(@TIMEOUT@)
        conn.connect(sock_path)
        conn.sendall(("FETCH %s\n" % name).encode())
        reply = conn.makefile("rb")
        head = reply.readline().decode("utf-8", "replace").split(" ", 1)
        if head[0].strip() == "ABSENT":
            return 1
        if head[0] != "OK":
            sys.stderr.write("drtool wal fetch of %s: %s\n" % (name, " ".join(head).strip()))
            return @ABORT@
        left = int(head[1])
        tmp = dest + ".drtool-part"
        with open(tmp, "wb") as out:
            while left:
                chunk = reply.read(min(left, 1 << 20))
                if not chunk:
                    raise EOFError("the broker closed the connection early")
                out.write(chunk)
                left -= len(chunk)
        os.replace(tmp, dest)
        return 0
    except Exception as exc:
        sys.stderr.write("drtool wal fetch of %s failed: %s\n" % (name, exc))
        return @ABORT@

sys.exit(main())
'''


@dataclass
class Request:
    name: str
    result: str                        # "served" | "absent" | "error"
    at: float
    detail: str = ""


class WalBroker:
    """Serves the plan's WAL files over a unix socket; see the module docstring."""

    def __init__(self, restic: Restic, files: dict[str, FileRef], segsize: int, directory: Path,
                 owner: str | None) -> None:
        self.restic, self.files, self.segsize = restic, files, segsize
        self.directory = Path(directory)
        self.owner = owner
        self.socket_path = self.directory / "walfetch.sock"
        self.client_path = self.directory / "walfetch.py"
        self.requests: list[Request] = []
        self.batches_fetched = 0
        self._cache = private_dir("walcache")
        self._fetch_lock = threading.Lock()
        self._server: socket.socket | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._prefetcher: threading.Thread | None = None
        self.prefetch_error: str | None = None

    # ------------------------------------------------------------ lifecycle

    def __enter__(self) -> "WalBroker":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self.client_path.write_text(CLIENT.replace("@TIMEOUT@", str(int(RESTORE_TIMEOUT_S)))
                                    .replace("@ABORT@", str(ABORT_CODE)))
        self.client_path.chmod(0o644)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.socket_path.unlink(missing_ok=True)
        server.bind(str(self.socket_path))
        os.chmod(self.socket_path, 0o600)
        if self.owner and os.geteuid() == 0:
            for path in (self.socket_path, self.client_path):
                shutil.chown(path, self.owner, self.owner)
        server.listen(4)
        server.settimeout(0.5)
        self._server = server
        self._thread = threading.Thread(target=self._serve, name="wal-broker", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._prefetcher is not None:
            self._prefetcher.join(RESTORE_TIMEOUT_S)
        if self._server is not None:
            self._server.close()
        self.socket_path.unlink(missing_ok=True)
        self.client_path.unlink(missing_ok=True)
        shutil.rmtree(self._cache, ignore_errors=True)

    def prefetch(self) -> None:
        """Fetch the plan's batches ahead of recovery, in the order of the segments they serve."""
        first: dict[str, str] = {}
        for name, ref in sorted(self.files.items()):
            first.setdefault(ref.snapshot_id, name)
        order = sorted(first, key=first.get)  # type: ignore[arg-type]
        self._prefetcher = threading.Thread(target=self._prefetch, args=(order,), name="wal-prefetch", daemon=True)
        self._prefetcher.start()

    def _prefetch(self, order: list[str]) -> None:
        for snapshot_id in order:
            while self._waiting() >= PREFETCH_AHEAD:
                if self._stop.wait(0.2):
                    return
            if self._stop.is_set():
                return
            try:
                with self._fetch_lock:
                    if not (self._cache / snapshot_id).exists():
                        self._restore_batch(snapshot_id)
            except DrtoolError as exc:     # the request for it will fail loudly, with this reason
                self.prefetch_error = exc.message.splitlines()[0]
                return

    def _waiting(self) -> int:
        """Batches in the cache with files still to serve."""
        return sum(1 for d in self._cache.iterdir() if d.is_dir() and not d.name.endswith(".part")
                   and any(f.name != MANIFEST for f in d.iterdir()))

    def restore_command(self, python: str) -> str:
        """The restore_command line (no secret in it: a socket path and the placeholders). Only the
        client's own 0 (served) and 1 (absent) pass; anything else (python missing, the script gone)
        becomes the abort code, so no failure can pass for the end of the WAL."""
        import shlex
        client = " ".join([shlex.quote(python), "-I", "-S", shlex.quote(str(self.client_path)),
                           shlex.quote(str(self.socket_path)), "%f", "%p"])
        return f"{client}; r=$?; [ $r -le 1 ] && exit $r; exit {ABORT_CODE}"

    # ------------------------------------------------------------ serving

    def _serve(self) -> None:
        assert self._server is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(RESTORE_TIMEOUT_S)
            try:
                line = conn.makefile("rb").readline(200).decode("ascii", "replace").strip()
            except OSError:
                return
            name = line.removeprefix("FETCH ").strip()
            if not line.startswith("FETCH ") or not NAME_RE.match(name):
                conn.sendall(b"ERROR bad request\n")
                return
            try:
                data = self.fetch(name)
            except DrtoolError as exc:
                self.requests.append(Request(name, "error", time.time(), exc.message.splitlines()[0][:300]))
                conn.sendall(f"ERROR {exc.message.splitlines()[0][:300]}\n".encode())
                return
            if data is None:
                self.requests.append(Request(name, "absent", time.time()))
                conn.sendall(b"ABSENT\n")
                return
            try:
                conn.sendall(f"OK {len(data)}\n".encode() + data)
                self.requests.append(Request(name, "served", time.time()))
            except OSError as exc:
                self.requests.append(Request(name, "error", time.time(), f"sending failed: {exc}"))

    def fetch(self, name: str) -> bytes | None:
        """The file's bytes as PostgreSQL must get them; None when the plan does not hold it."""
        ref = self.files.get(name)
        if ref is None:
            return None
        with self._fetch_lock:
            batch_dir = self._batch(ref.snapshot_id, ref.stored_as)
            path = batch_dir / ref.stored_as
            data = path.read_bytes()
            self._verify(batch_dir, ref.stored_as, data)
            path.unlink()                  # served: the cache holds only what is still to come
            if not any(f.name != MANIFEST for f in batch_dir.iterdir()):
                shutil.rmtree(batch_dir, ignore_errors=True)
        if ref.partial_bytes is not None:
            data = data + bytes(self.segsize - len(data))
        return data

    def _batch(self, snapshot_id: str, wanted: str) -> Path:
        """The batch's files in the cache: one `restic restore` per batch (again if a file is
        asked for twice, e.g. after recovery restarted)."""
        target = self._cache / snapshot_id
        if not (target / wanted).exists():
            self._restore_batch(snapshot_id)
        return target

    def _restore_batch(self, snapshot_id: str) -> None:
        target = self._cache / snapshot_id
        shutil.rmtree(target, ignore_errors=True)
        partial = self._cache / f"{snapshot_id}.part"
        shutil.rmtree(partial, ignore_errors=True)
        self.restic.restore(snapshot_id, partial, timeout=RESTORE_TIMEOUT_S)
        partial.rename(target)
        self.batches_fetched += 1

    def _verify(self, batch_dir: Path, stored_as: str, data: bytes) -> None:
        try:
            manifest = json.loads((batch_dir / MANIFEST).read_text())
            expected = manifest["files"][stored_as]
        except (OSError, ValueError, KeyError):
            raise DrtoolError(f"WAL batch {batch_dir.name} has no manifest entry for {stored_as}") from None
        if len(data) != expected["size"] or hashlib.sha256(data).hexdigest() != expected["sha256"]:
            raise DrtoolError(f"{stored_as} from WAL batch {batch_dir.name[:8]} does not match its manifest "
                              "(sha256): the batch is damaged")

    # ------------------------------------------------------------ afterwards

    def errors(self) -> list[Request]:
        return [r for r in self.requests if r.result == "error"]

    def served(self) -> list[str]:
        return [r.name for r in self.requests if r.result == "served"]


def client_python() -> str:
    """A python3 the postgres OS user can run (the client needs nothing but the standard library)."""
    import sys
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.access(candidate, os.X_OK):
            return candidate
    return sys.executable
