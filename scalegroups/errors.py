"""Exceptions scalegroups raises. Each carries one actionable sentence for the user."""

from __future__ import annotations


class ScalegroupsError(Exception):
    """Base class: every error scalegroups raises on purpose derives from it."""


class ConfigurationError(ScalegroupsError, ValueError):
    """A runner name, setting or argument that cannot be used."""


class ProfileError(ConfigurationError):
    """A cluster profile that cannot be found, parsed or validated."""


class MissingExtraError(ScalegroupsError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


class UnreachableClusterError(ScalegroupsError, ConnectionError):
    """A Dask scheduler or Ray cluster address that does not answer."""


class OrchestrationError(ScalegroupsError, RuntimeError):
    """Groups or tasks used where orchestration cannot happen (e.g. inside a task)."""


class GroupTimeoutError(ScalegroupsError, TimeoutError):
    """A group run exceeded its timeout; its unfinished tasks were cancelled."""


class TaskInterrupted(BaseException):  # noqa: N818 - a signal to stop, like KeyboardInterrupt
    """Raised inside a running task's thread to stop it (its group timed out).

    A `BaseException`, so that a task's own `except Exception:` does not swallow it; Prefect
    records the task run as crashed.
    """
