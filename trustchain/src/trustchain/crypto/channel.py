"""The record layer of an established TrustChain channel: :class:`SecureChannel`.

A :class:`SecureChannel` is what :mod:`trustchain.crypto.handshake` hands back once both peers
have authenticated. It is sans-IO: it turns plaintext into records (``seal``) and records back
into plaintext (``open``); moving records between the peers is the caller's business. Records
may travel over a stream or over datagrams: they may be reordered (within the replay window),
lost or duplicated, and each is opened on its own.

Record format (all integers big-endian)::

    offset  size  field
    0       4     key epoch (u32): 0 after the handshake, +1 on every key update
    4       8     sequence number (u64) within the epoch, from 0
    12      N+16  AEAD ciphertext of the N-byte plaintext, with its 16-byte tag

The AEAD nonce is the epoch's 12-byte IV XOR the sequence number (left-padded with zeros), as in
TLS 1.3 (RFC 8446 §5.3). The associated data is the 12-byte header followed by the caller's
``associated_data``, so the header cannot be altered and the caller can bind the record to
context that is not sent (a stream id, a method name...). Each direction has its own keys, so a
record reflected back at its sender does not open (:class:`~trustchain.errors.DecryptionFailed`).

Keys. Each direction starts from a 32-byte traffic secret agreed by the handshake. An epoch's
key and IV are ``expand_label(secret, "key", b"", 32)`` and ``expand_label(secret, "iv", b"",
12)``; the next epoch's secret is ``expand_label(secret, "traffic upd", b"", 32)`` (TLS 1.3
§7.2), after which the sender forgets the old secret (forward secrecy for earlier records).

Key updates. :meth:`SecureChannel.rekey` moves the sending side to the next epoch. The sender
also rekeys on its own before a key reaches either usage limit of :class:`ChannelConfig`: a
record count (default 2^23, the AES-GCM confidentiality limit of RFC 9001 §6.6) and a plaintext
byte count (default 2^38 bytes = 2^34 AES blocks; RFC 8446 §5.5 allows 2^24.5 full-size 2^14-byte
records, about 2^34.5 blocks, and our records have no fixed maximum size, so the limit is counted
in bytes as well). The same limits apply to ChaCha20-Poly1305, for which they are merely
generous. The receiver needs no signal: the first record of a later epoch that *authenticates*
moves it forward (up to :attr:`ChannelConfig.max_epoch_advance` epochs at once, for key updates
whose first records were lost).

Replay and reordering. Per epoch the receiver keeps a sliding window of
:attr:`ChannelConfig.replay_window` sequence numbers (RFC 4303 §3.4.3 style): a sequence number
already opened, or one older than the window, raises :class:`~trustchain.errors.ReplayDetected`
(checked before decryption, recorded only after the record authenticates). After moving to a new
epoch the receiver keeps the earlier epoch(s) it had for a grace of
:attr:`ChannelConfig.epoch_grace_records` authenticated records of the new epoch, so records
still in flight open; a record of an epoch older than that raises
:class:`~trustchain.errors.ReplayDetected` ("too old to be checked"), a record of an epoch too
far ahead raises :class:`~trustchain.errors.DecryptionFailed` (it cannot be authenticated).

Forgeries. Records that fail authentication are counted across all keys; past
:attr:`ChannelConfig.max_failed_decryptions` (default 2^36, the ChaCha20-Poly1305 integrity limit
of RFC 9001 §6.6, which is also below the AES-GCM one) the channel closes itself.

A :class:`SecureChannel` is not thread-safe: a caller sharing one between threads must lock
around it. Python cannot wipe memory; closing the channel drops every reference to key material.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from trustchain.crypto.aead import AeadKey, hkdf_expand
from trustchain.crypto.algorithms import AeadAlgorithm
from trustchain.crypto.signatures import VerifyKey
from trustchain.errors import ChannelClosed, DecryptionFailed, MalformedData, ReplayDetected

__all__ = [
    "RECORD_HEADER",
    "RECORD_OVERHEAD",
    "ChannelConfig",
    "OpenedRecord",
    "SecureChannel",
    "expand_label",
]

#: Record header: key epoch (u32) and sequence number (u64), big-endian.
RECORD_HEADER = struct.Struct(">IQ")
#: Bytes a record adds to its plaintext: the header and the AEAD tag.
RECORD_OVERHEAD = RECORD_HEADER.size + AeadKey.TAG_SIZE
SECRET_SIZE = 32
KEY_SIZE = 32
MAX_EPOCH = 0xFFFF_FFFF
MAX_SEQUENCE = 0xFFFF_FFFF_FFFF_FFFF
#: Prefix of every HKDF label TrustChain's channel derives (like TLS 1.3's ``"tls13 "``).
LABEL_PREFIX = b"trustchain1 "


def expand_label(secret: bytes, label: str, context: bytes, length: int = SECRET_SIZE) -> bytes:
    """HKDF-Expand-Label in the manner of TLS 1.3 (RFC 8446 §7.1), with its own label prefix.

    ``info`` is ``length`` (u16) || len(full label) (u8) || ``"trustchain1 " + label`` ||
    len(context) (u8) || ``context``, so every derivation is bound to its purpose and length.
    """
    full_label = LABEL_PREFIX + label.encode("ascii")
    if len(full_label) > 255 or len(context) > 255:
        raise ValueError("HKDF label or context longer than 255 bytes")
    info = (
        struct.pack(">HB", length, len(full_label))
        + full_label
        + struct.pack(">B", len(context))
        + context
    )
    return hkdf_expand(secret, info, length)


@dataclass(frozen=True)
class ChannelConfig:
    """Limits of a :class:`SecureChannel`. The defaults are the safe choice; tests shrink them.

    * ``replay_window``: how many sequence numbers below the highest one received are still
      accepted (out of order) in an epoch.
    * ``max_records_per_key``: the sender rekeys before sealing more records than this under one
      key. Default 2^23: the AES-GCM confidentiality limit of RFC 9001 §6.6.
    * ``max_bytes_per_key``: the sender rekeys before sealing more plaintext bytes than this under
      one key (a single larger record still goes out under a fresh key). Default 2^38 bytes
      (2^34 AES blocks), below the ~2^34.5 blocks of RFC 8446 §5.5's 2^24.5 full-size records.
    * ``epoch_grace_records``: after the receiver moves to a new epoch, the earlier epoch's keys
      stay usable until this many records of the new epoch have been opened.
    * ``max_epoch_advance``: how many epochs ahead of the current one a record may be.
    * ``max_failed_decryptions``: records failing authentication (over the channel's lifetime)
      after which the channel closes. Default 2^36, RFC 9001 §6.6's ChaCha20-Poly1305 integrity
      limit (AES-GCM's, 2^52, is larger).
    """

    replay_window: int = 1024
    max_records_per_key: int = 1 << 23
    max_bytes_per_key: int = 1 << 38
    epoch_grace_records: int = 1024
    max_epoch_advance: int = 16
    max_failed_decryptions: int = 1 << 36

    def __post_init__(self) -> None:
        if not 1 <= self.replay_window <= 1 << 16:
            raise ValueError("replay_window must be between 1 and 65536")
        if not 1 <= self.max_records_per_key <= MAX_SEQUENCE:
            raise ValueError("max_records_per_key must be between 1 and 2^64 - 1")
        if self.max_bytes_per_key < 1:
            raise ValueError("max_bytes_per_key must be positive")
        if self.epoch_grace_records < 0:
            raise ValueError("epoch_grace_records must not be negative")
        if not 1 <= self.max_epoch_advance <= 1024:
            raise ValueError("max_epoch_advance must be between 1 and 1024")
        if self.max_failed_decryptions < 0:
            raise ValueError("max_failed_decryptions must not be negative")


@dataclass(frozen=True)
class OpenedRecord:
    """An authenticated record: where it sat in the peer's stream, and its plaintext."""

    epoch: int
    sequence: int
    plaintext: bytes


@dataclass(frozen=True, repr=False)
class _EpochKeys:
    epoch: int
    secret: bytes
    key: AeadKey
    iv: int

    @classmethod
    def derive(cls, algorithm: AeadAlgorithm, epoch: int, secret: bytes) -> _EpochKeys:
        key = AeadKey(algorithm, expand_label(secret, "key", b"", KEY_SIZE))
        iv = expand_label(secret, "iv", b"", AeadKey.NONCE_SIZE)
        return cls(epoch, secret, key, int.from_bytes(iv, "big"))

    def next(self) -> _EpochKeys:
        return _EpochKeys.derive(
            self.key.algorithm, self.epoch + 1, expand_label(self.secret, "traffic upd", b"")
        )

    def nonce(self, sequence: int) -> bytes:
        return (self.iv ^ sequence).to_bytes(AeadKey.NONCE_SIZE, "big")


class _ReplayWindow:
    """Sequence numbers accepted in one epoch: the highest, and a bitmap of those below it.

    Bit ``i`` of the bitmap says whether ``highest - i`` was accepted.
    """

    __slots__ = ("_bitmap", "_highest", "_size")

    def __init__(self, size: int) -> None:
        self._size = size
        self._highest = -1
        self._bitmap = 0

    def check(self, sequence: int) -> None:
        if sequence > self._highest:
            return
        offset = self._highest - sequence
        if offset >= self._size:
            raise ReplayDetected(
                f"record {sequence} is older than the {self._size}-record replay window"
            )
        if (self._bitmap >> offset) & 1:
            raise ReplayDetected(f"record {sequence} was already received")

    def accept(self, sequence: int) -> None:
        if sequence > self._highest:
            shift = sequence - self._highest
            self._bitmap = 1 if shift >= self._size else ((self._bitmap << shift) | 1)
            self._bitmap &= (1 << self._size) - 1
            self._highest = sequence
        else:
            self._bitmap |= 1 << (self._highest - sequence)


class _ReceiveEpoch:
    __slots__ = ("keys", "window")

    def __init__(self, keys: _EpochKeys, window_size: int) -> None:
        self.keys = keys
        self.window = _ReplayWindow(window_size)


class SecureChannel:
    """Both directions of an authenticated channel: seal records for the peer, open theirs.

    Normally made by :mod:`trustchain.crypto.handshake`. ``send_secret`` and ``receive_secret``
    are the 32-byte epoch-0 traffic secrets of the two directions; the peer's channel has them
    swapped. ``channel_id`` (32 bytes) names the session identically on both sides.
    """

    def __init__(
        self,
        *,
        channel_id: bytes,
        peer: VerifyKey,
        aead_algorithm: AeadAlgorithm,
        send_secret: bytes,
        receive_secret: bytes,
        config: ChannelConfig | None = None,
    ) -> None:
        if len(channel_id) != 32:
            raise ValueError("channel_id must be 32 bytes")
        if len(send_secret) != SECRET_SIZE or len(receive_secret) != SECRET_SIZE:
            raise ValueError(f"traffic secrets must be {SECRET_SIZE} bytes")
        if send_secret == receive_secret:
            raise ValueError("the two directions must not share a traffic secret")
        self._channel_id = bytes(channel_id)
        self._peer = peer
        self._aead_algorithm = AeadAlgorithm(aead_algorithm)
        self._config = config if config is not None else ChannelConfig()
        self._closed = False
        self._send: _EpochKeys | None = _EpochKeys.derive(aead_algorithm, 0, bytes(send_secret))
        self._send_sequence = 0
        self._send_bytes = 0
        self._receive: _ReceiveEpoch | None = _ReceiveEpoch(
            _EpochKeys.derive(aead_algorithm, 0, bytes(receive_secret)),
            self._config.replay_window,
        )
        self._retained: dict[int, _ReceiveEpoch] = {}
        self._opened_in_epoch = 0
        self._failed_decryptions = 0

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (
            f"SecureChannel(id={self._channel_id.hex()[:16]}..., {self._aead_algorithm.label}, "
            f"{state})"
        )

    # --- what the channel is ------------------------------------------------------------------

    @property
    def channel_id(self) -> bytes:
        """32 bytes derived from the handshake transcript; equal on both sides."""
        return self._channel_id

    @property
    def peer(self) -> VerifyKey:
        """The peer's authenticated identity."""
        return self._peer

    @property
    def aead_algorithm(self) -> AeadAlgorithm:
        return self._aead_algorithm

    @property
    def config(self) -> ChannelConfig:
        return self._config

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def send_epoch(self) -> int:
        """The key epoch the next sealed record will use.

        Exact, except when that record's plaintext would push the key past
        :attr:`ChannelConfig.max_bytes_per_key` (it then goes out in the following epoch). The
        header of a sealed record (:meth:`record_epoch`) is always exact.
        """
        keys = self._send_keys()
        return keys.epoch + 1 if self._record_limit_reached() else keys.epoch

    @property
    def next_send_sequence(self) -> int:
        """The sequence number the next sealed record will carry (0 after a rekey).

        Exact, with the same byte-limit exception as :attr:`send_epoch`; :meth:`record_sequence`
        of the sealed record is always exact.
        """
        self._send_keys()
        return 0 if self._record_limit_reached() else self._send_sequence

    @staticmethod
    def record_epoch(record: bytes) -> int:
        """The key epoch in a record's header. Authenticated only once :meth:`open` accepted it."""
        return SecureChannel._header(record)[0]

    @staticmethod
    def record_sequence(record: bytes) -> int:
        """The sequence number in a record's header (authenticated only once opened)."""
        return SecureChannel._header(record)[1]

    @staticmethod
    def _header(record: bytes) -> tuple[int, int]:
        if len(record) < RECORD_HEADER.size:
            raise MalformedData(
                f"record of {len(record)} bytes is shorter than the "
                f"{RECORD_HEADER.size}-byte record header"
            )
        epoch, sequence = RECORD_HEADER.unpack_from(record)
        return int(epoch), int(sequence)

    @property
    def receive_epoch(self) -> int:
        """The newest epoch of the peer's records that has been opened (0 at first)."""
        return self._receive_current().keys.epoch

    # --- sending ------------------------------------------------------------------------------

    def seal(self, plaintext: bytes, associated_data: bytes = b"") -> bytes:
        """Encrypt ``plaintext`` into the next record (see the module docstring for its format).

        ``associated_data`` is authenticated, not sent: the peer must pass the same bytes to
        :meth:`open`. Rekeys first if the current key reached a usage limit.
        """
        keys = self._send_keys()
        if self._record_limit_reached() or (
            self._send_bytes > 0
            and self._send_bytes + len(plaintext) > self._config.max_bytes_per_key
        ):
            self._advance_send()
            keys = self._send_keys()
        sequence = self._send_sequence
        header = RECORD_HEADER.pack(keys.epoch, sequence)
        ciphertext = keys.key.encrypt(keys.nonce(sequence), plaintext, header + associated_data)
        self._send_sequence = sequence + 1
        self._send_bytes += len(plaintext)
        return header + ciphertext

    def rekey(self) -> None:
        """Move sending to the next key epoch now (the peer follows on its first record).

        :class:`~trustchain.errors.ChannelClosed` if the 2^32 epochs are used up (the channel
        then closes: a new handshake is needed).
        """
        self._send_keys()
        self._advance_send()

    def _record_limit_reached(self) -> bool:
        return self._send_sequence >= self._config.max_records_per_key

    def _advance_send(self) -> None:
        keys = self._send_keys()
        if keys.epoch >= MAX_EPOCH:
            self.close()
            raise ChannelClosed("all key epochs of the channel are used up")
        self._send = keys.next()
        self._send_sequence = 0
        self._send_bytes = 0

    # --- receiving ----------------------------------------------------------------------------

    def open(self, record: bytes, associated_data: bytes = b"") -> bytes:
        """The plaintext of a record sealed by the peer; see :meth:`open_record`."""
        return self.open_record(record, associated_data).plaintext

    def open_record(self, record: bytes, associated_data: bytes = b"") -> OpenedRecord:
        """Authenticate and decrypt one of the peer's records.

        Raises :class:`~trustchain.errors.MalformedData` for a record shorter than header and tag,
        :class:`~trustchain.errors.ReplayDetected` for a sequence number already opened or too
        old, or an epoch older than the grace keeps, :class:`~trustchain.errors.DecryptionFailed`
        if the record does not authenticate (tampered, wrong ``associated_data``, from the other
        direction, or an epoch too far ahead), and :class:`~trustchain.errors.ChannelClosed` once
        closed. A record that fails changes nothing (except the forgery count).
        """
        current = self._receive_current()
        if len(record) < RECORD_OVERHEAD:
            raise MalformedData(
                f"record of {len(record)} bytes is shorter than the {RECORD_OVERHEAD}-byte minimum"
            )
        epoch, sequence = RECORD_HEADER.unpack_from(record)
        header = bytes(record[: RECORD_HEADER.size])
        advance: list[_EpochKeys] = []
        if epoch == current.keys.epoch:
            target = current
        elif epoch < current.keys.epoch:
            retained = self._retained.get(epoch)
            if retained is None:
                raise ReplayDetected(
                    f"record of key epoch {epoch} is older than the channel keeps "
                    f"(current epoch {current.keys.epoch})"
                )
            target = retained
        else:
            if epoch - current.keys.epoch > self._config.max_epoch_advance:
                raise DecryptionFailed(
                    f"record of key epoch {epoch} is too far ahead of epoch {current.keys.epoch}"
                )
            keys = current.keys
            while keys.epoch < epoch:
                keys = keys.next()
                advance.append(keys)
            target = _ReceiveEpoch(advance[-1], self._config.replay_window)
        target.window.check(sequence)
        try:
            plaintext = target.keys.key.decrypt(
                target.keys.nonce(sequence),
                bytes(record[RECORD_HEADER.size :]),
                header + associated_data,
            )
        except DecryptionFailed as exc:
            self._failed_decryptions += 1
            if self._failed_decryptions > self._config.max_failed_decryptions:
                self.close()
                raise ChannelClosed(
                    "too many records failed authentication; the channel is closed"
                ) from exc
            raise
        target.window.accept(sequence)
        if advance:
            self._retained = {current.keys.epoch: current}
            for keys in advance[:-1]:
                self._retained[keys.epoch] = _ReceiveEpoch(keys, self._config.replay_window)
            self._receive = target
            self._opened_in_epoch = 0
        if target is self._receive:
            self._opened_in_epoch += 1
            if self._opened_in_epoch >= self._config.epoch_grace_records:
                self._retained.clear()
        return OpenedRecord(epoch, sequence, plaintext)

    # --- lifecycle ----------------------------------------------------------------------------

    def close(self) -> None:
        """Forget every key. Idempotent; any later seal, open or rekey raises ChannelClosed."""
        self._closed = True
        self._send = None
        self._receive = None
        self._retained = {}

    def _send_keys(self) -> _EpochKeys:
        if self._send is None:
            raise ChannelClosed("the secure channel is closed")
        return self._send

    def _receive_current(self) -> _ReceiveEpoch:
        if self._receive is None:
            raise ChannelClosed("the secure channel is closed")
        return self._receive
