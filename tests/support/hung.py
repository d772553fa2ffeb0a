"""Where a hung drtool process stands: for test failures that must say more than "timed out"."""

from __future__ import annotations

import shutil
import subprocess


def hung_process_report(pid: int) -> str:
    """Where a hung drtool stands: its children, and its Python threads' stacks when py-spy is
    installed (a hang seen once under load must say where it was)."""
    tree = subprocess.run(["ps", "-o", "pid,ppid,stat,etime,args", "--ppid", str(pid)],
                          capture_output=True, text=True).stdout
    stacks = "(py-spy not installed)"
    if shutil.which("py-spy"):
        spy = subprocess.run(["py-spy", "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=60)
        stacks = spy.stdout[-12000:] or spy.stderr[-2000:]
    return f"children:\n{tree}\nthreads:\n{stacks}"
