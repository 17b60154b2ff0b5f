"""Concurrency limits per group, enforced by the Prefect server across processes and nodes.

`@group(limits={"db": 4})` tags every task the group submits with `db`. Prefect's task engine
acquires a slot of the global concurrency limit `tag:db` around each tagged task run (in whichever
worker runs it) and the server keeps the count, so at most 4 such tasks run at once on any runner,
across every process and node that talks to that server. Prefect skips a limit that does not
exist; scalegroups does not: before a limited group submits anything, each limit must exist on the
server (strict), else the group fails with a message naming the limit — unless
`SCALEGROUPS_SYNC_LIMITS=1`, which creates the declared limits at flow time. `scalegroups limits
sync` creates or updates them from the groups in a file and the profile's `limits:` section.

A task waiting for a slot holds its engine worker (Prefect acquires inside the worker); the flow
is not blocked and other groups' tasks keep every other worker busy.

Rate limits, `@group(rate_limits={"api": 5})`: at most 5 of the group's tasks start per second
(bursts of up to 5), across every flow using the limit. They are global concurrency limits
`rate:api` with `limit=ceil(rate)` and `slot_decay_per_second=rate`; the flow takes a slot with
Prefect's `rate_limit(strict=True)` before it submits each task, so a throttled task never
occupies an engine worker while it waits.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterable, Mapping

from scalegroups.errors import ConfigurationError, OrchestrationError

#: limit name -> slots, from every @group(limits=...) imported so far
DECLARED: dict[str, int] = {}
_verified: set[tuple[str, str]] = set()
_lock = threading.Lock()


#: rate-limit name -> tasks per second
DECLARED_RATES: dict[str, float] = {}


def rate_gcl_name(limit: str) -> str:
    """The Prefect global concurrency limit (with slot decay) behind rate limit `limit`."""
    return f"rate:{limit}"


def declare_rates(rates: Mapping[str, float], owner: str) -> dict[str, float]:
    """Validate and register a group's rate limits (tasks per second)."""
    checked: dict[str, float] = {}
    for name, rate in rates.items():
        if isinstance(rate, bool) or not isinstance(rate, int | float) or rate <= 0:
            raise ConfigurationError(f"group {owner!r}: rate limit {name!r} must be a positive number, got {rate!r}")
        if DECLARED_RATES.get(name, rate) != rate:
            raise ConfigurationError(
                f"group {owner!r}: rate limit {name!r} = {rate}/s conflicts with "
                f"{DECLARED_RATES[name]}/s declared elsewhere"
            )
        checked[name] = float(rate)
    DECLARED_RATES.update(checked)
    return checked


def sync_rates(rates: Mapping[str, float]) -> list[str]:
    """Create or update the server's rate limits (limits with slot decay)."""
    return _upsert(_wanted({}, rates))


def acquire_rates(names: Iterable[str]) -> None:
    """Take one slot of each rate limit (blocks the caller until the rate allows)."""
    from prefect.concurrency.sync import rate_limit

    rate_limit([rate_gcl_name(name) for name in names], occupy=1, strict=True)


def gcl_name(limit: str) -> str:
    """The Prefect global concurrency limit that guards tasks tagged `limit`."""
    return f"tag:{limit}"


def declare(limits: Mapping[str, int], owner: str) -> dict[str, int]:
    """Validate and register a group's limits; the same name must always mean the same size."""
    checked: dict[str, int] = {}
    for name, slots in limits.items():
        if not isinstance(slots, int) or isinstance(slots, bool) or slots < 1:
            raise ConfigurationError(f"group {owner!r}: limit {name!r} must be a positive integer, got {slots!r}")
        if DECLARED.get(name, slots) != slots:
            raise ConfigurationError(
                f"group {owner!r}: limit {name!r} = {slots} conflicts with {DECLARED[name]} declared elsewhere"
            )
        checked[name] = slots
    DECLARED.update(checked)
    return checked


def sync(limits: Mapping[str, int]) -> list[str]:
    """Create or update the server's global concurrency limits; return what was written."""
    return _upsert(_wanted(limits, {}))


def _wanted(limits: Mapping[str, int], rates: Mapping[str, float]) -> dict[str, tuple[int, float | None]]:
    """Server limit name -> (slots, slot decay per second) for concurrency and rate limits."""
    wanted: dict[str, tuple[int, float | None]] = {gcl_name(name): (slots, None) for name, slots in limits.items()}
    wanted |= {rate_gcl_name(name): (math.ceil(rate), rate) for name, rate in rates.items()}
    return wanted


def _upsert(wanted: Mapping[str, tuple[int, float | None]]) -> list[str]:
    from prefect import get_client

    written = []
    with get_client(sync_client=True) as client:
        for name, (slots, decay) in sorted(wanted.items()):
            client.upsert_global_concurrency_limit_by_name(name, slots, decay)
            written.append(f"{name} = {slots}" + (f" (slot decay {decay}/s)" if decay else ""))
    return written


def _auto_sync() -> bool:
    return os.environ.get("SCALEGROUPS_SYNC_LIMITS", "").lower() in {"1", "true", "yes"}


def require(limits: Mapping[str, int], owner: str, rates: Mapping[str, float] | None = None) -> None:
    """Make sure each limit (and rate limit) exists on the server, creating it if auto-sync is on."""
    _require(_wanted(limits, rates or {}), owner)


def _require(wanted: Mapping[str, tuple[int, float | None]], owner: str) -> None:
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    from scalegroups.server import configured_api_url

    api = configured_api_url() or "(temporary server)"
    pending = [name for name in wanted if (api, name) not in _verified]
    if not pending:
        return
    with get_client(sync_client=True) as client:
        for name in pending:
            slots, decay = wanted[name]
            try:
                current = client.read_global_concurrency_limit_by_name(name)
            except ObjectNotFound:
                if not _auto_sync():
                    decay_flag = f" --slot-decay-per-second {decay}" if decay else ""
                    raise OrchestrationError(
                        f"group {owner!r} needs concurrency limit {name!r}, which does not exist on the Prefect "
                        f"server at {api}; Prefect would run the tasks unthrottled. Create it with "
                        f"`scalegroups limits sync` (or `prefect gcl create {name} --limit {slots}{decay_flag}`), "
                        "or set SCALEGROUPS_SYNC_LIMITS=1 to create declared limits when flows run."
                    ) from None
                client.upsert_global_concurrency_limit_by_name(name, slots, decay)
            else:
                if not current.active:
                    raise OrchestrationError(f"concurrency limit {name!r} is inactive: activate it")
                if decay and not current.slot_decay_per_second:
                    raise OrchestrationError(f"rate limit {name!r} has no slot decay: it would never refill")
            with _lock:
                _verified.add((api, name))
