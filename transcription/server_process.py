"""The server process a session is recorded with: host, pid and start time.

A starting server closes at once the sessions of processes of its own host that are
gone (`services.sessions_close_abandoned`): a pid that no longer runs, or runs with
another start time (the pid was reused). Start times come from /proc on Linux, so
that this process's own value and the one read back for any pid agree; elsewhere a
process's start time is when this module was imported, and only "no such pid" tells
a process is gone.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
from pathlib import Path

# /proc's start time is in clock ticks after boot, and boot time is whole seconds
# (recomputed on each read, so it may move by one): values closer than this match.
SAME_START_SECONDS = 2.0


def _boot_time() -> float | None:
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("btime "):
                return float(line.split()[1])
    except OSError:
        pass
    return None


def started_at(pid: int) -> dt.datetime | None:
    """When process `pid` started, from /proc (None: no such process, or no /proc)."""
    boot = _boot_time()
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    if boot is None:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after it.
    fields = stat[stat.rindex(")") + 2 :].split()
    ticks = int(fields[19])  # field 22, starttime
    seconds = boot + ticks / os.sysconf("SC_CLK_TCK")
    return dt.datetime.fromtimestamp(seconds, tz=dt.UTC)


HOST = socket.gethostname()[:255]
PID = os.getpid()
STARTED_AT = started_at(PID) or dt.datetime.now(tz=dt.UTC)


def current() -> dict:
    """This process, as AudioSession's server_* fields (one value per process)."""
    return {"server_host": HOST, "server_pid": PID, "server_started_at": STARTED_AT}


def is_running(pid: int | None, started: dt.datetime | None) -> bool:
    """Whether the process recorded as (`pid`, `started`) on this host still runs."""
    if pid is None:
        return True  # recorded before processes were: the heartbeat rule decides
    if pid == os.getpid():
        return started is None or _same(started, STARTED_AT)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    actual = started_at(pid)
    if actual is None or started is None:
        return True  # cannot tell a reused pid: it runs
    return _same(started, actual)


def _same(a: dt.datetime, b: dt.datetime) -> bool:
    return abs((a - b).total_seconds()) < SAME_START_SECONDS
