"""Python's cyclic garbage collector around a process's start-up.

Prefect's server and task engine build ~300,000 long-lived objects when imported (modules,
classes, pydantic schemas, FastAPI routes, SQLAlchemy tables). None of them is ever garbage, yet
every full collection walks all of them: ~0.14 s of CPU each while they are being imported (three
fall inside a server's start, 0.5 s of it) and 0.25 s each afterwards, about 1.5 ms per task run
in a flow process. So, where scalegroups starts a server or sets a worker process up:

- the collector is paused while those imports run (`collection_paused`; reference counting still
  frees everything that is not in a cycle), and
- every object alive after them moves into the permanent generation, once per process
  (`freeze_once`, `gc.freeze()`), so later collections walk only what was made afterwards. A flow
  process freezes when its runner has started (if its in-process server has not done so).

Objects frozen are never collected as cycles: garbage cycles alive at that moment would stay
(none were found after Prefect's server imports and app build). Freezing happens once per
process, so a long-running process does not keep trapping more. Nothing happens on import;
`SCALEGROUPS_GC_FREEZE=0` turns both off.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from scalegroups.settings import startup_gc_enabled

_lock = threading.Lock()
_pauses = 0  # collection_paused() bodies running now (threads may overlap)
_reenable = False  # whether the collector was on when the first of them began
_frozen = False


@contextmanager
def collection_paused() -> Iterator[None]:
    """No cyclic collection while the body runs; the collector's previous state after it.

    Overlapping uses (a server thread and a worker set-up thread) are counted: the collector comes
    back on when the last one ends, and only if it was on when the first began.
    """
    global _pauses, _reenable
    if not startup_gc_enabled():
        yield
        return
    with _lock:
        if _pauses == 0:
            _reenable = gc.isenabled()
            gc.disable()
        _pauses += 1
    try:
        yield
    finally:
        with _lock:
            _pauses -= 1
            if _pauses == 0 and _reenable:
                gc.enable()


def freeze_once() -> bool:
    """Move every object alive now into the permanent generation, the first time in this process.

    Returns True if this call froze them.
    """
    global _frozen
    if not startup_gc_enabled():
        return False
    with _lock:
        if _frozen:
            return False
        _frozen = True
    gc.freeze()
    return True


@contextmanager
def long_lived_start_up() -> Iterator[None]:
    """`collection_paused()` around the body, then `freeze_once()` if it succeeded."""
    with collection_paused():
        yield
    freeze_once()
