"""Name replication over STOQ (:mod:`stoq.dns.replication`), end to end on loopback.

Two nodes, each with its own SQLite :class:`~trustchain.naming.registry.NameRegistry`: B serves
its record set on a real STOQ endpoint on 127.0.0.1, A pulls it over a real connection and
merges it, verifying with its own trust. Records are signed by node certificates of the test
CA (conftest's PKI) and, for what A must refuse, of a second, unrelated root that only B
trusts. Malicious answers come from a raw STOQ server speaking the protocol badly. Nothing is
mocked; nothing asserts on durations.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stoq.cli import main as stoq_main
from stoq.connection import StoqConnection, Stream
from stoq.dns.replication import (
    ERROR_NAMES_PULL_TIMEOUT,
    ERROR_NOT_A_NAMES_PULL,
    MAX_REFUSAL_REASON,
    NAMES_PULL_REQUEST,
    BadNamesRequest,
    MalformedNamesReply,
    NamesPullError,
    NamesPullRefused,
    RecordSetTooLarge,
    answer_names_pull,
    check_request,
    is_names_pull,
    names_reply,
    parse_reply,
    pull_names,
    refusal,
    request_record_set,
    serve_names,
)
from stoq.endpoint import Endpoint, connect
from stoq.errors import ConnectionLost, ProtocolViolation, StreamClosed
from stoq.identity import NodeIdentity, PeerPolicy
from stoq.network_layer import EventLoopThread
from trustchain.ca.authority import CertificateAuthority
from trustchain.ca.trust import TrustAnchor, TrustStore
from trustchain.crypto.keystore import INSECURE_TEST_KDF_PARAMS, KdfParams, KeyStore
from trustchain.naming.records import (
    NameRecord,
    NameRejection,
    Revocation,
    SignedRecord,
    sign_record,
    sign_revocation,
)
from trustchain.naming.registry import NameRegistry
from trustchain.naming.zone import MalformedRecordSet, RecordSet, encode_record_set

from .conftest import SERVER_NAME, Pki

DB = "db.bank.hypermesh"
WEB = "web.bank.hypermesh"
FOREIGN = "db.corp.example"
DB_ADDRESS = "192.0.2.10"
#: Handler tasks stay referenced until they finish (asyncio keeps only weak references).
_TASKS: set[asyncio.Task[None]] = set()


def _spawn(coroutine: Awaitable[None]) -> None:
    task: asyncio.Task[None] = asyncio.ensure_future(coroutine)
    _TASKS.add(task)
    task.add_done_callback(_TASKS.discard)


# --- PKIs, records, registries ----------------------------------------------------------------


@dataclass(frozen=True)
class Foreign:
    """A second, unrelated PKI: root ``elsewhere-root``, entity CA ``corp`` (corp.example)."""

    root: x509.Certificate
    corp: x509.Certificate
    signer: NodeIdentity


@pytest.fixture(scope="module")
def foreign(tmp_path_factory: pytest.TempPathFactory) -> Foreign:
    home = tmp_path_factory.mktemp("foreign-pki")
    with KeyStore.open(
        home / "keys", passphrase=b"pw", kdf_params=INSECURE_TEST_KDF_PARAMS, allow_weak_kdf=True
    ) as store:
        ca = CertificateAuthority(home / "ca", store)
        try:
            root = ca.init_root("elsewhere-root")
            corp = ca.issue_intermediate("corp", "corp.example")
            issued = ca.issue("corp", "node", "signer.corp.example")
            assert issued.key_name is not None
            signer = NodeIdentity.from_keystore(
                store, issued.key_name, (issued.certificate, *issued.chain)
            )
        finally:
            ca.close()
    return Foreign(root.certificate, corp.certificate, signer)


@pytest.fixture(scope="module")
def signer(pki: Pki) -> NodeIdentity:
    return pki.node("signer.bank.hypermesh")


def _record(name: str, serial: int = 1, address: str = DB_ADDRESS) -> NameRecord:
    now = datetime.now(UTC)
    return NameRecord(
        name,
        b"\x5a" * 32,
        (address, "2001:db8::10"),
        ttl=120,
        serial=serial,
        not_before=now - timedelta(minutes=1),
        not_after=now + timedelta(hours=12),
    )


def _signed(identity: NodeIdentity, record: NameRecord) -> SignedRecord:
    return sign_record(record, identity.signing_key, identity.chain)


def _store_b(pki: Pki, foreign: Foreign) -> TrustStore:
    """B trusts the test root and the foreign root; A (``pki.trust_store()``) only the former."""
    store = pki.trust_store()
    store.add_anchor(TrustAnchor(foreign.root, "elsewhere"))
    store.add_certificate(foreign.corp)
    return store


@dataclass
class Nodes:
    pki: Pki
    a: NameRegistry
    b: NameRegistry
    anchors_b: tuple[x509.Certificate, ...]


@pytest.fixture
def nodes(pki: Pki, foreign: Foreign, tmp_path: Path) -> Iterator[Nodes]:
    a = NameRegistry.open(tmp_path / "a" / "names.db", pki.trust_store())
    b = NameRegistry.open(tmp_path / "b" / "names.db", _store_b(pki, foreign))
    try:
        yield Nodes(pki, a, b, (pki.root.certificate, foreign.root))
    finally:
        a.close()
        b.close()


def _snapshot(registry: NameRegistry) -> dict[str, bytes]:
    snapshot = {}
    for name in registry.names():
        signed = registry.signed(name)
        assert signed is not None
        snapshot[name] = signed.encode()
    return snapshot


# --- two nodes over STOQ ----------------------------------------------------------------------


@asynccontextmanager
async def _server(
    pki: Pki,
    identity: NodeIdentity,
    handler: Callable[[StoqConnection], Awaitable[None]],
    **config: object,
) -> AsyncIterator[Endpoint]:
    endpoint = await Endpoint.listen(pki.config(identity, **config), "127.0.0.1", 0)

    async def accept_loop() -> None:
        while True:
            try:
                connection = await endpoint.accept()
            except ConnectionLost:
                return
            _spawn(handler(connection))

    loop_task = asyncio.ensure_future(accept_loop())
    try:
        yield endpoint
    finally:
        loop_task.cancel()
        await endpoint.close()


@asynccontextmanager
async def _client(pki: Pki, identity: NodeIdentity, port: int) -> AsyncIterator[StoqConnection]:
    connection = await connect(pki.config(identity), "127.0.0.1", port, server_name=SERVER_NAME)
    try:
        yield connection
    finally:
        await connection.close(0, "done")


def run(coroutine: Awaitable[None]) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(60):
            await coroutine

    asyncio.run(bounded())


def _serving_b(nodes: Nodes) -> Callable[[StoqConnection], Awaitable[None]]:
    return lambda connection: serve_names(connection, nodes.b, nodes.anchors_b)


# --- the happy path, revocations, idempotence -------------------------------------------------


def test_a_pulls_b_records_and_refuses_what_its_own_trust_refuses(
    nodes: Nodes,
    signer: NodeIdentity,
    foreign: Foreign,
    server_identity: NodeIdentity,
    client_identity: NodeIdentity,
) -> None:
    db, web, elsewhere = _record(DB), _record(WEB, serial=7), _record(FOREIGN, serial=3)
    nodes.b.add(_signed(signer, db))
    nodes.b.add(_signed(signer, web))
    nodes.b.add(_signed(foreign.signer, elsewhere))  # B trusts the foreign root; A does not
    assert nodes.b.names() == [DB, FOREIGN, WEB]

    async def main() -> None:
        async with (
            _server(nodes.pki, server_identity, _serving_b(nodes)) as endpoint,
            _client(nodes.pki, client_identity, endpoint.port) as connection,
        ):
            first = await pull_names(connection, nodes.a)
            assert sorted(first.accepted, key=lambda r: r.name) == [db, web]
            assert first.revoked == []
            assert first.unchanged == 0
            [refused] = first.refused
            assert refused.reason is NameRejection.CHAIN_REJECTED
            assert (refused.name, refused.serial) == (FOREIGN, 3)
            assert str(refused).startswith("CHAIN_REJECTED: ")
            assert refused.__cause__ is not None  # the CertificateRejected saying why

            assert nodes.a.names() == [DB, WEB]
            assert nodes.a.lookup(DB) == db
            assert nodes.a.lookup(WEB) == web
            assert nodes.a.signed(FOREIGN) is None
            assert nodes.a.lookup(FOREIGN) is None

            # Pulling again changes nothing and says so.
            before = _snapshot(nodes.a)
            second = await pull_names(connection, nodes.a)
            assert (second.accepted, second.revoked, second.unchanged) == ([], [], 2)
            assert [(r.reason, r.name, r.serial) for r in second.refused] == [
                (NameRejection.CHAIN_REJECTED, FOREIGN, 3)
            ]
            assert _snapshot(nodes.a) == before

    run(main())


def test_a_revocation_on_b_replicates_to_a(
    nodes: Nodes,
    signer: NodeIdentity,
    server_identity: NodeIdentity,
    client_identity: NodeIdentity,
) -> None:
    db = _record(DB, serial=4)
    nodes.b.add(_signed(signer, db))

    async def main() -> None:
        async with (
            _server(nodes.pki, server_identity, _serving_b(nodes)) as endpoint,
            _client(nodes.pki, client_identity, endpoint.port) as connection,
        ):
            assert (await pull_names(connection, nodes.a)).accepted == [db]
            assert nodes.a.lookup(DB) == db

            revocation = Revocation(DB, 4, datetime.now(UTC).replace(microsecond=0))
            nodes.b.revoke(sign_revocation(revocation, signer.signing_key, signer.chain))
            assert nodes.b.names() == []

            report = await pull_names(connection, nodes.a)
            assert report.revoked == [revocation]
            assert (report.accepted, report.refused, report.unchanged) == ([], [], 0)
            assert nodes.a.lookup(DB) is None
            assert nodes.a.names() == []
            assert nodes.a.revocation(DB) == revocation

            again = await pull_names(connection, nodes.a)
            assert (again.accepted, again.revoked, again.refused, again.unchanged) == (
                [],
                [],
                [],
                1,
            )

    run(main())


def test_b_refuses_a_set_too_large_for_its_messages_and_keeps_serving(
    nodes: Nodes,
    signer: NodeIdentity,
    server_identity: NodeIdentity,
    client_identity: NodeIdentity,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="stoq.dns.replication")
    nodes.b.add(_signed(signer, _record(DB)))

    async def main() -> None:
        async with (
            _server(
                nodes.pki, server_identity, _serving_b(nodes), max_message_size=2048
            ) as endpoint,
            _client(nodes.pki, client_identity, endpoint.port) as connection,
        ):
            for _ in range(2):  # the refusal ends the stream, not the service
                with pytest.raises(NamesPullRefused) as info:
                    await pull_names(connection, nodes.a)
                reason = info.value.reason
                assert "more than this node's max_message_size of 2048" in reason
                assert "raise max_message_size (StoqConfig) on both nodes" in reason
                assert "trustchain names export, then trustchain names import" in reason
                assert str(info.value) == f"the peer refused the names pull: {reason}"
            assert nodes.a.names() == []

    run(main())
    failures = [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
    assert len(failures) == 2
    assert all("RecordSetTooLarge" in message for message in failures)


# --- bad requests: the server refuses them clearly and keeps serving --------------------------


async def _answer(stream: Stream) -> bytes:
    """The one message the server sends on ``stream``, checking the FIN after it."""
    message = await stream.receive()
    with pytest.raises(StreamClosed, match="ended"):
        await stream.receive()
    return message


def test_bad_requests_get_clear_errors_and_the_server_keeps_serving(
    nodes: Nodes,
    signer: NodeIdentity,
    server_identity: NodeIdentity,
    client_identity: NodeIdentity,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="stoq.dns.replication")
    db = _record(DB)
    nodes.b.add(_signed(signer, db))

    async def main() -> None:
        async with (
            _server(nodes.pki, server_identity, _serving_b(nodes)) as endpoint,
            _client(nodes.pki, client_identity, endpoint.port) as connection,
        ):
            # Not a names pull at all: reset with the protocol's error code.
            stream = await connection.open_stream()
            await stream.send(b"stoq/1 something-else", end_stream=True)
            with pytest.raises(
                StreamClosed, match=rf"reset by the peer \({ERROR_NOT_A_NAMES_PULL}\)"
            ):
                await stream.receive()

            # Garbage after the request, in the same message.
            stream = await connection.open_stream()
            await stream.send(NAMES_PULL_REQUEST + b" please", end_stream=True)
            with pytest.raises(NamesPullRefused) as info:
                parse_reply(await _answer(stream))
            assert info.value.reason == (
                "7 unexpected byte(s) after b'stoq/1 names-pull' (the request is exactly that "
                "message)"
            )

            # Garbage after the request, as a second message.
            stream = await connection.open_stream()
            await stream.send(NAMES_PULL_REQUEST)
            await stream.send(b"garbage", end_stream=True)
            with pytest.raises(NamesPullRefused) as info:
                parse_reply(await _answer(stream))
            assert info.value.reason == (
                "a 7-byte message after the names-pull request (the request is one message, "
                "then FIN)"
            )

            # A puller that closes its direction before asking.
            stream = await connection.open_stream()
            await stream.finish()
            with pytest.raises(NamesPullRefused) as info:
                parse_reply(await _answer(stream))
            assert info.value.reason == "no names-pull request: the stream ended before it"

            # The same connection still serves a proper pull.
            report = await pull_names(connection, nodes.a)
            assert report.accepted == [db]

    run(main())
    messages = [r.getMessage() for r in caplog.records]
    assert any("is not a names pull" in m for m in messages)
    assert sum("failed: BadNamesRequest: " in m for m in messages) == 2
    assert any("no request" in m for m in messages)
    assert any("sent 1 name record(s) and 0 revocation(s)" in m for m in messages)


def test_a_puller_that_never_finishes_its_request_is_reset_after_the_timeout(
    nodes: Nodes,
    signer: NodeIdentity,
    server_identity: NodeIdentity,
    client_identity: NodeIdentity,
) -> None:
    nodes.b.add(_signed(signer, _record(DB)))

    async def handler(connection: StoqConnection) -> None:
        await serve_names(connection, nodes.b, nodes.anchors_b, timeout=0.5)

    async def main() -> None:
        async with (
            _server(nodes.pki, server_identity, handler) as endpoint,
            _client(nodes.pki, client_identity, endpoint.port) as connection,
        ):
            stream = await connection.open_stream()
            await stream.send(NAMES_PULL_REQUEST)  # and never FIN
            with pytest.raises(
                StreamClosed, match=rf"reset by the peer \({ERROR_NAMES_PULL_TIMEOUT}\)"
            ):
                await stream.receive()
            stream.reset()
            # A puller that gives up half-way is no reason to stop serving either.
            stream = await connection.open_stream()
            await stream.send(NAMES_PULL_REQUEST)
            stream.reset(0x77)
            assert [r.name for r in (await pull_names(connection, nodes.a)).accepted] == [DB]

    run(main())


def test_answer_names_pull_serves_a_node_that_dispatches_its_own_streams(
    nodes: Nodes,
    signer: NodeIdentity,
    server_identity: NodeIdentity,
    client_identity: NodeIdentity,
) -> None:
    db = _record(DB)
    nodes.b.add(_signed(signer, db))
    server_errors: list[BaseException] = []

    async def dispatch(stream: Stream) -> None:
        first = await stream.receive()
        if not is_names_pull(first):  # this node's other business: an echo
            await stream.send(first, end_stream=True)
            return
        try:
            await answer_names_pull(stream, nodes.b, nodes.anchors_b, request=first)
        except BadNamesRequest as exc:
            server_errors.append(exc)

    async def handler(connection: StoqConnection) -> None:
        while True:
            try:
                stream = await connection.accept_stream()
            except ConnectionLost:
                return
            _spawn(dispatch(stream))

    async def main() -> None:
        async with (
            _server(nodes.pki, server_identity, handler) as endpoint,
            _client(nodes.pki, client_identity, endpoint.port) as connection,
        ):
            stream = await connection.open_stream()
            await stream.send(b"ping", end_stream=True)
            assert await _answer(stream) == b"ping"

            record_set = await request_record_set(connection)
            assert [signed.record for signed in record_set.records] == [db]
            assert record_set.anchors == nodes.anchors_b

            stream = await connection.open_stream()
            await stream.send(NAMES_PULL_REQUEST + b"!", end_stream=True)
            with pytest.raises(NamesPullRefused, match="1 unexpected byte"):
                parse_reply(await _answer(stream))

    run(main())
    [error] = server_errors
    assert isinstance(error, ProtocolViolation)
    assert str(error).startswith("1 unexpected byte(s) after")


# --- a malicious server -----------------------------------------------------------------------


def _raw_server(answers: list[list[bytes] | None]) -> Callable[[StoqConnection], Awaitable[None]]:
    """A server answering the k-th stream with the messages ``answers[k]`` (then FIN), or
    resetting it without a word when that is None."""

    async def handler(connection: StoqConnection) -> None:
        for messages in answers:
            try:
                stream = await connection.accept_stream()
                assert await stream.receive() == NAMES_PULL_REQUEST
                if messages is None:
                    stream.reset(0x99)
                    continue
                for index, message in enumerate(messages):
                    await stream.send(message, end_stream=index == len(messages) - 1)
            except ConnectionLost:
                return

    return handler


def _tampered(record_set: RecordSet, original: bytes, replacement: bytes) -> bytes:
    encoded = encode_record_set(record_set)
    assert encoded.count(original) == 1
    return encoded.replace(original, replacement)


def test_malicious_answers_are_typed_errors_or_refusals_and_store_nothing(
    nodes: Nodes,
    signer: NodeIdentity,
    server_identity: NodeIdentity,
    client_identity: NodeIdentity,
) -> None:
    held = _record(WEB)
    nodes.a.add(_signed(signer, held))
    before = _snapshot(nodes.a)
    nodes.b.add(_signed(signer, _record(DB)))
    genuine = nodes.b.record_set(nodes.anchors_b)
    packed = ipaddress.ip_address(DB_ADDRESS).packed
    one_byte_changed = _tampered(genuine, packed, packed[:-1] + bytes([packed[-1] ^ 0x01]))
    valid = names_reply(genuine, 1 << 20)
    answers: list[list[bytes] | None] = [
        [b"\x00" + b"junk"],
        [b"\x00" + one_byte_changed],
        [b"\x01" + b"not today"],
        [b"\x07"],
        [b""],
        [b"\x01" + b"x" * (MAX_REFUSAL_REASON + 1)],
        [valid, b"and more"],
        None,
    ]

    async def main() -> None:
        async with (
            _server(nodes.pki, server_identity, _raw_server(answers)) as endpoint,
            _client(nodes.pki, client_identity, endpoint.port) as connection,
        ):
            with pytest.raises(MalformedNamesReply) as junk:
                await pull_names(connection, nodes.a)
            assert str(junk.value).startswith("the record set does not decode: ")
            assert isinstance(junk.value.__cause__, MalformedRecordSet)

            report = await pull_names(connection, nodes.a)
            assert (report.accepted, report.revoked, report.unchanged) == ([], [], 0)
            [refused] = report.refused
            assert refused.reason is NameRejection.BAD_SIGNATURE
            assert refused.name == DB

            with pytest.raises(NamesPullRefused) as refused_pull:
                await pull_names(connection, nodes.a)
            assert refused_pull.value.reason == "not today"

            with pytest.raises(MalformedNamesReply, match="unknown names-pull status 0x07"):
                await pull_names(connection, nodes.a)
            with pytest.raises(MalformedNamesReply, match="an empty names-pull answer"):
                await pull_names(connection, nodes.a)
            with pytest.raises(MalformedNamesReply, match="a 1025-byte refusal reason"):
                await pull_names(connection, nodes.a)
            with pytest.raises(MalformedNamesReply, match="a 8-byte message after the answer"):
                await pull_names(connection, nodes.a)
            with pytest.raises(NamesPullError, match=r"without an answer: .*reset by the peer"):
                await pull_names(connection, nodes.a)

    run(main())
    assert _snapshot(nodes.a) == before
    assert nodes.a.lookup(WEB) == held


# --- the sans-IO core ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_bytes", "complaint"),
    [
        (b"", "not a names-pull request"),
        (b"stoq/1 names", "not a names-pull request"),
        (b"stoq/1 export-channel", "not a names-pull request"),
        (NAMES_PULL_REQUEST + b"\x00", "1 unexpected byte(s) after"),
    ],
)
def test_check_request_refuses_anything_but_the_exact_request(
    request_bytes: bytes, complaint: str
) -> None:
    with pytest.raises(BadNamesRequest) as info:
        check_request(request_bytes)
    assert str(info.value).startswith(complaint)
    assert is_names_pull(request_bytes) == request_bytes.startswith(NAMES_PULL_REQUEST)


def test_check_request_accepts_the_request() -> None:
    check_request(NAMES_PULL_REQUEST)
    assert NAMES_PULL_REQUEST == b"stoq/1 names-pull"
    assert len(NAMES_PULL_REQUEST) == 17


@given(data=st.binary(max_size=512))
def test_any_answer_parses_or_fails_typed(data: bytes) -> None:
    try:
        record_set = parse_reply(data)
    except (NamesPullRefused, MalformedNamesReply):
        return
    assert isinstance(record_set, RecordSet)


@given(reason=st.text(max_size=1500))
def test_refusals_round_trip_cut_at_a_character_boundary(reason: str) -> None:
    message = refusal(reason)
    assert message[0] == 0x01
    assert len(message) <= 1 + MAX_REFUSAL_REASON
    with pytest.raises(NamesPullRefused) as info:
        parse_reply(message)
    assert reason.startswith(info.value.reason)
    if len(reason.encode("utf-8")) <= MAX_REFUSAL_REASON:
        assert info.value.reason == reason


def test_names_reply_round_trips_and_knows_its_limit(
    nodes: Nodes, signer: NodeIdentity, pki: Pki
) -> None:
    nodes.b.add(_signed(signer, _record(DB)))
    record_set = nodes.b.record_set(nodes.anchors_b, crls=[pki.ca.crl("bank")])
    reply = names_reply(record_set, 1 << 20)
    assert reply == b"\x00" + encode_record_set(record_set)
    assert parse_reply(reply) == record_set
    assert names_reply(record_set, len(reply)) == reply
    with pytest.raises(RecordSetTooLarge) as info:
        names_reply(record_set, len(reply) - 1)
    assert str(info.value).startswith(
        f"the record set (1 record(s), 0 revocation(s)) takes {len(reply)} bytes, more than "
        f"this node's max_message_size of {len(reply) - 1}: "
    )


@pytest.fixture(scope="module")
def genuine_answer(pki: Pki, signer: NodeIdentity, tmp_path_factory: pytest.TempPathFactory) -> Any:
    path = tmp_path_factory.mktemp("genuine") / "names.db"
    with NameRegistry.open(path, pki.trust_store()) as registry:
        records = [_record(DB), _record(WEB, serial=2, address="192.0.2.11")]
        for record in records:
            registry.add(_signed(signer, record))
        revocation = Revocation("old.bank.hypermesh", 5, datetime.now(UTC))
        registry.revoke(sign_revocation(revocation, signer.signing_key, signer.chain))
        record_set = registry.record_set([pki.root.certificate], crls=[pki.ca.crl("bank")])
    return names_reply(record_set, 1 << 24), records, revocation


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_one_changed_byte_never_stores_what_the_signer_did_not_sign(
    pki: Pki, genuine_answer: Any, data: st.DataObject
) -> None:
    answer, records, revocation = genuine_answer
    position = data.draw(st.integers(min_value=0, max_value=len(answer) - 1), label="position")
    flip = data.draw(st.integers(min_value=1, max_value=255), label="xor")
    changed = bytearray(answer)
    changed[position] ^= flip
    try:
        record_set = parse_reply(bytes(changed))
    except (NamesPullRefused, MalformedNamesReply):
        return
    with (
        tempfile.TemporaryDirectory() as directory,
        NameRegistry.open(Path(directory) / "names.db", pki.trust_store()) as registry,
    ):
        report = registry.merge(record_set)
        assert all(record in records for record in report.accepted)
        assert all(taken == revocation for taken in report.revoked)
        for name in registry.names():
            assert registry.lookup(name) in records


# --- the command ------------------------------------------------------------------------------

PASSPHRASE = "names pull test"
#: The weakest Argon2id the key store opens without allow_weak_kdf (the command does not pass it).
KDF = KdfParams(
    time_cost=KdfParams.MIN_TIME_COST, memory_cost_kib=KdfParams.MIN_MEMORY_KIB, parallelism=1
)


def _pem(path: Path, certificates: tuple[x509.Certificate, ...]) -> Path:
    path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates))
    return path


def test_names_pull_command(
    tmp_path: Path,
    foreign: Foreign,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``stoq names-pull`` into a TrustChain home (key store and CA at HOME) from a node B
    served on another thread's event loop."""
    monkeypatch.delenv("TRUSTCHAIN_HOME", raising=False)
    monkeypatch.setenv("TRUSTCHAIN_PASSPHRASE", PASSPHRASE)
    home = tmp_path / "home"
    with KeyStore.open(home, passphrase=PASSPHRASE.encode(), kdf_params=KDF) as store:
        ca = CertificateAuthority(home, store)
        try:
            root = ca.init_root("home-root").certificate
            bank = ca.issue_intermediate("bank", "bank.hypermesh").certificate
            issued = {
                name: ca.issue("bank", "node", name, dns_names=[name])
                for name in ("puller.bank.hypermesh", SERVER_NAME, "signer.bank.hypermesh")
            }
        finally:
            ca.close()
        identities = {
            name: NodeIdentity.from_keystore(store, i.key_name or "", (i.certificate, *i.chain))
            for name, i in issued.items()
        }
    puller = issued["puller.bank.hypermesh"]
    assert puller.key_name is not None
    chain_pem = _pem(tmp_path / "puller.pem", (puller.certificate, *puller.chain))
    root_pem = _pem(tmp_path / "root.pem", (root,))

    trust = TrustStore([TrustAnchor(root, "home"), TrustAnchor(foreign.root, "elsewhere")])
    trust.add_certificate(bank)
    trust.add_certificate(foreign.corp)
    b = NameRegistry.open(tmp_path / "b.db", trust)
    db = _record(DB)
    b.add(_signed(identities["signer.bank.hypermesh"], db))
    b.add(_signed(foreign.signer, _record(FOREIGN)))
    policy = PeerPolicy(TrustStore([TrustAnchor(root, "home")], certificates=[bank]))

    async def start() -> Endpoint:
        from stoq.config import StoqConfig

        config = StoqConfig(identity=identities[SERVER_NAME], policy=policy)
        endpoint = await Endpoint.listen(config, "127.0.0.1", 0)

        async def accept_loop() -> None:
            while True:
                try:
                    connection = await endpoint.accept()
                except ConnectionLost:
                    return
                _spawn(serve_names(connection, b, [root, foreign.root]))

        _spawn(accept_loop())
        return endpoint

    argv = [
        "names-pull", "127.0.0.1", "--port", "0", "--home", str(home),
        "--key", puller.key_name, "--chain", str(chain_pem), "--trust", str(root_pem),
        "--server-name", SERVER_NAME, "--timeout", "20",
    ]  # fmt: skip
    with EventLoopThread("names-b") as loop:
        endpoint = loop.run(start(), timeout=30)
        argv[3] = str(endpoint.port)
        try:
            capsys.readouterr()
            assert stoq_main(argv) == 1  # something was refused
            out, err = capsys.readouterr()
            lines = out.splitlines()
            assert lines[0] == f"accepted {DB} serial 1"
            assert lines[1].startswith(f"refused {FOREIGN} serial 1: CHAIN_REJECTED: ")
            assert lines[2:] == ["1 accepted, 0 revoked, 0 unchanged, 1 refused"]
            assert f"stoq: pulling names from {SERVER_NAME} at 127.0.0.1:" in err

            assert stoq_main(argv) == 1
            assert capsys.readouterr().out.splitlines()[-1] == (
                "0 accepted, 0 revoked, 1 unchanged, 1 refused"
            )
        finally:
            loop.run(endpoint.close(), timeout=30)
            b.close()

    home_trust = TrustStore([TrustAnchor(root, "home")], certificates=[bank])
    with NameRegistry.open(home / "names" / "names.db", home_trust) as registry:
        assert registry.names() == [DB]
        assert registry.lookup(DB) == db

    # Nobody listening any more: a clear failure, exit status 1.
    assert stoq_main([*argv[:-2], "--timeout", "2"]) == 1
    assert capsys.readouterr().err.startswith("stoq: ")
