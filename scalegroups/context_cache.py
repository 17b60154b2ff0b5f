"""Serialize Prefect's settings once per settings object instead of once per task submission.

Profiling 200 trivial tasks on Dask showed ~35 ms of the flow thread's time per `submit`, most of
it in `SettingsContext.serialize()`: a full pydantic dump of every Prefect setting, walked by
`visit_collection`, for every task shipped to a worker process (prefect-dask, prefect-ray and the
process pool all call `serialize_context()` per task). The settings object of a flow run does not
change while it runs (Prefect makes a new one for `temporary_settings`), so its serialized form is
cached, keyed by the object's identity. Installed by the first scalegroups runner that starts;
`SCALEGROUPS_CACHE_SETTINGS=0` turns it off.
"""

from __future__ import annotations

import copy
import os
import threading
import weakref
from typing import Any

from prefect.context import SettingsContext

_MAX_ENTRIES = 16
_cache: dict[tuple[int, bool], tuple[weakref.ref[Any], dict[str, Any]]] = {}
_lock = threading.Lock()
_original = SettingsContext.serialize


def _cached_serialize(self: SettingsContext, include_secrets: bool = True) -> dict[str, Any]:
    settings = self.settings
    key = (id(settings), include_secrets)
    entry = _cache.get(key)
    if entry is not None and entry[0]() is settings:
        serialized = entry[1]
    else:
        serialized = _original(self, include_secrets=include_secrets)
        with _lock:
            if len(_cache) >= _MAX_ENTRIES:
                _cache.clear()
            _cache[key] = (weakref.ref(settings), serialized)
    # Callers own their copy; the profile part is small, the settings dict is copied shallowly.
    return {**serialized, "settings": copy.copy(serialized.get("settings"))}


def install() -> None:
    """Replace `SettingsContext.serialize` with the cached version (idempotent)."""
    if os.environ.get("SCALEGROUPS_CACHE_SETTINGS", "1") == "0":
        return
    SettingsContext.serialize = _cached_serialize  # type: ignore[method-assign]


def uninstall() -> None:
    """Restore Prefect's own `SettingsContext.serialize` and drop the cache."""
    SettingsContext.serialize = _original  # type: ignore[method-assign]
    _cache.clear()
