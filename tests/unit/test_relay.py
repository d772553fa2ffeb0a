"""The byte relay through Python (a stream check sees every byte) between real processes: what a
producer writes arrives whole and in order whatever its pace, the check sees exactly those
bytes, and the wait that lets a nearly empty pipe fill only happens on a pipe that holds 1 MiB."""

from __future__ import annotations

import fcntl
import hashlib
import os
import sys
import tempfile

import pytest

from drtool.engine.relay import CHUNK, relay, widen_pipe
from drtool.execute import LocalRunner

# A producer writing `count` pieces of `size` bytes (a counter in each, so order matters),
# sleeping `pause` seconds between them.
PRODUCER = """
import sys, time
size, count, pause = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
out = sys.stdout.buffer
for i in range(count):
    out.write((b"%08d" % i) * (size // 8) + b"x" * (size % 8))
    out.flush()
    if pause:
        time.sleep(pause)
"""


def _expected(size: int, count: int) -> bytes:
    return b"".join((b"%08d" % i) * (size // 8) + b"x" * (size % 8) for i in range(count))


class HashCheck:
    def __init__(self) -> None:
        self.digest = hashlib.sha256()
        self.feeds = 0

    def feed(self, data: bytes) -> None:
        self.feeds += 1
        self.digest.update(data)

    def finish(self) -> None:
        """Nothing to judge."""


@pytest.mark.parametrize(("size", "count", "pause"), [
    (8192, 4000, 0.0),          # 32 MB in pg_dump-sized writes, as fast as it can
    (3, 200, 0.002),            # a trickle: a few bytes every 2 ms
    (CHUNK + 5, 6, 0.0),        # writes larger than the pipe
    (1, 1, 0.0),
])
def test_the_stream_arrives_whole_and_the_check_sees_it(size: int, count: int, pause: float) -> None:
    runner = LocalRunner()
    with tempfile.TemporaryDirectory() as tmp:
        target = os.path.join(tmp, "out")
        src = runner.start([sys.executable, "-c", PRODUCER, str(size), str(count), str(pause)])
        dst = runner.start([sys.executable, "-c",
                            f"import shutil, sys; shutil.copyfileobj(sys.stdin.buffer, open({target!r}, 'wb'))"],
                           stdin=True)
        check = HashCheck()
        result = relay(src, dst, what="test", check=check, stall=30)
        assert dst.wait(30) == 0 and src.wait(30) == 0
        want = _expected(size, count)
        with open(target, "rb") as got:
            assert got.read() == want
        assert result.complete and result.copied == len(want)
        assert check.digest.digest() == hashlib.sha256(want).digest()


def test_widen_pipe_says_whether_the_pipe_holds_a_chunk(tmp_path) -> None:  # noqa: ANN001
    r, w = os.pipe()
    try:
        with os.fdopen(r, "rb", buffering=0) as reader:
            assert widen_pipe(reader) is True
            assert fcntl.fcntl(reader.fileno(), fcntl.F_GETPIPE_SZ) >= CHUNK
    finally:
        os.close(w)
    with open(tmp_path / "f", "wb") as regular:
        assert widen_pipe(regular) is False        # not a pipe: nothing to widen, no batching
    assert widen_pipe(object()) is False
