"""Name replication over STOQ: one TrustChain node pulls another's signed name records.

Replication by file is ``trustchain names export`` then ``trustchain names import``
(:meth:`~trustchain.naming.registry.NameRegistry.merge`). This module is the network path: the
*puller* asks the *server* for its record set on an authenticated STOQ connection and merges
it into its own :class:`~trustchain.naming.registry.NameRegistry`.

Trust
=====

The STOQ connection authenticates the server (its certificate chain and namespace, as the
puller's :class:`~stoq.identity.PeerPolicy` says), but that is not why a record is believed:
the merge verifies every record and revocation against the *puller's* registry store, exactly
as ``names import`` does. The set's anchors are ignored; its CRLs are offered to the store
(they can only withdraw trust). What does not verify is refused with its reason
(:class:`~trustchain.naming.records.NameRecordRejected` in
:attr:`~trustchain.naming.registry.MergeReport.refused`) and never stored. A server can
therefore withhold records, but never make the puller store one its own trust refuses.

Protocol (one bidirectional stream per pull)
============================================

Every message below is one STOQ stream message (:mod:`stoq.connection`: length-prefixed and
sealed in the connection's post-quantum channel, so at most ``max_message_size`` bytes)::

    puller -> server   b"stoq/1 names-pull"                    exactly these 17 bytes; then FIN
    server -> puller   0x00 || encode_record_set(record set)   then FIN
                       0x01 || UTF-8 reason (0..1024 bytes)    then FIN (the pull is refused)

* The request is :data:`NAMES_PULL_REQUEST` and nothing else: the puller sends it with FIN (or
  FIN right after it). The server answers once the puller's direction has ended. A first
  message that starts with the request but carries further bytes, a second message, or a
  stream that ends before any message is refused (``0x01`` and the reason); a first message
  that does not start with the request is not a names pull (:func:`serve_names` resets the
  stream with :data:`ERROR_NOT_A_NAMES_PULL`).
* The record set is the server registry's
  :meth:`~trustchain.naming.registry.NameRegistry.record_set` (every unexpired record and
  every revocation, with the anchors and CRLs the server is given), in the record-set file
  format of :mod:`trustchain.naming.zone` (what ``trustchain names export`` writes).
* Size: the whole answer (status byte included) must fit the server's
  ``StoqConfig.max_message_size`` (16 MiB by default). When it does not, the server refuses
  with a reason that says so and what to do: raise ``max_message_size`` on both nodes, or
  replicate by file. The puller must allow at least as much: a larger answer closes the
  puller's connection (:class:`~stoq.errors.MessageTooLarge`, STOQ's framing limit).
* The refusal reason is cut to :data:`MAX_REFUSAL_REASON` bytes (at a character boundary).
  Any other status byte, an empty answer, a longer reason, a ``0x00`` body that is not a
  record set, or a message after the answer is :class:`MalformedNamesReply` on the puller.
* Stream error codes (RESET_STREAM / STOP_SENDING): :data:`ERROR_NOT_A_NAMES_PULL` (server:
  the first message is not a names pull), :data:`ERROR_NAMES_PULL_TIMEOUT` (server: the puller
  did not finish its request in time), :data:`ERROR_NAMES_PULL_ABANDONED` (either side gave
  up: an error, a refusal already sent, or cancellation).

API
===

Sans-IO: :func:`is_names_pull`, :func:`check_request`, :func:`names_reply`, :func:`refusal`,
:func:`parse_reply`. Puller: :func:`request_record_set` (the peer's set, decoded, not
verified) and :func:`pull_names` (that, merged; returns the
:class:`~trustchain.naming.registry.MergeReport`). Server: :func:`answer_names_pull` (one
stream, for a node that dispatches streams itself) and :func:`serve_names` (every stream of a
connection). Registry work (reading and encoding the set, decoding and merging it) runs in a
worker thread (:func:`asyncio.to_thread`; a registry and its trust store are thread-safe), so
a large set does not stall the connection's event loop. None of these bounds its own waiting
except :func:`serve_names` (per stream): bound the others with a timeout.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Final

from cryptography import x509

from stoq.connection import StoqConnection, Stream
from stoq.errors import ConnectionLost, ProtocolViolation, StoqError, StreamClosed
from trustchain.errors import TrustChainError
from trustchain.naming.registry import MergeReport, NameRegistry
from trustchain.naming.zone import (
    MalformedRecordSet,
    RecordSet,
    decode_record_set,
    encode_record_set,
)

__all__ = [
    "DEFAULT_PULL_TIMEOUT",
    "ERROR_NAMES_PULL_ABANDONED",
    "ERROR_NAMES_PULL_TIMEOUT",
    "ERROR_NOT_A_NAMES_PULL",
    "MAX_REFUSAL_REASON",
    "NAMES_PULL_REQUEST",
    "STATUS_OK",
    "STATUS_REFUSED",
    "BadNamesRequest",
    "MalformedNamesReply",
    "NamesPullError",
    "NamesPullRefused",
    "RecordSetTooLarge",
    "answer_names_pull",
    "check_request",
    "is_names_pull",
    "names_reply",
    "parse_reply",
    "pull_names",
    "refusal",
    "request_record_set",
    "serve_names",
]

log = logging.getLogger(__name__)

#: The puller's request: the whole first (and only) message of its direction.
NAMES_PULL_REQUEST: Final = b"stoq/1 names-pull"
STATUS_OK: Final = 0x00
STATUS_REFUSED: Final = 0x01
#: The longest refusal reason sent or accepted, in bytes of UTF-8.
MAX_REFUSAL_REASON: Final = 1024
#: Stream error codes of the names-pull protocol.
ERROR_NOT_A_NAMES_PULL: Final = 0x5320  # server: the first message is not a names pull
ERROR_NAMES_PULL_TIMEOUT: Final = 0x5321  # server: the puller did not finish in time
ERROR_NAMES_PULL_ABANDONED: Final = 0x5322  # either side gave up (error, refusal, cancellation)
#: Default seconds :func:`serve_names` gives one stream, from its acceptance to the answer.
DEFAULT_PULL_TIMEOUT: Final = 30.0


class NamesPullError(StoqError):
    """A names pull failed (base class of this module's errors)."""


class NamesPullRefused(NamesPullError):
    """The server refused the pull; ``reason`` is what it said."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"the peer refused the names pull: {reason}")


class MalformedNamesReply(NamesPullError, ProtocolViolation):
    """The server's answer breaks the protocol (see the module docs); a record set that does
    not decode has the :class:`~trustchain.naming.zone.MalformedRecordSet` as ``__cause__``."""


class BadNamesRequest(NamesPullError, ProtocolViolation):
    """The puller's request breaks the protocol (trailing bytes, a second message, no
    request at all); the server refused it with this reason."""


class RecordSetTooLarge(NamesPullError):
    """The server's record set does not fit one STOQ message (``max_message_size``)."""


# --- the protocol, sans-IO -----------------------------------------------------------------


def is_names_pull(message: bytes) -> bool:
    """Whether a stream's first message is meant as a names-pull request (it starts with
    :data:`NAMES_PULL_REQUEST`; :func:`check_request` decides whether it is a valid one)."""
    return message.startswith(NAMES_PULL_REQUEST)


def check_request(message: bytes) -> None:
    """:class:`BadNamesRequest` unless ``message`` is exactly :data:`NAMES_PULL_REQUEST`."""
    if not is_names_pull(message):
        raise BadNamesRequest(f"not a names-pull request (expected {NAMES_PULL_REQUEST!r})")
    extra = len(message) - len(NAMES_PULL_REQUEST)
    if extra:
        raise BadNamesRequest(
            f"{extra} unexpected byte(s) after {NAMES_PULL_REQUEST!r} (the request is exactly "
            "that message)"
        )


def names_reply(record_set: RecordSet, max_message_size: int) -> bytes:
    """The server's answer carrying ``record_set``: ``0x00 || encode_record_set(...)``.

    :class:`RecordSetTooLarge` if it would exceed ``max_message_size`` bytes (its message
    names the size, the limit and what to do); the
    :class:`~trustchain.naming.zone.MalformedRecordSet` of
    :func:`~trustchain.naming.zone.encode_record_set` if the set exceeds the file format's
    limits.
    """
    reply = bytes([STATUS_OK]) + encode_record_set(record_set)
    if len(reply) > max_message_size:
        raise RecordSetTooLarge(
            f"the record set ({len(record_set.records)} record(s), "
            f"{len(record_set.revocations)} revocation(s)) takes {len(reply)} bytes, more than "
            f"this node's max_message_size of {max_message_size}: raise max_message_size "
            "(StoqConfig) on both nodes, or replicate by file (trustchain names export, then "
            "trustchain names import)"
        )
    return reply


def refusal(reason: str) -> bytes:
    """The server's refusal for ``reason``: ``0x01 ||`` its UTF-8, cut to
    :data:`MAX_REFUSAL_REASON` bytes at a character boundary."""
    encoded = reason.encode("utf-8")[:MAX_REFUSAL_REASON]
    return bytes([STATUS_REFUSED]) + encoded.decode("utf-8", "ignore").encode("utf-8")


def parse_reply(message: bytes) -> RecordSet:
    """The record set in the server's answer ``message`` (decoded, not verified).

    :class:`NamesPullRefused` for a refusal; :class:`MalformedNamesReply` for anything that is
    not an answer (see the module docs).
    """
    if not message:
        raise MalformedNamesReply("an empty names-pull answer")
    status, body = message[0], bytes(message[1:])
    if status == STATUS_REFUSED:
        if len(body) > MAX_REFUSAL_REASON:
            raise MalformedNamesReply(
                f"a {len(body)}-byte refusal reason (at most {MAX_REFUSAL_REASON})"
            )
        raise NamesPullRefused(body.decode("utf-8", "replace"))
    if status != STATUS_OK:
        raise MalformedNamesReply(f"unknown names-pull status 0x{status:02x}")
    try:
        return decode_record_set(body)
    except MalformedRecordSet as exc:
        raise MalformedNamesReply(f"the record set does not decode: {exc}") from exc


# --- the puller ----------------------------------------------------------------------------


async def request_record_set(connection: StoqConnection) -> RecordSet:
    """Ask the peer of ``connection`` for its record set, on a new stream; the set, decoded
    but not verified (:func:`pull_names` merges it).

    Raises :class:`NamesPullRefused`, :class:`MalformedNamesReply`, :class:`NamesPullError`
    (the peer ended or reset the stream without answering), or STOQ's
    :class:`~stoq.errors.StreamClosed` / :class:`~stoq.errors.ConnectionLost` /
    :class:`~stoq.errors.MessageTooLarge`. On any failure or cancellation the stream is reset
    (:data:`ERROR_NAMES_PULL_ABANDONED`).
    """
    stream = await connection.open_stream()
    try:
        await stream.send(NAMES_PULL_REQUEST, end_stream=True)
        try:
            reply = await stream.receive()
        except StreamClosed as exc:
            raise NamesPullError(
                f"the peer ended the names-pull stream without an answer: {exc}"
            ) from exc
        record_set = await asyncio.to_thread(parse_reply, reply)
        try:
            extra = await stream.receive()
        except StreamClosed:
            return record_set
        raise MalformedNamesReply(
            f"a {len(extra)}-byte message after the answer (the answer is one message, then FIN)"
        )
    except BaseException:
        stream.reset(ERROR_NAMES_PULL_ABANDONED)
        raise


async def pull_names(
    connection: StoqConnection, registry: NameRegistry, *, at: datetime | None = None
) -> MergeReport:
    """Pull the peer's record set (:func:`request_record_set`) and merge it into
    ``registry`` (:meth:`~trustchain.naming.registry.NameRegistry.merge`, verifying at ``at``,
    default now, against the registry's own store); the merge's report.

    Errors as :func:`request_record_set`, and the registry's
    :class:`~trustchain.naming.registry.RegistryError`. Records and revocations that do not
    verify are not errors: they are in the report's ``refused``, with their reasons. A merge
    that has started runs to its end even if the caller is cancelled (each record is its own
    transaction).
    """
    record_set = await request_record_set(connection)
    return await asyncio.to_thread(registry.merge, record_set, at=at)


# --- the server ----------------------------------------------------------------------------


async def _send_refusal(stream: Stream, reason: str) -> None:
    try:
        await stream.send(refusal(reason), end_stream=True)
    except (StreamClosed, ConnectionLost) as exc:
        # The puller is gone; the failure being reported is the reason, not this.
        log.debug("could not deliver a names-pull refusal on stream %d: %s", stream.stream_id, exc)


async def _end_of_request(stream: Stream) -> None:
    """Wait until the puller's direction ends; :class:`BadNamesRequest` if a message comes
    first."""
    try:
        extra = await stream.receive()
    except StreamClosed:
        return
    raise BadNamesRequest(
        f"a {len(extra)}-byte message after the names-pull request (the request is one "
        "message, then FIN)"
    )


def _build_reply(
    registry: NameRegistry,
    anchors: Sequence[x509.Certificate],
    crls: Sequence[x509.CertificateRevocationList],
    max_message_size: int,
) -> tuple[bytes, int, int]:
    record_set = registry.record_set(anchors, crls=crls)
    reply = names_reply(record_set, max_message_size)
    return reply, len(record_set.records), len(record_set.revocations)


async def answer_names_pull(
    stream: Stream,
    registry: NameRegistry,
    anchors: Sequence[x509.Certificate],
    crls: Sequence[x509.CertificateRevocationList] = (),
    *,
    request: bytes = NAMES_PULL_REQUEST,
) -> None:
    """Answer the names pull on ``stream``, whose first message ``request`` the caller has
    read (and seen :func:`is_names_pull`): ``registry``'s record set with ``anchors`` (the
    roots a reader may check it by) and ``crls``, then FIN.

    Waits for the end of the puller's direction first. On failure the puller is sent a
    refusal with the reason, and the error is raised: :class:`BadNamesRequest` (trailing
    bytes, a second message), :class:`RecordSetTooLarge`, or the registry's
    :class:`~trustchain.errors.TrustChainError` (it cannot be read, or the set exceeds the
    file format's limits); also :class:`~stoq.errors.StreamClosed` /
    :class:`~stoq.errors.ConnectionLost` if the puller goes away. Waits as long as the puller
    takes: bound it with a timeout.
    """
    try:
        check_request(request)
        await _end_of_request(stream)
    except BadNamesRequest as exc:
        await _send_refusal(stream, str(exc))
        raise
    limit = stream.connection.config.max_message_size
    try:
        reply, records, revocations = await asyncio.to_thread(
            _build_reply, registry, tuple(anchors), tuple(crls), limit
        )
    except RecordSetTooLarge as exc:
        await _send_refusal(stream, str(exc))
        raise
    except TrustChainError as exc:
        await _send_refusal(stream, f"the record set could not be made: {exc}")
        raise
    await stream.send(reply, end_stream=True)
    log.info(
        "sent %d name record(s) and %d revocation(s) (%d bytes) on stream %d",
        records,
        revocations,
        len(reply),
        stream.stream_id,
    )


async def _serve_stream(
    connection: StoqConnection,
    stream: Stream,
    registry: NameRegistry,
    anchors: Sequence[x509.Certificate],
    crls: Sequence[x509.CertificateRevocationList],
    timeout: float,
) -> None:
    """One stream of :func:`serve_names`; logs its outcome, raises nothing expected."""
    peer = connection.peer.name
    try:
        async with asyncio.timeout(timeout):
            try:
                request = await stream.receive()
            except StreamClosed as exc:
                log.info(
                    "names-pull stream %d from %s: no request: %s", stream.stream_id, peer, exc
                )
                await _send_refusal(stream, "no names-pull request: the stream ended before it")
                return
            if not is_names_pull(request):
                log.info("stream %d from %s is not a names pull", stream.stream_id, peer)
                stream.reset(ERROR_NOT_A_NAMES_PULL)
                return
            await answer_names_pull(stream, registry, anchors, crls, request=request)
    except TimeoutError:
        log.info("names pull from %s timed out after %s s", peer, timeout)
        stream.reset(ERROR_NAMES_PULL_TIMEOUT)
    except (StoqError, TrustChainError) as exc:
        log.info("names pull from %s failed: %s: %s", peer, type(exc).__name__, exc)
        stream.reset(ERROR_NAMES_PULL_ABANDONED)


async def serve_names(
    connection: StoqConnection,
    registry: NameRegistry,
    anchors: Sequence[x509.Certificate],
    *,
    crls: Sequence[x509.CertificateRevocationList] = (),
    timeout: float = DEFAULT_PULL_TIMEOUT,
) -> None:
    """Answer the peer's names pulls on ``connection`` until the connection ends.

    Takes every stream the peer opens, each on its own task: a names pull is answered
    (:func:`answer_names_pull`); a stream whose first message is not one is reset with
    :data:`ERROR_NOT_A_NAMES_PULL`; a bad request is refused with its reason; a stream that
    ends before its first message is refused; one not answered within ``timeout`` seconds is
    reset with :data:`ERROR_NAMES_PULL_TIMEOUT`. Every outcome is logged (logger
    ``stoq.dns.replication``, INFO); none of them ends the service or the connection. A node
    whose connections carry other streams too must dispatch them itself and call
    :func:`answer_names_pull` for names pulls. Returns when the connection closes.
    """
    frozen_anchors = tuple(anchors)
    frozen_crls = tuple(crls)
    async with asyncio.TaskGroup() as group:
        while True:
            try:
                stream = await connection.accept_stream()
            except StoqError as exc:  # the connection ended; its owner sees why
                log.debug("names service on a closed connection ends: %s", exc)
                return
            group.create_task(
                _serve_stream(connection, stream, registry, frozen_anchors, frozen_crls, timeout)
            )
