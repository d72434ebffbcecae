"""Classic hashcash version 1 stamps (Adam Back's format), read and checked.

HyperMesh's own work (:mod:`.work`) is SHA-256 over a binary prefix; this module reads the
original text format so the construction can be checked against public hashcash stamps. A
stamp is seven colon-separated ASCII fields::

    ver:bits:date:resource:ext:rand:counter

* ``ver``: ``1``;
* ``bits``: the claimed difficulty, decimal, 0..160;
* ``date``: UTC, ``YYMMDD``, ``YYMMDDhhmm`` or ``YYMMDDhhmmss`` (two-digit years 00-69 are
  2000-2069, 70-99 are 1970-1999, as POSIX ``%y``);
* ``resource``: what the stamp is for (e.g. an e-mail address), no colon;
* ``ext``: extensions, free text without a colon (usually empty);
* ``rand``, ``counter``: base-64 alphabet (``A-Z a-z 0-9 + / =``), non-empty.

The stamp's value is SHA-1 of its ASCII text, without a trailing newline; it is valid when
that digest has at least ``bits`` leading zero bits.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from trustchain.consensus.proofs.work import leading_zero_bits
from trustchain.errors import TrustChainError

__all__ = [
    "FUTURE_GRACE",
    "MAX_STAMP_BITS",
    "HashcashStamp",
    "MalformedStamp",
    "StampReason",
    "StampRejected",
    "parse_stamp",
    "verify_stamp",
]

#: A SHA-1 digest has 160 bits.
MAX_STAMP_BITS = 160
#: How far in the future a stamp's date may be (clock differences): hashcash's default grace.
FUTURE_GRACE = timedelta(days=2)

StampReason = Literal["resource", "claimed-bits", "value", "expired", "future"]

_BITS = re.compile(r"[0-9]{1,3}")
_DATE = re.compile(r"[0-9]{6}(?:[0-9]{4}(?:[0-9]{2})?)?")
_BASE64 = re.compile(r"[A-Za-z0-9+/=]+")


class MalformedStamp(TrustChainError, ValueError):
    """Text that is not a hashcash v1 stamp (field count, version, bits, date or alphabet)."""


class StampRejected(TrustChainError):
    """A well-formed stamp that fails a check; ``reason`` says which:

    * ``"resource"``: it is for another resource;
    * ``"claimed-bits"``: it claims fewer bits than required;
    * ``"value"``: its SHA-1 has fewer leading zero bits than it claims;
    * ``"expired"``: its date is older than the allowed age;
    * ``"future"``: its date is more than :data:`FUTURE_GRACE` ahead of now.
    """

    def __init__(self, reason: StampReason, detail: str) -> None:
        super().__init__(f"hashcash stamp rejected ({reason}): {detail}")
        self.reason: StampReason = reason
        self.detail = detail


@dataclass(frozen=True)
class HashcashStamp:
    """The seven fields of a v1 stamp, as text except ``version`` and ``bits``."""

    version: int
    bits: int
    date: str
    resource: str
    ext: str
    rand: str
    counter: str

    @property
    def timestamp(self) -> datetime:
        """The stamp's date as an aware UTC datetime (missing time parts are zero)."""
        return _parse_date(self.date)


def _parse_date(text: str) -> datetime:
    if not _DATE.fullmatch(text):
        raise MalformedStamp(f"date {text!r} is not YYMMDD, YYMMDDhhmm or YYMMDDhhmmss")
    yy = int(text[0:2])
    parts = [int(text[i : i + 2]) for i in range(2, len(text), 2)]
    parts += [0] * (5 - len(parts))
    month, day, hour, minute, second = parts
    try:
        return datetime(
            2000 + yy if yy < 70 else 1900 + yy, month, day, hour, minute, second, tzinfo=UTC
        )
    except ValueError as exc:
        raise MalformedStamp(f"date {text!r} is not a calendar date: {exc}") from None


def parse_stamp(text: str) -> HashcashStamp:
    """The fields of the v1 stamp ``text``; :class:`MalformedStamp` if it is not one (see the
    module docstring for the exact format)."""
    if not isinstance(text, str) or not text.isascii():
        raise MalformedStamp("a stamp is ASCII text")
    fields = text.split(":")
    if len(fields) != 7:
        raise MalformedStamp(f"a v1 stamp has 7 colon-separated fields, not {len(fields)}")
    ver, bits, date, resource, ext, rand, counter = fields
    if ver != "1":
        raise MalformedStamp(f"version {ver!r} is not 1")
    if not _BITS.fullmatch(bits) or int(bits) > MAX_STAMP_BITS:
        raise MalformedStamp(f"bits {bits!r} is not a number 0..{MAX_STAMP_BITS}")
    _parse_date(date)
    if not _BASE64.fullmatch(rand):
        raise MalformedStamp(f"rand {rand!r} is not non-empty base-64")
    if not _BASE64.fullmatch(counter):
        raise MalformedStamp(f"counter {counter!r} is not non-empty base-64")
    return HashcashStamp(
        version=1,
        bits=int(bits),
        date=date,
        resource=resource,
        ext=ext,
        rand=rand,
        counter=counter,
    )


def verify_stamp(
    text: str,
    *,
    resource: str,
    bits: int,
    now: datetime | None = None,
    max_age: timedelta | None = None,
) -> int:
    """Check the stamp ``text`` is for ``resource`` and worth at least ``bits``; return the
    actual number of leading zero bits of its SHA-1.

    Checks, in order (the first failure raises :class:`StampRejected` with that reason):
    ``"resource"``, ``"claimed-bits"`` (claimed < ``bits``), ``"value"`` (actual < claimed),
    then, when ``now`` (an aware datetime) is given, ``"future"`` (date after
    ``now + FUTURE_GRACE``) and, when ``max_age`` is given too, ``"expired"`` (date before
    ``now - max_age``). :class:`MalformedStamp` if ``text`` does not parse; :class:`ValueError`
    if ``bits`` is not 0..160, ``now`` is naive, or ``max_age`` comes without ``now``.
    """
    if not 0 <= bits <= MAX_STAMP_BITS:
        raise ValueError(f"required bits must be 0..{MAX_STAMP_BITS}")
    if max_age is not None and now is None:
        raise ValueError("max_age needs now")
    if now is not None and now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    stamp = parse_stamp(text)
    if stamp.resource != resource:
        raise StampRejected("resource", f"stamp is for {stamp.resource!r}, not {resource!r}")
    if stamp.bits < bits:
        raise StampRejected("claimed-bits", f"stamp claims {stamp.bits} bits, {bits} required")
    actual = leading_zero_bits(hashlib.sha1(text.encode("ascii"), usedforsecurity=False).digest())
    if actual < stamp.bits:
        raise StampRejected("value", f"SHA-1 has {actual} leading zero bits, {stamp.bits} claimed")
    if now is not None:
        when = stamp.timestamp
        if when > now + FUTURE_GRACE:
            raise StampRejected("future", f"stamp dated {when.isoformat()} is in the future")
        if max_age is not None and when < now - max_age:
            raise StampRejected(
                "expired", f"stamp dated {when.isoformat()} is older than {max_age}"
            )
    return actual
