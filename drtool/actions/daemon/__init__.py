"""Use case: `drtool daemon`, the nightly scheduler. See loop.py for how the parts fit."""

from drtool.actions.daemon.dispatch import JobRequest, default_dispatch
from drtool.actions.daemon.jobs import JobInfo, build_jobs, conflicts
from drtool.actions.daemon.loop import Daemon, run_daemon
from drtool.actions.daemon.watchdog import default_snapshot_time
from drtool.rotation import next_subset
from drtool.timezones import settings_timezone

__all__ = ["Daemon", "JobInfo", "JobRequest", "build_jobs", "conflicts", "default_dispatch", "default_snapshot_time",
           "next_subset", "run_daemon", "settings_timezone"]
