"""A bounded TTL cache for resolver answers, positive and negative (sans-IO: the clock is given).

:class:`TtlCache` maps a key (the resolver uses the normalised name) to a value and the absolute
time it expires, read from the ``clock`` it was built with (default :func:`time.monotonic`; tests
inject their own, so nothing here sleeps or reads a real clock behind the caller's back).

Rules:

* :meth:`TtlCache.put` stores a positive entry for ``ttl`` seconds, capped at ``max_ttl``
  (default one day); :meth:`TtlCache.put_negative` stores a negative entry (a name that does not
  exist, or has no data) for ``ttl`` seconds capped at ``max_negative_ttl`` (default one hour,
  RFC 2308 section 5 suggests one to three hours as the cap). The caller works the TTL out: the
  resolver uses the smallest TTL of the answer's RRsets for a positive entry and, per RFC 2308
  section 5, ``min(SOA TTL, SOA MINIMUM)`` of the SOA in the negative response's authority
  section for a negative one (:data:`DEFAULT_NEGATIVE_TTL`, 60 s, when the response has no SOA).
* A TTL of zero or less stores nothing (and drops what was stored under that key): a zero TTL
  means "use once, do not cache" (RFC 1035 section 3.2.1).
* An entry is live while ``clock() < expires``. :meth:`TtlCache.get` returns a live entry with the
  seconds it has left (the TTL to hand on, counting down) and drops an expired one.
* At most ``max_entries`` entries are kept; storing one more evicts the least recently used (a
  :meth:`TtlCache.get` hit or a store counts as a use). Expired entries are dropped first.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = [
    "DEFAULT_MAX_ENTRIES",
    "DEFAULT_NEGATIVE_TTL",
    "MAX_NEGATIVE_TTL",
    "MAX_TTL",
    "CacheEntry",
    "TtlCache",
]

#: The cap on a positive entry's lifetime, in seconds (one day).
MAX_TTL = 86_400
#: The cap on a negative entry's lifetime, in seconds (one hour; RFC 2308 section 5).
MAX_NEGATIVE_TTL = 3_600
#: The negative TTL used when a negative response carries no SOA to take one from, in seconds.
DEFAULT_NEGATIVE_TTL = 60
#: How many entries a cache keeps by default.
DEFAULT_MAX_ENTRIES = 4_096

V = TypeVar("V")


@dataclass(frozen=True)
class CacheEntry(Generic[V]):
    """A live cache entry: the ``value``, whether it is ``negative`` and the ``remaining``
    lifetime in whole seconds, rounded up (so a live entry never reports 0)."""

    value: V
    negative: bool
    remaining: int


@dataclass
class _Slot(Generic[V]):
    value: V
    negative: bool
    expires: float


class TtlCache(Generic[V]):
    """A least-recently-used cache whose entries expire after their TTL (see the module doc)."""

    def __init__(
        self,
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_ttl: float = MAX_TTL,
        max_negative_ttl: float = MAX_NEGATIVE_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, not {max_entries}")
        if max_ttl <= 0 or max_negative_ttl <= 0:
            raise ValueError("max_ttl and max_negative_ttl must be positive")
        self._max_entries = max_entries
        self._max_ttl = max_ttl
        self._max_negative_ttl = max_negative_ttl
        self._clock = clock
        self._slots: OrderedDict[str, _Slot[V]] = OrderedDict()
        self._evictions = 0

    @property
    def max_entries(self) -> int:
        return self._max_entries

    @property
    def evictions(self) -> int:
        """How many live entries were evicted to keep the size bound (expired ones not counted)."""
        return self._evictions

    def __len__(self) -> int:
        """The number of entries held, expired ones not yet dropped included."""
        return len(self._slots)

    def put(self, key: str, value: V, ttl: float) -> None:
        """Store a positive entry for ``min(ttl, max_ttl)`` seconds (nothing if ``ttl <= 0``)."""
        self._store(key, value, min(ttl, self._max_ttl), negative=False)

    def put_negative(self, key: str, value: V, ttl: float) -> None:
        """Store a negative entry for ``min(ttl, max_negative_ttl)`` seconds (nothing if
        ``ttl <= 0``)."""
        self._store(key, value, min(ttl, self._max_negative_ttl), negative=True)

    def get(self, key: str) -> CacheEntry[V] | None:
        """The live entry for ``key`` (now the most recently used), or None."""
        slot = self._slots.get(key)
        if slot is None:
            return None
        remaining = slot.expires - self._clock()
        if remaining <= 0:
            del self._slots[key]
            return None
        self._slots.move_to_end(key)
        return CacheEntry(slot.value, slot.negative, math.ceil(remaining))

    def discard(self, key: str) -> None:
        """Forget ``key`` (nothing happens if it is not held)."""
        self._slots.pop(key, None)

    def purge(self) -> int:
        """Drop every expired entry; returns how many were dropped."""
        now = self._clock()
        expired = [key for key, slot in self._slots.items() if slot.expires <= now]
        for key in expired:
            del self._slots[key]
        return len(expired)

    def clear(self) -> None:
        self._slots.clear()

    def _store(self, key: str, value: V, ttl: float, *, negative: bool) -> None:
        if ttl <= 0:
            self._slots.pop(key, None)
            return
        self._slots[key] = _Slot(value, negative, self._clock() + ttl)
        self._slots.move_to_end(key)
        if len(self._slots) > self._max_entries:
            self.purge()
        while len(self._slots) > self._max_entries:
            self._slots.popitem(last=False)
            self._evictions += 1
