"""A thread that does bookkeeping yields the CPU to the threads and processes doing the work.

Linux schedules threads, not processes, and gives each its own nice value: `lower_this_thread`
lowers the calling thread's CPU priority (threads it starts afterwards inherit it) and leaves the
rest of the process as it was. A lowered thread still runs whenever a core is free; when every core
is busy at normal priority it gets little of them, and catches up as soon as one frees.

Elsewhere (macOS, Windows) a thread's id is not something `setpriority` takes: nothing is changed.
"""

from __future__ import annotations

import os
import sys
import threading

MAX_NICE = 19


def lower_this_thread(by: int) -> int | None:
    """Lower the calling thread's CPU priority by `by` nice levels (capped at 19).

    Returns the thread's nice value afterwards, or None where threads cannot be told apart (not
    Linux) or the system refused. Never raises: a priority is an optimisation, not a requirement.
    """
    if by <= 0 or not sys.platform.startswith("linux"):
        return None
    thread_id = threading.get_native_id()
    try:
        current = os.getpriority(os.PRIO_PROCESS, thread_id)
        target = min(MAX_NICE, current + by)
        if target != current:
            os.setpriority(os.PRIO_PROCESS, thread_id, target)
        return os.getpriority(os.PRIO_PROCESS, thread_id)
    except OSError:
        return None
