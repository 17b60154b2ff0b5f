"""What the running group tells the runner it submits through: shared by groups and engines.

Groups set these while a group function runs; a scalegroups runner reads them when it submits a
task. Neither side imports the other: both import this module.
"""

from __future__ import annotations

from contextvars import ContextVar

#: the group whose function is running (its tasks are named "<group>/<task>")
current_group: ContextVar[str | None] = ContextVar("scalegroups_current_group", default=None)

#: rate limits of the running group: the runner takes a slot of each before submitting a task
current_rates: ContextVar[tuple[str, ...]] = ContextVar("scalegroups_current_rates", default=())

#: the running group's checkpoint choice (True, False, or None: the runner's default)
current_checkpoint: ContextVar[bool | None] = ContextVar("scalegroups_current_checkpoint", default=None)
