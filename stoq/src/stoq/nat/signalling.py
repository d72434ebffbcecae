"""What two peers tell each other before they punch: ICE-style session descriptions.

A :class:`Description` travels as the payload of a rendezvous signal
(:mod:`stoq.nat.rendezvous`, which stamps the authenticated sender's peer id on it). It is
UTF-8 JSON, one object, at most :data:`MAX_DESCRIPTION` bytes::

    {"v": 1,
     "kind": "offer" | "answer" | "restart",
     "link": "<32 hex digits>",          16 random bytes naming the link (kept across restarts)
     "generation": <int 0..2**31-1>,     0 for the first exchange, +1 per ICE restart
     "ufrag": "<4..32 ICE chars>",       RFC 8445 §5.3: ALPHA / DIGIT / "+" / "/"
     "pwd": "<22..64 ICE chars>",
     "mapping": "independent" | "dependent" | "unknown",
     "candidates": [[kind, ip, port, priority, foundation], ...]}   at most 32

``kind`` of a candidate is ``host``, ``srflx``, ``prflx`` or ``relay``; ``ip`` an IPv4 or IPv6
literal; ``port`` 1..65535; ``priority`` 1..2**31-1; ``foundation`` 1..64 printable ASCII
characters. ``mapping`` is what the sender learned of its own NAT's mapping behaviour (RFC 5780
mapping test over two server addresses); it decides who does birthday probing.

``offer`` starts a link (the sender becomes the controlling agent and the QUIC client) or,
with a higher ``generation``, restarts its checks; ``answer`` answers an offer of the same link
and generation; ``restart`` asks the controlling side to restart (its candidates are empty).
Anything else is refused with :class:`SignallingError`: unknown or missing keys, wrong types,
out-of-range numbers, bad addresses, duplicates, oversize.
"""

from __future__ import annotations

import enum
import ipaddress
import json
import re
import secrets
from dataclasses import dataclass
from typing import Any

from stoq.errors import StoqError
from stoq.nat.punch import Candidate, CandidateKind

__all__ = [
    "MAX_CANDIDATES",
    "MAX_DESCRIPTION",
    "Description",
    "DescriptionKind",
    "MappingBehaviour",
    "SignallingError",
    "decode_description",
    "encode_description",
    "new_credentials",
]

VERSION = 1
MAX_DESCRIPTION = 8192
MAX_CANDIDATES = 32
_ICE_CHARS = re.compile(r"[A-Za-z0-9+/]+")
_FOUNDATION = re.compile(r"[\x21-\x7e]{1,64}")
_KEYS = {"v", "kind", "link", "generation", "ufrag", "pwd", "mapping", "candidates"}


class SignallingError(StoqError):
    """A description that cannot be encoded or decoded; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"bad session description: {reason}")


class DescriptionKind(enum.StrEnum):
    OFFER = "offer"
    ANSWER = "answer"
    RESTART = "restart"


class MappingBehaviour(enum.StrEnum):
    """The sender's NAT mapping as far as it knows (RFC 4787 §4.1 / RFC 5780 §4.3)."""

    INDEPENDENT = "independent"
    DEPENDENT = "dependent"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Description:
    kind: DescriptionKind
    link: bytes
    generation: int
    ufrag: str
    pwd: str
    mapping: MappingBehaviour
    candidates: tuple[Candidate, ...]

    def __post_init__(self) -> None:
        _check(self)


def new_credentials() -> tuple[str, str]:
    """A fresh ICE ufrag (8 characters) and password (32), from ``secrets``."""
    return secrets.token_hex(4), secrets.token_hex(16)


def _check(d: Description) -> None:
    if len(d.link) != 16:
        raise SignallingError("link must be 16 bytes")
    if not 0 <= d.generation < 2**31:
        raise SignallingError(f"generation {d.generation} out of range")
    if not (4 <= len(d.ufrag) <= 32 and _ICE_CHARS.fullmatch(d.ufrag)):
        raise SignallingError("ufrag must be 4..32 ICE characters")
    if not (22 <= len(d.pwd) <= 64 and _ICE_CHARS.fullmatch(d.pwd)):
        raise SignallingError("pwd must be 22..64 ICE characters")
    if len(d.candidates) > MAX_CANDIDATES:
        raise SignallingError(f"more than {MAX_CANDIDATES} candidates")
    seen: set[tuple[Any, ...]] = set()
    for candidate in d.candidates:
        ip, port = candidate.address[0], candidate.address[1]
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise SignallingError(f"candidate address {ip!r} is not an IP address") from None
        if not 1 <= port <= 65535:
            raise SignallingError(f"candidate port {port} out of range")
        if not 1 <= candidate.priority < 2**31:
            raise SignallingError(f"candidate priority {candidate.priority} out of range")
        if not _FOUNDATION.fullmatch(candidate.foundation):
            raise SignallingError("candidate foundation must be 1..64 printable characters")
        key = (candidate.kind, ip, port)
        if key in seen:
            raise SignallingError(f"duplicate candidate {candidate.kind} {ip} {port}")
        seen.add(key)


def encode_description(description: Description) -> bytes:
    """The JSON bytes of ``description`` (module docstring)."""
    document = {
        "v": VERSION,
        "kind": description.kind.value,
        "link": description.link.hex(),
        "generation": description.generation,
        "ufrag": description.ufrag,
        "pwd": description.pwd,
        "mapping": description.mapping.value,
        "candidates": [
            [c.kind.value, c.address[0], c.address[1], c.priority, c.foundation]
            for c in description.candidates
        ],
    }
    data = json.dumps(document, separators=(",", ":")).encode()
    if len(data) > MAX_DESCRIPTION:
        raise SignallingError(f"description of {len(data)} bytes exceeds {MAX_DESCRIPTION}")
    return data


def _int(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise SignallingError(f"{what} must be an integer")
    return value


def _str(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise SignallingError(f"{what} must be a string")
    return value


def _candidate(item: object) -> Candidate:
    if not isinstance(item, list) or len(item) != 5:
        raise SignallingError("a candidate is a list of 5 items")
    kind_text, ip, port, priority, foundation = item
    try:
        kind = CandidateKind(_str(kind_text, "candidate kind"))
    except ValueError:
        raise SignallingError(f"unknown candidate kind {kind_text!r}") from None
    ip = _str(ip, "candidate ip")
    try:
        ip = str(ipaddress.ip_address(ip))
    except ValueError:
        raise SignallingError(f"candidate address {ip!r} is not an IP address") from None
    return Candidate(
        kind,
        (ip, _int(port, "candidate port")),
        _int(priority, "candidate priority"),
        _str(foundation, "candidate foundation"),
        None,
    )


def decode_description(data: bytes) -> Description:
    """Parse and check one description; :class:`SignallingError` on anything off."""
    if len(data) > MAX_DESCRIPTION:
        raise SignallingError(f"description of {len(data)} bytes exceeds {MAX_DESCRIPTION}")
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise SignallingError(f"not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise SignallingError("not a JSON object")
    if set(document) != _KEYS:
        raise SignallingError(f"keys must be exactly {sorted(_KEYS)}")
    if document["v"] != VERSION or isinstance(document["v"], bool):
        raise SignallingError(f"version {document['v']!r} is not {VERSION}")
    try:
        kind = DescriptionKind(_str(document["kind"], "kind"))
        mapping = MappingBehaviour(_str(document["mapping"], "mapping"))
    except ValueError as exc:
        raise SignallingError(str(exc)) from None
    link_text = _str(document["link"], "link")
    if not re.fullmatch(r"[0-9a-f]{32}", link_text):
        raise SignallingError("link must be 32 lowercase hex digits")
    candidates = document["candidates"]
    if not isinstance(candidates, list):
        raise SignallingError("candidates must be a list")
    if len(candidates) > MAX_CANDIDATES:
        raise SignallingError(f"more than {MAX_CANDIDATES} candidates")
    return Description(
        kind,
        bytes.fromhex(link_text),
        _int(document["generation"], "generation"),
        _str(document["ufrag"], "ufrag"),
        _str(document["pwd"], "pwd"),
        mapping,
        tuple(_candidate(item) for item in candidates),
    )
