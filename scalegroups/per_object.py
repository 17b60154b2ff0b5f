"""Values built once per object and looked up by its identity (settings, shipped context parts)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any


class BuiltPerObject:
    """A value built once per object, looked up by identity; the object is held, so its id is not
    reused while its entry lives; the newest `limit` entries are kept (thread-safe)."""

    def __init__(self, limit: int = 16) -> None:
        self._limit = limit
        self._entries: OrderedDict[int, tuple[Any, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, obj: Any, build: Any) -> Any:
        """The value built for `obj`, calling `build(obj)` the first time (outside the lock)."""
        with self._lock:
            entry = self._entries.get(id(obj))
        if entry is not None and entry[0] is obj:
            return entry[1]
        value = build(obj)
        with self._lock:
            self._entries[id(obj)] = (obj, value)
            while len(self._entries) > self._limit:
                self._entries.popitem(last=False)
        return value

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
