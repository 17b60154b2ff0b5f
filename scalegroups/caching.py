"""How tasks submitted through a scalegroups runner are prepared: cache default and group run name.

Prefect's default cache policy (inputs + task source + flow run id) hashes every argument of every
task run: 0.3-0.7 s per 50 MB argument on a small machine. With result persistence off (Prefect's
default) no cached result is ever stored, so that hash buys nothing. For such tasks, and only
when the user chose neither a cache policy nor a cache key function, scalegroups submits the task
with `NO_CACHE` instead. Tasks with persisted results, or any explicit cache setting, are left as
they are. Tasks of a checkpointed group get the options of `scalegroups.checkpoints` instead.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

from prefect.cache_policies import DEFAULT, NO_CACHE
from prefect.settings import get_current_settings

from scalegroups.checkpoints import Checkpointing
from scalegroups.prefect_compat import cache_policy_was_chosen

_replacements: weakref.WeakKeyDictionary[Any, dict[tuple[str | None, Checkpointing | None], Any]] = (
    weakref.WeakKeyDictionary()
)
_lock = threading.Lock()


def hashes_for_nothing(task: Any) -> bool:
    """True if the task would hash its inputs for a cache that can never be hit."""
    if cache_policy_was_chosen(task) or task.cache_key_fn is not None:
        return False
    if task.cache_policy is not DEFAULT:
        return False
    persist = task.persist_result
    if persist is None:
        persist = get_current_settings().results.persist_by_default
    return not persist


def prepared(task: Any, group: str | None = None, checkpoint: Checkpointing | None = None) -> Any:
    """The task as submitted: `NO_CACHE` where hashing is wasted, and, inside a group, run names
    `<group>/<task>` (a run name costs nothing; a tag would cost an API call per task run, since
    Prefect's engine asks the server for a concurrency slot for every tag) and the group's
    checkpoint options. Cached per task object."""
    try:
        return _replacements[task][group, checkpoint]
    except KeyError:
        pass
    with _lock:
        options: dict[str, Any] = checkpoint.options(task) if checkpoint is not None else {}
        if not options and hashes_for_nothing(task):
            options["cache_policy"] = NO_CACHE
        if group is not None and task.task_run_name is None:
            options["task_run_name"] = f"{group}/{task.name}".replace("{", "{{").replace("}", "}}")
        replacement = task.with_options(**options) if options else task
        _replacements.setdefault(task, {})[group, checkpoint] = replacement
    return replacement
