"""Checkpoints: a group's task results persisted so that a crashed run, called again, resumes.

A checkpointed task is submitted with Prefect's own result persistence (`persist_result=True`) and
a cache policy keyed on the task's source and its inputs (`INPUTS + TASK_SOURCE`: Prefect's
default adds the flow run id, which a new run of the same call does not share). Calling the same
flow again after a crash, Prefect's task engine finds the results of the tasks that finished and
reruns only the others; a changed input or task source is a new key, computed afresh. A cache
policy or cache key function the user gave the task is kept; `persist_result=False` or `NO_CACHE`
on a task means it is never checkpointed.

Results go to the storage the runner names (`SCALEGROUPS_RESULT_STORAGE`, else the profile's
`result_storage`): an absolute path (a folder every worker can read and write), or a Prefect
storage block slug (`s3-bucket/results`); else Prefect's own default, `$PREFECT_HOME/storage`,
which every local runner shares. Checkpoints never expire: delete the folder to forget them.
"""

from __future__ import annotations

import hashlib
import inspect
from dataclasses import dataclass
from typing import Any

from prefect.cache_policies import INPUTS, NO_CACHE, TASK_SOURCE, CachePolicy

from scalegroups.prefect_compat import cache_policy_was_chosen
from scalegroups.profiles import parse_storage

#: the key of a checkpoint: the same task source called with the same inputs
CHECKPOINT_POLICY = INPUTS + TASK_SOURCE


@dataclass(frozen=True)
class Checkpointing:
    """How the tasks of a checkpointed group are submitted: where their results go."""

    storage: str | None = None  # None: Prefect's default result storage

    def options(self, task: Any) -> dict[str, Any]:
        """The `task.with_options(...)` arguments that checkpoint `task` (empty: leave it alone)."""
        if task.persist_result is False or task.cache_policy == NO_CACHE:
            return {}  # the user asked for no persisted or no reused result
        options: dict[str, Any] = {"persist_result": True}
        if not (cache_policy_was_chosen(task) or task.cache_key_fn is not None):
            options["cache_policy"] = CHECKPOINT_POLICY
        if self.storage is not None and task.result_storage is None:
            options["result_storage"] = parse_storage(self.storage)
        return options


def checkpointing(wanted: bool | None, runner: Any) -> Checkpointing | None:
    """What to do for a task: `wanted` (a group's choice) wins, else the runner's default."""
    if wanted is None:
        wanted = bool(getattr(runner, "checkpoint", False))
    if not wanted:
        return None
    return Checkpointing(storage=getattr(runner, "result_storage", None))


@dataclass
class FunctionSource(CachePolicy):
    """Key on the source of the function passed as argument `argument` (fan_out's `fn`): a batch
    task's own source never changes, the function it calls may."""

    argument: str = "fn"

    def compute_key(
        self,
        task_ctx: Any,
        inputs: dict[str, Any] | None,
        flow_parameters: dict[str, Any] | None,
        **kwargs: Any,
    ) -> str | None:
        """A digest of the function's source (of its code object where the source is not available)."""
        function = (inputs or {}).get(self.argument)
        if function is None:
            return None
        try:
            text = inspect.getsource(function).encode()
        except (OSError, TypeError):
            code = getattr(function, "__code__", None)
            text = repr((getattr(function, "__qualname__", ""), code.co_code if code else b"")).encode()
        return hashlib.sha256(text).hexdigest()
