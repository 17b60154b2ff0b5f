"""Parent-death watch: a worker process ends when the process that started it is gone.

A flow process killed with SIGKILL runs no clean-up: the processes it started live on unless each
notices. Measured on Linux (tests/test_orphans.py): Dask's `LocalCluster` processes already end
within a second (distributed's `AsyncProcess` watches a pipe to its parent) and a private local
Ray ends within seconds (Ray binds its processes to the driver with `PR_SET_PDEATHSIG` or its
reaper). Process-pool workers do not: `concurrent.futures` workers busy with a task never look.
`exit_with_parent()` is what they run.

A polling thread rather than `prctl(PR_SET_PDEATHSIG)`: that signal fires when the parent
*thread* that spawned the child ends (a pool may spawn from a short-lived thread), needs ctypes,
and exists only on Linux. Polling `os.getppid()` works on every POSIX system and costs one system
call per interval: when the parent dies the child is re-parented, so its parent pid changes.
"""

from __future__ import annotations

import os
import threading

#: seconds between two looks at the parent
INTERVAL_S = 0.5
#: exit status of a process ended because its parent was gone (EX_SOFTWARE)
EXIT_STATUS = 70

_lock = threading.Lock()
_watching: int | None = None


def _watch(parent: int, interval: float) -> None:
    stop = threading.Event()
    while not stop.wait(interval):
        if os.getppid() != parent:
            os._exit(EXIT_STATUS)  # no clean-up: whoever could use this process's work is gone


def exit_with_parent(interval: float = INTERVAL_S) -> bool:
    """End this process (`os._exit`) within `interval` seconds of its parent's death.

    Starts one daemon thread per process (later calls do nothing); returns True if this call
    started it. Only for processes that exist to serve their parent (pool workers).
    """
    global _watching
    if os.name != "posix":
        return False
    with _lock:
        if _watching == os.getpid():
            return False
        _watching = os.getpid()
        parent = os.getppid()
    threading.Thread(target=_watch, args=(parent, interval), name="scalegroups-parent-watch", daemon=True).start()
    return True
