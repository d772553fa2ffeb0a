"""Run one program and take every process it leaves behind down with it.

    python3 -I -S /path/to/drtool/supervise.py PROGRAM [ARGS...]

drtool runs hooks and drill `command:` steps through this small supervisor. A
process group is not enough: a program that double-forks and calls setsid()
leaves its group and session, and then survives a timeout (or keeps drtool's
pipes open, so drtool waits on them forever). The supervisor makes itself a
*child subreaper* (Linux PR_SET_CHILD_SUBREAPER), so every orphan below it is
re-parented to it rather than to init, however it detached:

- when the program exits, every process still below the supervisor is killed and
  reaped, and the supervisor exits with the program's exit code;
- on SIGTERM / SIGINT / SIGHUP (drtool's timeout or shutdown) it kills the whole
  tree and exits 128+signal;
- it dies with drtool (PR_SET_PDEATHSIG), and then does the same.

Standard library only, started with -I -S: it costs ~15 ms per hook or command.
It must not import drtool (it is run as a file, in a fresh interpreter).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
KILL_ROUNDS = 50


def _prctl(option: int, value: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}) failed")


def descendants(root: int) -> list[int]:
    """Every process below `root`, from /proc (children before grandchildren)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        # Field 4 is the parent pid; the command name (field 2) may hold spaces and parens.
        fields = stat[stat.rfind(b")") + 2:].split()
        children.setdefault(int(fields[1]), []).append(int(name))
    out: list[int] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def kill_tree(root: int) -> None:
    """SIGKILL everything below `root` and reap what was re-parented to us, until nothing is left."""
    for _ in range(KILL_ROUNDS):
        found = descendants(root)
        if not found:
            return
        for pid in found:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _reap_all()
        time.sleep(0.01)


def _reap_all() -> None:
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: supervise.py PROGRAM [ARGS...]", file=sys.stderr)
        return 2
    me = os.getpid()
    _prctl(PR_SET_CHILD_SUBREAPER, 1)

    def stop(signum: int, _frame: object) -> None:
        kill_tree(me)
        os._exit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, stop)
    try:
        pid = os.fork()
    except OSError as exc:
        print(f"cannot start {argv[0]}: {exc.strerror}", file=sys.stderr)
        return 126
    if pid == 0:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        try:
            os.execvp(argv[0], argv)
        except FileNotFoundError:
            print(f"{argv[0]}: command not found", file=sys.stderr)
            os._exit(127)
        except OSError as exc:
            print(f"{argv[0]}: {exc.strerror}", file=sys.stderr)
            os._exit(126)
    code = 1
    while True:
        try:
            done, status = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        if done == pid:
            code = os.waitstatus_to_exitcode(status)
            break
    kill_tree(me)
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
